"""Watch folder fed by another process writing files slowly; every file accounted for exactly once."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image, to_bytes, write_rt_image
from portalign.journal import Journal, read_journal
from portalign.scp import InstanceRegistrar
from portalign.watch import FolderWatcher, add_arguments, is_ignored, run
from scipy import ndimage
from synthetic import FIRST_USE_S

SIZE = 128
TOL_MM = 0.1

# Writes each staged file into the watched folder in small chunks with pauses (flushing each
# chunk), directly under its final name or as NAME.part renamed at the end.
WRITER = r"""
import json, os, sys, time
plan = json.loads(sys.argv[1])
for item in plan:
    data = open(item["source"], "rb").read()
    final = item["target"]
    path = final + ".part" if item["part"] else final
    with open(path, "wb") as f:
        for i in range(0, len(data), item["chunk"]):
            f.write(data[i:i + item["chunk"]])
            f.flush()
            os.fsync(f.fileno())
            time.sleep(item["pause"])
    if item["part"]:
        os.replace(path, final)
"""


def blobs(seed: int = 9) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 3)
    return (img - img.min()) / np.ptp(img) * 3000 + 200


def shifted(img: np.ndarray, dx_mm: float, dy_mm: float) -> np.ndarray:
    return ndimage.shift(img, (dy_mm, dx_mm), order=3, mode="nearest")  # 1 mm pixels at the isocentre


def rt_bytes(pixels: np.ndarray, **tags) -> bytes:
    # imager spacing 1.5 mm at SID 1500 / SAD 1000 -> 1.0 mm at the isocentre
    return to_bytes(make_rt_image(pixels, spacing=1.5, sid=1500.0, sad=1000.0, position="centre", **tags))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return blobs()


def watch_until(watcher: FolderWatcher, done, timeout: float = FIRST_USE_S) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(FIRST_USE_S)


def test_files_written_slowly_by_another_process_are_each_handled_once(tmp_path, image):
    folder, staging = tmp_path / "incoming", tmp_path / "staging"
    folder.mkdir()
    staging.mkdir()
    shifts = {"a.dcm": (1.0, -1.0), "b.dcm": (-2.0, 0.5), "c": (0.5, 1.5), "d.dcm": (2.0, 2.0)}
    plan = []
    for n, (name, (dx, dy)) in enumerate(shifts.items()):
        source = staging / name
        source.write_bytes(rt_bytes(shifted(image, dx, dy)))
        # a and c are written in place, slowly (4 KiB every 20 ms); b and d as .part then renamed
        plan.append({"source": str(source), "target": str(folder / name), "part": n % 2 == 1, "chunk": 4096,
                     "pause": 0.02})
    (staging / "garbage.dcm").write_bytes(b"this is not DICOM\n" * 500)
    plan.append({"source": str(staging / "garbage.dcm"), "target": str(folder / "garbage.dcm"), "part": False,
                 "chunk": 2048, "pause": 0.02})
    journal_path = tmp_path / "results.jsonl"
    reference = portalign.Image.from_array(image, pixel_spacing_mm=1.0)
    with Journal(journal_path) as journal:
        watcher = FolderWatcher(folder, InstanceRegistrar(journal, reference=reference, source="watch"),
                                poll_s=0.15, stable_polls=3)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(plan)])

        def finished() -> bool:
            return writer.poll() is not None and watcher.files_done + watcher.files_failed == len(plan)

        watch_until(watcher, finished)
        assert writer.wait(30) == 0
    lines = read_journal(journal_path)
    by_file: dict[str, list[dict]] = {}
    for line in lines:
        by_file.setdefault(line["file"], []).append(line)
    assert sorted(by_file) == sorted([*shifts, "garbage.dcm"])  # every file, ...
    assert all(len(v) == 1 for v in by_file.values())  # ... exactly once
    for name, (dx, dy) in shifts.items():
        (line,) = by_file[name]
        assert line["status"] == "ok" and line["source"] == "watch"
        assert line["result"]["dx_mm"] == pytest.approx(dx, abs=TOL_MM)
        assert line["result"]["dy_mm"] == pytest.approx(dy, abs=TOL_MM)
    (bad,) = by_file["garbage.dcm"]
    assert bad["status"] == "error" and "garbage.dcm: cannot be read as an RT Image" in bad["error"]
    assert sorted(p.name for p in (folder / "done").iterdir()) == sorted(shifts)
    assert sorted(p.name for p in (folder / "failed").iterdir()) == ["garbage.dcm", "garbage.dcm.error.txt"]
    assert "not a DICOM file" in (folder / "failed" / "garbage.dcm.error.txt").read_text()
    assert sorted(p.name for p in folder.iterdir()) == ["done", "failed"]  # nothing left behind
    assert watcher.files_done == 4 and watcher.files_failed == 1


def test_beam_reference_arriving_in_the_folder_and_unmatched_frames(tmp_path, image):
    from pydicom.dataset import Dataset

    folder = tmp_path / "in"
    plan_item = Dataset()
    plan_item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.5"
    plan_item.ReferencedSOPInstanceUID = "1.2.3.4.5"
    beam = {"ReferencedRTPlanSequence": [plan_item], "ReferencedBeamNumber": 1}
    journal_path = tmp_path / "r.jsonl"
    with Journal(journal_path) as journal:
        watcher = FolderWatcher(folder, InstanceRegistrar(journal, source="watch"), poll_s=0.05, stable_polls=2,
                                empty_polls=3)
        (folder / "1-ref.dcm").write_bytes(rt_bytes(image, ImageType=["DERIVED", "SECONDARY", "DRR"], **beam))
        watch_until(watcher, lambda: watcher.files_done == 1)
        (folder / "2-frame.dcm").write_bytes(rt_bytes(shifted(image, 1.5, -0.5), **beam))
        (folder / "3-orphan.dcm").write_bytes(rt_bytes(image, ReferencedBeamNumber=7))
        (folder / "4-empty.dcm").write_bytes(b"")
        (folder / "5-writing.dcm.part").write_bytes(b"half a file")
        watch_until(watcher, lambda: watcher.files_done + watcher.files_failed == 4)
    lines = {line["file"]: line for line in read_journal(journal_path)}
    assert lines["1-ref.dcm"]["status"] == "reference"
    assert lines["2-frame.dcm"]["reference_match"] == "beam"
    assert lines["2-frame.dcm"]["result"]["dx_mm"] == pytest.approx(1.5, abs=TOL_MM)
    assert lines["3-orphan.dcm"]["status"] == "error" and "no reference for plan" in lines["3-orphan.dcm"]["error"]
    assert lines["4-empty.dcm"]["status"] == "error"
    assert "5-writing.dcm.part" not in lines and (folder / "5-writing.dcm.part").exists()  # in progress: left alone
    failed = sorted(p.name for p in (folder / "failed").iterdir())
    assert failed == ["3-orphan.dcm", "3-orphan.dcm.error.txt", "4-empty.dcm", "4-empty.dcm.error.txt"]


def _watch_once(folder, results, reference) -> int:
    """``portalign watch FOLDER --results RESULTS --reference REFERENCE --poll 0.05 --once``; its exit status."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args([str(folder), "--results", str(results), "--reference", str(reference),
                                  "--poll", "0.05", "--once"]))


def test_watch_command_once_with_name_collision(tmp_path, image, capsys):
    folder = tmp_path / "in"
    (folder / "done").mkdir(parents=True)
    (folder / "done" / "x.dcm").write_bytes(b"an earlier x.dcm")
    write_rt_image(make_rt_image(shifted(image, -1.0, -1.0), spacing=1.5, position="centre"), folder / "x.dcm")
    reference = write_rt_image(make_rt_image(image, spacing=1.5, position="centre"), tmp_path / "ref.dcm")
    results = tmp_path / "results.jsonl"
    assert _watch_once(folder, results, reference) == 0
    assert "1 done, 0 failed (1 frame registered (1 ok, 0 not ok), 0 references, 0 errors)" in capsys.readouterr().err
    (line,) = read_journal(results)
    assert line["file"] == "x.dcm" and line["result"]["dx_mm"] == pytest.approx(-1.0, abs=TOL_MM)
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["x-1.dcm", "x.dcm"]
    assert (folder / "done" / "x.dcm").read_bytes() == b"an earlier x.dcm"
    # run again: nothing new, and where the earlier files went is said (a new user's trial read only "0 done, 0 failed")
    assert _watch_once(folder, results, reference) == 0
    err = capsys.readouterr().err
    assert err.strip().endswith(f"0 done, 0 failed (nothing new; earlier runs left 2 in done/, 0 in failed/: move a file "
                                f"back into {folder} to process it again)"), err


def test_watch_once_says_its_subfolders_were_not_looked_into(tmp_path, image, capsys):
    """A frame in a subfolder of the watched folder is not registered (the folder itself is watched), and --once says
    so, naming the subfolder (a new user's trial: skipped without a word)."""
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    write_rt_image(make_rt_image(shifted(image, -1.0, -1.0), spacing=1.5, position="centre"), folder / "sub" / "x.dcm")
    write_rt_image(make_rt_image(shifted(image, 1.0, 0.5), spacing=1.5, position="centre"), folder / "y.dcm")
    reference = write_rt_image(make_rt_image(image, spacing=1.5, position="centre"), tmp_path / "ref.dcm")
    assert _watch_once(folder, tmp_path / "results.jsonl", reference) == 0
    err = capsys.readouterr().err
    assert err.strip().endswith("1 done, 0 failed (1 frame registered (1 ok, 0 not ok), 0 references, 0 errors); "
                                f"subfolders are not looked into (sub/): move their files into {folder} or watch each "
                                "folder"), err
    assert (folder / "sub" / "x.dcm").is_file()


def test_bad_arguments_and_ignored_names(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--results", str(tmp_path / "r.jsonl"), "--reference",
                              str(tmp_path / "missing.dcm")])
    assert run(args) == 2
    assert "missing.dcm" in capsys.readouterr().err
    with Journal(tmp_path / "x.jsonl") as journal, pytest.raises(portalign.PortalignError, match="stable_polls"):
        FolderWatcher(tmp_path, InstanceRegistrar(journal), stable_polls=1)
    assert is_ignored("a.dcm.part") and is_ignored("a.TMP") and is_ignored(".hidden") and is_ignored("a.dcm~")
    assert not is_ignored("a.dcm") and not is_ignored("IMG0001")


def test_results_journal_inside_the_watched_folder_is_not_taken(tmp_path, image, capsys):
    """``--results`` inside the watched folder: the journal is output, not a file to register (a new user's trial
    had it moved to failed/ as 'not a DICOM file' and the run exit 1)."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_rt_image(make_rt_image(shifted(image, 1.5, -0.5), spacing=1.5, position="centre"), folder / "a.dcm")
    reference = write_rt_image(make_rt_image(image, spacing=1.5, position="centre"), tmp_path / "ref.dcm")
    results = folder / "results.jsonl"
    assert _watch_once(folder, results, reference) == 0
    assert "1 done, 0 failed (1 frame registered (1 ok, 0 not ok), 0 references, 0 errors)" in capsys.readouterr().err
    (line,) = read_journal(results)  # still where it was given, with the one frame's line
    assert line["file"] == "a.dcm" and line["result"]["dx_mm"] == pytest.approx(1.5, abs=TOL_MM)
    assert list((folder / "failed").iterdir()) == []


def test_a_file_cut_short_a_moment_ago_is_waited_for(tmp_path, image):
    """A writer that paused longer than the stability window (five chunks 0.5 s apart, a trial) had its file moved to
    failed/ half written: a file that reads as truncated and was written to moments ago is left to be taken later."""
    folder = tmp_path / "in"
    whole = rt_bytes(image)
    with Journal(tmp_path / "r.jsonl") as journal:
        registrar = InstanceRegistrar(journal, source="watch", reference=portalign.Image.from_array(image, pixel_spacing_mm=1.0))
        watcher = FolderWatcher(folder, registrar, poll_s=0.05, stable_polls=2, young_s=30.0)
        (folder / "slow.dcm").write_bytes(whole[: len(whole) // 2])
        for _ in range(6):  # stable for many polls, but cut short a moment ago: not taken
            watcher.poll_once()
        assert (folder / "slow.dcm").exists() and watcher.files_failed == 0 and journal.records_written == 0
        (folder / "slow.dcm").write_bytes(whole)  # the writer finishes
        watch_until(watcher, lambda: watcher.files_done == 1)
        # an old file cut short is a failure, said at once
        (folder / "old.dcm").write_bytes(whole[: len(whole) // 2])
        watcher.young_s = 0.0
        watch_until(watcher, lambda: watcher.files_failed == 1)
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["slow.dcm"]
    assert "truncated" in (folder / "failed" / "old.dcm.error.txt").read_text()


def test_a_frame_older_than_its_reference_in_the_same_scan_waits_for_it(tmp_path, image, capsys):
    """A new user's trial: `cp *.dcm` into the folder copied a_frame.dcm before z_ref.dcm, and the frame failed with
    "no reference" although its reference was there; the frames of one scan now wait for its references."""
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    frame = write_rt_image(make_rt_image(shifted(image, 1.0, -0.5), spacing=1.5, sid=1500.0, sad=1000.0,
                                         position="centre"), folder / "a_frame.dcm")
    write_rt_image(make_rt_image(image, spacing=1.5, sid=1500.0, sad=1000.0, position="centre",
                                 ImageType=["DERIVED", "SECONDARY", "DRR"]), folder / "z_ref.dcm")
    os.utime(frame, ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))  # the frame is the older
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    results = tmp_path / "results.jsonl"
    assert run(parser.parse_args([str(folder), "--results", str(results), "--poll", "0.05", "--once"])) == 0
    out, err = capsys.readouterr()
    assert "2 done, 0 failed (1 frame registered (1 ok, 0 not ok), 1 reference, 0 errors)" in err, err
    lines = read_journal(results)
    assert [line["file"] for line in lines] == ["z_ref.dcm", "a_frame.dcm"]
    assert lines[1]["status"] == "ok" and lines[1]["result"]["dx_mm"] == pytest.approx(1.0, abs=TOL_MM)
    assert out.splitlines()[0].startswith("z_ref.dcm: kept as the reference") and "a_frame.dcm: dx +" in out


def test_watch_once_names_links_and_pipes_it_does_not_take(tmp_path, image, capsys):
    """A link (dangling, or to /dev/zero) and a named pipe in the watched folder are not taken: --once names them (a new
    user's trial: skipped without a word)."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_rt_image(make_rt_image(shifted(image, 1.0, 0.5), spacing=1.5, position="centre"), folder / "y.dcm")
    (folder / "gone.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (folder / "zero.dcm").symlink_to("/dev/zero")
    os.mkfifo(folder / "pipe.dcm")
    reference = write_rt_image(make_rt_image(image, spacing=1.5, position="centre"), tmp_path / "ref.dcm")
    assert _watch_once(folder, tmp_path / "results.jsonl", reference) == 0
    err = capsys.readouterr().err
    assert err.strip().endswith("; entries that are not plain files are not taken (gone.dcm, pipe.dcm, zero.dcm: links, "
                                f"pipes or devices): copy the files themselves into {folder}"), err


def test_a_watched_file_without_geometry_is_told_to_be_corrected_not_given_a_keyword(tmp_path, image):
    """The reader's "pass pixel_spacing_mm=" (a Python keyword) cannot be given to a watched file (a new user's trial
    looked for the flag): the journal line says to correct the file, and which command takes the override."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_rt_image(make_rt_image(shifted(image, 1.0, 0.5), spacing=None), folder / "y.dcm")
    reference = write_rt_image(make_rt_image(image, spacing=1.5, position="centre"), tmp_path / "ref.dcm")
    assert _watch_once(folder, tmp_path / "results.jsonl", reference) == 1
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    failed = [line for line in lines if line.get("file") == "y.dcm"]
    assert failed and "pixel_spacing_mm=" not in failed[0]["error"], failed
    assert "correct the file (a watched folder has no override for it; portalign register takes --pixel-spacing-mm" \
        in failed[0]["error"], failed


def test_once_stops_waiting_for_a_file_that_keeps_changing_and_names_it(tmp_path, monkeypatch, capsys):
    """A hostile campaign appended 16 bytes to a file every 0.1 s for 90 s: ``watch --once`` waited all of it with
    nothing said, and a writer that never stops would hold it for ever. It stops ``ONCE_WAIT_S`` after its last file
    was taken, leaves the file as it is, names it, and exits non-zero."""
    import portalign.watch as watch_module

    monkeypatch.setattr(watch_module, "ONCE_WAIT_S", 0.6)
    folder = tmp_path / "in"
    folder.mkdir()
    growing = folder / "growing.dcm"
    growing.write_bytes(b"DICM")
    done = threading.Event()

    def writer() -> None:
        while not done.is_set():
            with growing.open("ab") as out:
                out.write(b"\0" * 16)
            time.sleep(0.02)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    try:
        started = time.monotonic()
        status = run(parser.parse_args([str(folder), "--results", str(tmp_path / "r.jsonl"), "--poll", "0.05",
                                        "--once"]))
        waited = time.monotonic() - started
    finally:
        done.set()
        thread.join()
    said = capsys.readouterr().err
    assert status == 1 and waited < 30
    assert "1 file(s) still changing after 0.6 s were left as they are (growing.dcm)" in said
    assert growing.exists()  # left where it was, not moved to failed/
