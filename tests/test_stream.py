"""FrameStream: one record per frame in push order, overflow policies, errors, hold signal, DICOM/cine input."""

from __future__ import annotations

import threading

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image
from portalign.journal import Journal, read_journal
from portalign.stream import FrameStream, HoldMonitor, HoldTolerance, StreamClosedError, StreamFullError
from scipy import ndimage
from synthetic import FIRST_USE_S

SIZE = 128
SPACING = 1.0
TOL_MM = 0.1


def blobs(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 3)
    return ((img - img.min()) / np.ptp(img) * 3000 + 200).astype(np.float32)


def shifted(img: np.ndarray, dx_mm: float, dy_mm: float) -> np.ndarray:
    # content moves +dy rows, +dx columns: the anatomy is displaced by (dx, dy) mm
    return ndimage.shift(img, (dy_mm / SPACING, dx_mm / SPACING), order=3, mode="nearest").astype(np.float32)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return blobs()


@pytest.fixture(scope="module")
def reference(image: np.ndarray) -> portalign.Reference:
    ref = portalign.prepare_reference(portalign.Image.from_array(image, pixel_spacing_mm=SPACING))
    ref.warm_up(portalign.Image.from_array(shifted(image, 1.0, 0.5), pixel_spacing_mm=SPACING))  # JIT + plan
    return ref


def test_policy_all_registers_every_frame_in_order_with_latency(reference, image):
    shifts = [(0.5 * k - 2.0, 1.5 - 0.3 * k) for k in range(10)]
    with FrameStream(reference, pixel_spacing_mm=SPACING, policy="all", maxsize=2) as stream:
        ids = [stream.push(shifted(image, dx, dy), frame_id=f"f{k}") for k, (dx, dy) in enumerate(shifts)]
    records = list(stream)
    assert [r.frame_id for r in records] == ids == [f"f{k}" for k in range(10)]
    assert [r.sequence for r in records] == list(range(10))
    for record, (dx, dy) in zip(records, shifts, strict=True):
        assert record.status == "ok" and not record.skipped and record.error == ""
        assert record.result.dx_mm == pytest.approx(dx, abs=TOL_MM)
        assert record.result.dy_mm == pytest.approx(dy, abs=TOL_MM)
        assert record.register_ms > 0 and record.queue_ms >= 0
        assert record.latency_ms == pytest.approx(record.queue_ms + record.register_ms)
    assert stream.stats.registered == 10 and stream.stats.skipped == 0
    with pytest.raises(StreamClosedError, match="closed"):
        stream.push(image)


def test_policy_all_back_pressure_times_out_with_an_error_record(reference, image):
    gate = threading.Event()
    first_done = threading.Event()

    def hold_worker(record):
        first_done.set()
        gate.wait(30)  # the worker is stuck here after the first frame: the queue fills

    stream = FrameStream(reference, pixel_spacing_mm=SPACING, policy="all", maxsize=1, on_record=hold_worker)
    try:
        stream.push(shifted(image, 1.0, 1.0), frame_id="a")
        assert first_done.wait(30)
        stream.push(shifted(image, 1.0, 1.0), frame_id="b")  # waits in the queue (maxsize 1)
        with pytest.raises(StreamFullError, match="refused, the queue held 1 frames"):
            stream.push(shifted(image, 1.0, 1.0), frame_id="c", timeout=0.05)
        # a cine pushed into the full queue: every frame gets its record and its id (a new user's second frame had
        # neither: the first refusal ended the file)
        cine = make_rt_image(np.stack([shifted(image, 1.0, 1.0)] * 2), spacing=1.5, sid=1500.0, sad=1000.0,
                             position="centre", gantry=[0.0, 0.0])
        with pytest.raises(StreamFullError, match=r"^push_cine: 2 of 2 frames refused \(ids c0, c1\)") as full:
            stream.push_cine(cine, frame_ids=["c0", "c1"], timeout=0.0)
        assert full.value.frame_ids == full.value.refused_ids == ["c0", "c1"]
        blocked = {}

        def blocked_push():
            blocked["id"] = stream.push(shifted(image, 1.0, 1.0), frame_id="d")  # no timeout: blocks

        pusher = threading.Thread(target=blocked_push)
        pusher.start()
        pusher.join(0.2)
        assert pusher.is_alive(), "push must block while the queue is full (policy='all')"
        gate.set()
        pusher.join(FIRST_USE_S)
        assert blocked["id"] == "d"
    finally:
        gate.set()
        records = stream.drain(timeout=FIRST_USE_S)
    assert [(r.frame_id, r.status) for r in records] == [("a", "ok"), ("b", "ok"), ("c", "error"), ("c0", "error"),
                                                          ("c1", "error"), ("d", "ok")]
    assert all(r.error_kind == "StreamFullError" and r.result is None for r in records[2:5])
    assert stream.stats.skipped == 0


def test_policy_latest_skips_stale_frames_and_accounts_for_every_id(reference, image):
    frame = shifted(image, 2.0, -1.0)
    n = 60
    with FrameStream(reference, pixel_spacing_mm=SPACING, policy="latest") as stream:
        ids = [stream.push(frame) for _ in range(n)]  # far faster than registration
    records = list(stream)
    assert ids == list(range(n))
    assert [r.frame_id for r in records] == ids  # every id exactly once, in order
    skipped = [r for r in records if r.skipped]
    done = [r for r in records if not r.skipped]
    assert skipped, "a producer faster than registration must cause skips under policy='latest'"
    assert all(r.status == "skipped" and r.result is None for r in skipped)
    assert all(r.status == "ok" for r in done)
    assert records[-1].status == "ok"  # the newest frame is never stale
    assert stream.stats.skipped == len(skipped) and stream.stats.registered == len(done)
    for r in done:
        assert r.result.dx_mm == pytest.approx(2.0, abs=TOL_MM) and r.result.dy_mm == pytest.approx(-1.0, abs=TOL_MM)


def test_policy_all_under_fast_producer_skips_nothing(reference, image):
    frame = shifted(image, -1.0, 2.0)
    with FrameStream(reference, pixel_spacing_mm=SPACING, policy="all", maxsize=3) as stream:
        for _ in range(15):
            stream.push(frame)
    records = list(stream)
    assert [r.frame_id for r in records] == list(range(15))
    assert not any(r.skipped for r in records)
    assert all(r.status == "ok" for r in records)


def test_bad_frame_gives_an_error_record_and_the_stream_goes_on(reference, image, tmp_path):
    bad = shifted(image, 1.0, 1.0)
    bad[10, 10] = np.nan
    with Journal(tmp_path / "stream.jsonl") as journal:
        with FrameStream(reference, pixel_spacing_mm=SPACING, journal=journal) as stream:
            stream.push(shifted(image, 1.0, 1.0))
            stream.push(bad)
            stream.push(np.full((SIZE, SIZE), 7.0))
            stream.push(np.zeros(5))
            stream.push(shifted(image, -1.5, 0.5))
        records = list(stream)
    assert [r.status for r in records] == ["ok", "error", "error", "error", "ok"]
    assert "NaN" in records[1].error and records[1].error.startswith("frame 1")
    assert "same value" in records[2].error
    assert "2-D" in records[3].error
    assert records[4].result.dx_mm == pytest.approx(-1.5, abs=TOL_MM)
    lines = read_journal(tmp_path / "stream.jsonl")
    assert [line["status"] for line in lines] == [r.status for r in records]
    assert lines[1]["error"] == records[1].error and lines[1]["source"] == "stream"
    assert lines[4]["result"]["dx_mm"] == pytest.approx(records[4].result.dx_mm)


def test_hold_after_n_consecutive_out_of_tolerance_frames_and_cleared(reference, image):
    tolerance = HoldTolerance(dx_mm=1.0, dy_mm=1.0, rotation_deg=1.0, consecutive=3)
    inside, outside = shifted(image, 0.3, -0.2), shifted(image, 2.5, 0.0)
    nan = shifted(image, 0.0, 0.0)
    nan[0, 0] = np.nan
    sequence = [inside, outside, outside, nan, outside, outside, inside, outside]
    with FrameStream(reference, pixel_spacing_mm=SPACING, tolerance=tolerance) as stream:
        for frame in sequence:
            stream.push(frame)
    records = list(stream)
    assert [r.hold for r in records] == [False, False, False, False, True, True, False, False]
    assert [r.out_of_tolerance for r in records] == [False, True, True, None, True, True, False, True]
    assert records[3].status == "error"  # a failed frame neither extends nor breaks the run
    assert records[4].hold_reason.startswith(f"dx {records[4].result.dx_mm:+.2f} mm beyond ±1 mm")
    assert "3 consecutive frames" in records[4].hold_reason
    assert "4 consecutive" in records[5].hold_reason
    assert records[6].hold_reason == ""
    assert "1 of 3" in records[7].hold_reason
    assert stream.stats.holds == 2


def test_hold_monitor_rotation_axis_and_validation():
    monitor = HoldMonitor(HoldTolerance(dx_mm=2, dy_mm=2, rotation_deg=0.5, consecutive=1))
    rotated = portalign.RegistrationResult(dx_mm=0.1, dy_mm=0.1, rotation_deg=-0.8, ok=True)
    hold, reason, out = monitor.update(rotated)
    assert hold and out and "rotation -0.80 deg" in reason
    not_ok = portalign.RegistrationResult(dx_mm=0.0, dy_mm=0.0, rotation_deg=0.0, ok=False, reason="ambiguous")
    assert monitor.update(not_ok) == (True, reason, None)
    assert monitor.update(portalign.RegistrationResult(0.0, 0.0, 0.0, ok=True)) == (False, "", False)
    with pytest.raises(portalign.PortalignError, match="consecutive must be an integer >= 1"):
        HoldTolerance(consecutive=0)
    with pytest.raises(portalign.PortalignError, match="dx_mm must be a positive number"):
        HoldTolerance(dx_mm=-1)


def test_a_cine_file_given_whole_says_only_its_first_frame_was_registered(image, tmp_path, capsys):
    """A new user's 2-frame file was registered as its frame 0 by ``Reference.register``, ``register_batch``, a stream
    and ``portalign register`` without a word (only the HTTP service said so); frame 0 named is no such case."""
    from dicom_factory import write_rt_image
    from portalign.cli import main

    geometry = dict(spacing=1.5, sid=1500.0, sad=1000.0, position="centre")
    ref_path = write_rt_image(make_rt_image(image, **geometry), tmp_path / "ref.dcm")
    cine = np.stack([shifted(image, 1.0, -0.5), shifted(image, -0.5, 0.25)])
    cine_path = write_rt_image(make_rt_image(cine, gantry=[0.0, 0.0], **geometry), tmp_path / "cine.dcm")
    said = "cine.dcm holds 2 frames; only frame 0 was registered: read another with frame=K (0 to 1)"
    reference = portalign.prepare_reference(portalign.read_rt_image(ref_path), backend="cpu")
    whole = reference.register(cine_path)
    assert whole.dx_mm == pytest.approx(1.0, abs=TOL_MM) and any(w.startswith(said) for w in whole.warnings), whole.warnings
    assert any(w.startswith(said) for w in portalign.register_batch(reference, [cine_path])[0].warnings)
    for named in (portalign.read_rt_image(cine_path, frame=0), portalign.read_rt_image(cine_path, frame=1)):
        assert not any("only frame 0" in w for w in reference.register(named).warnings)
    with FrameStream(reference) as stream:
        stream.push(str(cine_path))
    (record,) = list(stream)
    assert any(w.startswith(said) for w in record.result.warnings), record.result.warnings
    assert main(["register", str(ref_path), str(cine_path)]) == 0
    assert "only frame 0 was registered: read another with --frame-index K (0 to 1)" in capsys.readouterr().out


def test_dicom_frames_and_every_frame_of_a_cine_image(image):
    # imager spacing 1.5 mm at SID 1500 / SAD 1000 -> 1.0 mm at the isocentre
    reference_ds = make_rt_image(image, spacing=1.5, sid=1500.0, sad=1000.0, position="centre")
    shifts = [(1.0, -2.0), (-0.5, 0.75), (2.25, 1.5)]
    cine = np.stack([shifted(image, dx, dy) for dx, dy in shifts])
    cine_ds = make_rt_image(cine, spacing=1.5, sid=1500.0, sad=1000.0, position="centre", gantry=[0.0, 0.5, 1.0])
    single_ds = make_rt_image(shifted(image, -1.25, 0.5), spacing=1.5, sid=1500.0, sad=1000.0, position="centre")
    with FrameStream(reference_ds) as stream:
        first = stream.push(single_ds)
        ids = stream.push_cine(cine_ds)
        broken = stream.push_cine(b"not a dicom file")
    records = list(stream)
    assert [r.frame_id for r in records] == [first, *ids, *broken] == [0, 1, 2, 3, 4]
    assert records[0].result.dx_mm == pytest.approx(-1.25, abs=TOL_MM)
    for record, (dx, dy), index in zip(records[1:4], shifts, range(3), strict=True):
        assert record.status == "ok"
        assert record.result.frame_index == index
        assert record.result.frame_uid == cine_ds.SOPInstanceUID
        assert record.result.dx_mm == pytest.approx(dx, abs=TOL_MM)
        assert record.result.dy_mm == pytest.approx(dy, abs=TOL_MM)
    assert records[4].status == "error" and records[4].error.startswith("frame 4: ") and "not a DICOM file" in records[4].error


def test_a_bad_frame_s_record_names_the_frame_and_is_json_ready(reference, image, tmp_path):
    """A list pushed said "<stream>: cannot read DICOM from a list" and a bad path only the path: the id a caller
    looks for was in neither. A numpy id made as_dict() fail json.dumps (a new user's trial)."""
    import json

    with FrameStream(reference, pixel_spacing_mm=SPACING) as stream:
        stream.push([1, 2, 3], frame_id="as-list")
        stream.push(str(tmp_path / "missing.dcm"), frame_id="gone")
        stream.push(shifted(image, 1.0, 0.0), frame_id=np.int64(7))
    listed, missing, good = list(stream)
    assert listed.status == missing.status == "error"
    assert listed.error.startswith("frame as-list: ") and missing.error.startswith("frame gone: "), (listed, missing)
    assert "missing.dcm" in missing.error
    assert good.status == "ok" and json.loads(json.dumps(good.as_dict()))["frame_id"] == 7


def test_arguments_are_validated(reference):
    with pytest.raises(portalign.PortalignError, match="policy must be one of all, latest"):
        FrameStream(reference, policy="newest")
    with pytest.raises(portalign.PortalignError, match="maxsize must be an integer >= 1"):
        FrameStream(reference, maxsize=0)
    with pytest.raises(portalign.GeometryError, match="pixel_spacing_mm"):
        FrameStream(np.ones((32, 32)))


def test_journal_is_thread_safe_strict_json_and_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        def writer(n):
            for k in range(50):
                journal.append({"writer": n, "k": k, "value": np.float32(0.5) * k, "bad": float("nan"),
                                "array": np.arange(3), "text": "x" * (n * 100)})

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert journal.records_written == 400
    with open(path, "ab") as f:
        f.write(b'{"writer": 99, "k"')  # a record torn by a crash
    lines = read_journal(path)
    assert len(lines) == 400
    assert sorted((line["writer"], line["k"]) for line in lines) == [(n, k) for n in range(8) for k in range(50)]
    assert all(line["bad"] is None and line["array"] == [0, 1, 2] and "time" in line for line in lines)
    assert "NaN" not in path.read_text()
    with pytest.raises(portalign.PortalignError, match="journal is closed"):
        journal.append({"late": True})


def test_frames_waiting_together_are_registered_as_one_batch_in_order(image, monkeypatch):
    # cine: frames that pile up while the worker is busy go into one batch (side by side), records stay in order
    from portalign import stream as stream_module

    reference = portalign.prepare_reference(portalign.Image.from_array(image, pixel_spacing_mm=SPACING), backend="cpu")
    reference.warm_up(portalign.Image.from_array(shifted(image, 1.0, 0.5), pixel_spacing_mm=SPACING))
    sizes = []
    real = stream_module.register_each

    def recording(ref, items, **kwargs):
        sizes.append(len(items))
        return real(ref, items, **kwargs)

    monkeypatch.setattr(stream_module, "register_each", recording)
    monkeypatch.setattr(stream_module, "batch_workers", lambda ref, lanes=None: 3)
    shifts = [(0.4 * k - 1.0, 0.7 - 0.2 * k) for k in range(7)]
    gate = threading.Event()
    with FrameStream(reference, pixel_spacing_mm=SPACING, policy="all", maxsize=8) as stream:
        stream.on_record = lambda record: gate.wait(5)  # hold the worker after its first frame
        ids = [stream.push(shifted(image, dx, dy), frame_id=k) for k, (dx, dy) in enumerate(shifts[:3])]
        ids.append(stream.push(np.zeros((2, 2, 2)), frame_id="bad"))  # an unreadable frame amid the batch
        ids += [stream.push(shifted(image, dx, dy), frame_id=k) for k, (dx, dy) in enumerate(shifts[3:], start=3)]
        gate.set()
    records = list(stream)
    assert [r.frame_id for r in records] == ids
    assert max(sizes) > 1  # frames that waited together were registered together
    bad = next(r for r in records if r.frame_id == "bad")
    assert bad.status == "error" and "expected a 2-D image" in bad.error
    alone = [reference.register(shifted(image, dx, dy), pixel_spacing_mm=SPACING) for dx, dy in shifts]
    good = [r for r in records if r.frame_id != "bad"]
    assert [(r.result.dx_mm, r.result.dy_mm) for r in good] == [(a.dx_mm, a.dy_mm) for a in alone]
