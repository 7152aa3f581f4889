"""DICOM receiver: real C-STOREs from pynetdicom's SCU to the SCP on a free loopback port."""

from __future__ import annotations

import argparse

import numpy as np
import portalign
import pytest
from dicom_factory import make_rt_image
from portalign.journal import Journal, read_journal
from portalign.scp import STATUS_CANNOT_UNDERSTAND, InstanceRegistrar, add_arguments, is_reference, run, start_scp
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import RTImageStorage, Verification
from scipy import ndimage
from synthetic import FIRST_USE_S

SIZE = 128
TOL_MM = 0.1
RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"


def blobs(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), 3)
    return (img - img.min()) / np.ptp(img) * 3000 + 200


def shifted(img: np.ndarray, dx_mm: float, dy_mm: float) -> np.ndarray:
    return ndimage.shift(img, (dy_mm, dx_mm), order=3, mode="nearest")  # 1 mm pixels at the isocentre


def rt_image(pixels: np.ndarray, *, plan: str | None = None, beam: int | None = None, **tags) -> Dataset:
    if plan is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = RT_PLAN_STORAGE
        item.ReferencedSOPInstanceUID = plan
        tags["ReferencedRTPlanSequence"] = [item]
    if beam is not None:
        tags["ReferencedBeamNumber"] = beam
    # imager spacing 1.5 mm at SID 1500 / SAD 1000 -> 1.0 mm at the isocentre
    return make_rt_image(pixels, spacing=1.5, sid=1500.0, sad=1000.0, position="centre", **tags)


def drr(pixels: np.ndarray, **kwargs) -> Dataset:
    return rt_image(pixels, ImageType=["DERIVED", "SECONDARY", "DRR"], RTImageLabel="DRR beam", **kwargs)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return blobs()


@pytest.fixture()
def scp(tmp_path):
    """Start an SCP; yields a function (reference=..., allow_ae=...) -> (port, journal path).

    What each SCP tells its ``on_instance`` is kept in ``start.told`` as (name, lines), and its registrar in
    ``start.registrars``.
    """
    servers, journals = [], []

    def start(reference=None, allow_ae=None):
        path = tmp_path / f"results{len(journals)}.jsonl"
        journal = Journal(path)
        journals.append(journal)
        registrar = InstanceRegistrar(journal, reference=reference)
        start.registrars.append(registrar)
        server = start_scp(registrar, port=0, allow_ae=allow_ae,
                           on_instance=lambda name, lines: start.told.append((name, lines)))
        servers.append(server)
        return server.server_address[1], path

    start.told, start.registrars = [], []
    yield start
    for server in servers:
        server.shutdown()
    for journal in journals:
        journal.close()


def send(port: int, datasets: list[Dataset], calling: str = "TESTSCU") -> list[Dataset]:
    ae = AE(ae_title=calling)
    ae.dimse_timeout = FIRST_USE_S  # the in-process SCPs here are not warmed up: a first frame may compile kernels
    ae.add_requested_context(RTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="PORTALIGN")
    assert assoc.is_established, "association was not accepted"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def test_frames_registered_against_the_reference_of_their_beam(scp, image):
    port, path = scp()
    plan = generate_uid()
    reference = drr(image, plan=plan, beam=1)
    shifts = [(2.0, -1.0), (-1.5, 0.5)]
    frames = [rt_image(shifted(image, dx, dy), plan=plan, beam=1) for dx, dy in shifts]
    statuses = send(port, [reference, *frames])
    assert [s.Status for s in statuses] == [0x0000, 0x0000, 0x0000]
    lines = read_journal(path)
    assert [line["status"] for line in lines] == ["reference", "ok", "ok"]
    assert lines[0]["sop_instance_uid"] == reference.SOPInstanceUID and lines[0]["beam_number"] == 1
    for line, ds, (dx, dy) in zip(lines[1:], frames, shifts, strict=True):
        assert line["sop_instance_uid"] == ds.SOPInstanceUID
        assert line["reference_sop_instance_uid"] == reference.SOPInstanceUID
        assert line["reference_match"] == "beam" and line["calling_ae"] == "TESTSCU"
        assert line["result"]["dx_mm"] == pytest.approx(dx, abs=TOL_MM)
        assert line["result"]["dy_mm"] == pytest.approx(dy, abs=TOL_MM)


def test_configured_reference_and_per_beam_priority(scp, image):
    configured = portalign.Image.from_array(blobs(seed=99), pixel_spacing_mm=1.0)  # unrelated anatomy
    port, path = scp(reference=configured)
    plan = generate_uid()
    no_beam = rt_image(shifted(blobs(seed=99), 1.0, 1.0))  # matched to the configured reference
    beam_ref = drr(image, plan=plan, beam=3)
    beam_frame = rt_image(shifted(image, -2.0, 1.0), plan=plan, beam=3)  # its own beam's reference wins
    other_beam = rt_image(shifted(blobs(seed=99), 0.5, -0.5), plan=plan, beam=4)  # no reference: configured
    statuses = send(port, [no_beam, beam_ref, beam_frame, other_beam])
    assert [s.Status for s in statuses] == [0, 0, 0, 0]
    lines = read_journal(path)
    assert [line.get("reference_match") for line in lines] == ["configured", None, "beam", "configured"]
    assert lines[0]["result"]["dx_mm"] == pytest.approx(1.0, abs=TOL_MM)
    assert lines[2]["result"]["dx_mm"] == pytest.approx(-2.0, abs=TOL_MM)
    assert lines[3]["result"]["dy_mm"] == pytest.approx(-0.5, abs=TOL_MM)



def test_a_received_reference_with_no_beam_does_not_capture_the_configured_reference_s_frames(tmp_path, image):
    """A DRR with no plan and no beam dropped beside the frames (a trial's watch folder) took every frame that names
    none either, though --reference was given: those frames go to the configured reference."""
    from portalign.dicom import read_rt_image_frames

    configured = portalign.Image.from_array(image, pixel_spacing_mm=1.0)
    other = drr(blobs(seed=99))  # another anatomy, no plan, no beam
    frame = rt_image(shifted(image, 1.0, -2.0))  # no plan, no beam
    with Journal(tmp_path / "r.jsonl") as journal:
        registrar = InstanceRegistrar(journal, reference=configured)
        for ds in (other, frame):
            registrar.handle(read_rt_image_frames(ds))
    lines = read_journal(tmp_path / "r.jsonl")
    assert [line["status"] for line in lines] == ["reference", "ok"]
    assert lines[1]["reference_match"] == "configured"
    assert lines[1]["result"]["dx_mm"] == pytest.approx(1.0, abs=TOL_MM)


def test_undecodable_instance_gets_an_error_status_and_an_error_line(scp, image):
    port, path = scp(reference=portalign.Image.from_array(image, pixel_spacing_mm=1.0))
    truncated = rt_image(shifted(image, 1.0, 0.0))
    truncated.PixelData = truncated.PixelData[:1000]
    good = rt_image(shifted(image, 1.0, 0.0))
    statuses = send(port, [truncated, good])
    assert statuses[0].Status == STATUS_CANNOT_UNDERSTAND
    assert "PixelData has 1000 bytes but" in statuses[0].ErrorComment
    assert statuses[1].Status == 0x0000  # the receiver goes on
    lines = read_journal(path)
    assert [line["status"] for line in lines] == ["error", "ok"]
    assert lines[0]["sop_instance_uid"] == truncated.SOPInstanceUID
    assert lines[0]["stage"] == "decode" and "the file is truncated" in lines[0]["error"]
    # named by its UID once, not "dataset" (a trial's "cannot decode: dataset: ...")
    assert lines[0]["error"].startswith(f"instance {truncated.SOPInstanceUID}: cannot decode: PixelData has 1000 bytes")
    assert lines[1]["sop_instance_uid"] == good.SOPInstanceUID
    # the console is told of both, in the order received, with the calling AE and the instance's UID
    assert [name for name, _ in scp.told] == [f"TESTSCU {truncated.SOPInstanceUID}", f"TESTSCU {good.SOPInstanceUID}"]
    assert [[line["status"] for line in told] for _, told in scp.told] == [["error"], ["ok"]]
    assert scp.registrars[0].summary() == "1 frame registered (1 ok, 0 not ok), 0 references, 1 error"


def test_a_failing_console_does_not_refuse_the_image(tmp_path, image):
    journal = Journal(tmp_path / "results.jsonl")

    def broken_console(name, lines):
        raise OSError("stdout is closed")

    registrar = InstanceRegistrar(journal, reference=portalign.Image.from_array(image, pixel_spacing_mm=1.0))
    server = start_scp(registrar, port=0, on_instance=broken_console)
    try:
        (status,) = send(server.server_address[1], [rt_image(shifted(image, 1.0, 0.0))])
    finally:
        server.shutdown()
        journal.close()
    assert status.Status == 0x0000
    assert [line["status"] for line in read_journal(tmp_path / "results.jsonl")] == ["ok"]


def test_no_reference_and_bad_pixels_still_received_with_an_error_line(scp, image):
    port, path = scp()
    orphan = rt_image(shifted(image, 1.0, 0.0), plan=generate_uid(), beam=2)
    statuses = send(port, [orphan])
    assert statuses[0].Status == 0x0000  # received; the journal says why it was not registered
    (line,) = read_journal(path)
    assert line["status"] == "error" and line["sop_instance_uid"] == orphan.SOPInstanceUID
    assert "no reference for plan" in line["error"] and "beam 2" in line["error"]
    # the instance is named by its UID in the message (a trial's journal said "(dataset)" of both images)
    assert line["error"].startswith(f"instance {orphan.SOPInstanceUID}: no reference for plan")


def test_every_frame_of_a_cine_instance_gets_a_line(scp, image):
    port, path = scp(reference=portalign.Image.from_array(image, pixel_spacing_mm=1.0))
    shifts = [(1.0, 0.0), (1.5, -0.5), (2.0, -1.0)]
    cine = rt_image(np.stack([shifted(image, dx, dy) for dx, dy in shifts]), gantry=[0.0, 0.5, 1.0])
    assert send(port, [cine])[0].Status == 0
    lines = read_journal(path)
    assert [line["frame_index"] for line in lines] == [0, 1, 2]
    assert {line["sop_instance_uid"] for line in lines} == {cine.SOPInstanceUID}
    for line, (dx, dy) in zip(lines, shifts, strict=True):
        assert line["result"]["dx_mm"] == pytest.approx(dx, abs=TOL_MM)
        assert line["result"]["dy_mm"] == pytest.approx(dy, abs=TOL_MM)


def test_calling_ae_titles_can_be_restricted(scp, image):
    port, path = scp(reference=portalign.Image.from_array(image, pixel_spacing_mm=1.0), allow_ae=["CONSOLE1"])
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(RTImageStorage)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_rejected
    assert send(port, [rt_image(shifted(image, 0.5, 0.5))], calling="CONSOLE1")[0].Status == 0
    lines = read_journal(path)
    assert len(lines) == 1 and lines[0]["calling_ae"] == "CONSOLE1"


def test_echo_is_answered(scp):
    port, _ = scp()
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()


def test_is_reference_rules(image):
    def read(ds):
        return portalign.read_rt_image(ds)

    assert is_reference(read(drr(image)))
    assert is_reference(read(rt_image(image, RTImageLabel="REF G0")))
    assert is_reference(read(rt_image(image, ImageType=["ORIGINAL", "PRIMARY", "PORTAL", "REFERENCE"])))
    assert not is_reference(read(rt_image(image, RTImageLabel="PREFIX MV")))
    assert not is_reference(read(rt_image(image)))


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--port", "11113", "--results", "r.jsonl", "--allow-ae", "A,B"])
    assert (args.port, args.results, args.ae_title, args.allow_ae, args.host) == (
        11113, "r.jsonl", "PORTALIGN", "A,B", "127.0.0.1")
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "1"])  # --results is required


def test_scp_command_in_its_own_process(tmp_path, image):
    import re
    import signal
    import subprocess
    import sys

    from dicom_factory import write_rt_image

    reference = write_rt_image(rt_image(image), tmp_path / "ref.dcm")
    results = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "portalign.scp", "--port", "0", "--results", str(results),
               "--reference", str(reference), "--allow-ae", "TESTSCU"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the kernels are compiled (or loaded from the cache) before the port opens, and it says so first
        warming = process.stderr.readline()
        assert warming.startswith("portalign scp: compiling the kernels before listening"), warming
        banner = process.stderr.readline()
        match = re.search(r"PORTALIGN listening on 127\.0\.0\.1:(\d+) \(TESTSCU\)", banner)
        assert match, banner
        frame = rt_image(shifted(image, -1.0, 2.0))
        assert send(int(match.group(1)), [frame])[0].Status == 0
        # one console line per received instance: who sent which, and what became of it
        told = process.stdout.readline()
        assert told.startswith(f"TESTSCU {frame.SOPInstanceUID}: dx -1.00"), told
        assert told.rstrip().endswith(", ok"), told
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        rest = process.stderr.read()
        process.stderr.close()
        process.stdout.close()
    # and, stopping, what it received in all
    assert f"portalign scp: stopped; 1 frame registered (1 ok, 0 not ok), 0 references, 0 errors; results -> {results}" \
        in rest, rest
    (line,) = read_journal(results)
    assert line["sop_instance_uid"] == frame.SOPInstanceUID and line["reference_match"] == "configured"
    assert line["result"]["dx_mm"] == pytest.approx(-1.0, abs=TOL_MM)


@pytest.mark.parametrize("port", ["-1", "70000", "held"])
def test_a_port_scp_cannot_listen_on_is_one_line_and_leaves_no_results_file(tmp_path, capsys, port):
    """A new user's trial: ``scp --port -1`` (or 70000) ended in a traceback (``OverflowError`` from ``bind``), and a
    port another program held in ``[Errno 98] Address already in use``, naming neither port nor flag; both left an
    empty results file. Now one line naming the port and --port, status 2, before the journal is opened."""
    import socket

    results = tmp_path / "results.jsonl"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        number = str(holder.getsockname()[1]) if port == "held" else port
        args = parser.parse_args(["--port", number, "--results", str(results), "--no-warm-up"])
        assert run(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    if port == "held":
        assert err == (f"portalign scp: cannot listen on 127.0.0.1:{number} (Address already in use); another program "
                       "holds the port: choose another with --port\n")
    else:
        assert err == f"portalign scp: --port must be within 0..65535, got {number}\n"
    assert not results.exists()
    # a results file that was there already is kept as it was
    results.write_text('{"earlier": 1}\n')
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        args = parser.parse_args(["--port", str(holder.getsockname()[1]), "--results", str(results), "--no-warm-up"])
        assert run(args) == 2
    assert results.read_text() == '{"earlier": 1}\n'
