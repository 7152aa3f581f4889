"""Batches and lanes: many frames against one reference, in flight together, results in order and unchanged.

On the CPU backend: lanes run on real threads here (the GPU versions of these
checks, under the simulator, are in ``test_gpu.py``).
"""

from __future__ import annotations

import math
import re
import threading

import numpy as np
import portalign
import pytest
from portalign import BatchError, Image, PortalImageError, prepare_reference, register_batch

from tests.synthetic import anatomy, moved

BASE = anatomy(320, seed=4)
TRUTHS = [(1.5, -2.0, 0.4), (-3.25, 4.0, -1.0), (6.0, 0.5, 0.0), (-0.75, -5.5, 1.5), (2.0, 2.0, -0.5)]


def _image(dx: float, dy: float, theta: float) -> Image:
    return Image.from_array(moved(BASE, dx, dy, theta, shape=(192, 224)), pixel_spacing_mm=1.0)


@pytest.fixture(scope="module")
def frames():
    return [_image(*truth) for truth in TRUTHS]


@pytest.fixture(scope="module")
def one_at_a_time(frames):
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    return [reference.register(f) for f in frames]


def _same(a, b) -> bool:
    return (a.dx_mm, a.dy_mm, a.rotation_deg, a.score, a.ok) == (b.dx_mm, b.dy_mm, b.rotation_deg, b.score, b.ok)


def test_batch_on_two_lanes_equals_one_frame_at_a_time(frames, one_at_a_time):
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    results = register_batch(reference, frames, lanes=2)
    assert len(results) == len(frames)
    # in input order, bit-identical to registering them one by one (integer histograms, fixed-order sums)
    for got, expected, (dx, dy, theta) in zip(results, one_at_a_time, TRUTHS, strict=True):
        assert _same(got, expected)
        assert got.ok and math.hypot(got.dx_mm - dx, got.dy_mm - dy) <= 0.1 and abs(got.rotation_deg - theta) <= 0.05
    assert 1 <= reference.lane_count() <= 2


def test_concurrent_registrations_get_their_own_lanes(frames, one_at_a_time):
    """Threads that hold lanes at once: a second lane is made, and neither frame disturbs the other."""
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    reference.allow_lanes(2)
    geometry = (frames[0].shape, frames[0].spacing_mm, frames[0].beam_axis_px)
    with reference.lane(*geometry) as held:
        result = reference.register(frames[1])  # the first lane is held: this frame must use another
        assert reference.lane_count() == 2
    assert _same(result, one_at_a_time[1])
    with reference.lane(*geometry) as again:  # least recently used first: the lane made for the frame
        assert again is not held
    results: list = [None] * len(frames)

    def work(i: int) -> None:
        results[i] = reference.register(frames[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(frames))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reference.lane_count() == 2  # never more than allowed
    assert all(_same(r, e) for r, e in zip(results, one_at_a_time, strict=True))


@pytest.mark.parametrize(("load", "lanes"), [(0.2, 2), (9.0, 1)])
def test_default_cpu_batch_has_a_lane_per_core_the_thread_policy_allows(frames, monkeypatch, load, lanes):
    # one frame per core side by side on a quiet machine; frames take turns on one lane while others load it
    import numba
    from portalign.backends import _cpu

    monkeypatch.setattr(_cpu, "_usable_cores", lambda: 2)
    monkeypatch.setattr(_cpu.os, "getloadavg", lambda: (load, load, load))
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    register_batch(reference, frames[:2])
    assert reference.lane_count() == min(lanes, numba.config.NUMBA_NUM_THREADS)


def test_bad_frame_in_a_batch_is_named_and_the_others_kept(frames, one_at_a_time):
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    batch = [frames[0], np.zeros((16, 16), dtype=np.float32), frames[2]]  # all one value
    with pytest.raises(BatchError, match=r"1 of 3 frames could not be registered: frame 1: PixelValuesError") as info:
        register_batch(reference, batch, pixel_spacing_mm=1.0, lanes=2)
    error = info.value
    assert error.results[1] is None and isinstance(error.errors[1], PortalImageError)
    assert _same(error.results[0], one_at_a_time[0]) and _same(error.results[2], one_at_a_time[2])


def test_batch_arguments_are_checked(frames):
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    # a PortalignError (what a caller catches of portalign's own), still a ValueError; every kind of wrong count
    for lanes in (0, -2, 1.5, "2", True):
        with pytest.raises(portalign.OptionValueError,
                           match=rf"lanes must be a whole number \(an int\) of at least 1 .*; got {re.escape(repr(lanes))}"):
            register_batch(reference, frames, lanes=lanes)
    with pytest.raises(ValueError, match="lanes must be a whole number"):
        register_batch(reference, frames, lanes=0)
    with pytest.raises(portalign.PortalignError,
                       match=r"allow_lanes: count must be a whole number \(an int\) of at least 1; got 0"):
        reference.allow_lanes(0)
    assert len(register_batch(reference, frames[:2], lanes=np.int64(2))) == 2  # a numpy integer is a whole number
    # the options' own checks raise the same class: one except clause for every bad argument
    for bad in ({"method": "foo"}, {"max_shift_mm": -1.0}):
        with pytest.raises(portalign.OptionValueError) as info:
            portalign.RegistrationOptions(**bad)
        assert isinstance(info.value, ValueError) and isinstance(info.value, portalign.PortalignError)
    with pytest.raises(TypeError, match="register_batch needs a prepared Reference, got Image"):
        register_batch(frames[0], frames)
    assert register_batch(reference, []) == []


def test_batch_takes_any_iterable(frames, one_at_a_time):
    reference = prepare_reference(_image(0, 0, 0), backend="cpu")
    results = register_batch(reference, (f for f in frames[:3]), lanes=3)
    assert all(_same(r, e) for r, e in zip(results, one_at_a_time[:3], strict=True))


def test_device_failure_in_a_batch_moves_only_that_frame_to_the_cpu(frames, one_at_a_time):
    """A kernel that fails once mid-batch (out of memory): that frame runs on the CPU, says why, and is kept."""
    from types import SimpleNamespace

    from portalign.backends import Backend, cpu_backend

    cpu = cpu_backend()
    calls = {"n": 0}
    lock = threading.Lock()

    def fails_once(*args, **kwargs):
        with lock:
            calls["n"] += 1
            first = calls["n"] == 1
        if first:
            raise MemoryError("out of device memory (simulated)")
        return cpu.kernels.gradient_correlation(*args, **kwargs)

    kernels = SimpleNamespace(**{**vars(cpu.kernels), "gradient_correlation": fails_once})
    flaky = Backend(name="gpu", xp=np, kernels=kernels, device="simulated failing device")
    results = register_batch(prepare_reference(_image(0, 0, 0), backend=flaky), frames, lanes=2)
    moved_to_cpu = [r for r in results if r.backend == "cpu"]
    assert len(moved_to_cpu) == 1 and sum(r.backend == "gpu" for r in results) == len(frames) - 1
    assert any("gpu backend failed (MemoryError: out of device memory (simulated))" in w for w in moved_to_cpu[0].warnings)
    # bit for bit against the same frame registered alone on the same path: the moved frame on the CPU (its compiled
    # program), the others on the device's (its kernels called one by one, here the CPU's). The two paths agree to
    # about 1e-12 only (test_program_kernels): which bits depends on whether numba compiled each kernel in this
    # process or loaded it from its cache, and a cache filled partly by another process (pytest -n 2) mixes the two
    alone = prepare_reference(_image(0, 0, 0), backend=Backend(name="gpu", xp=np, kernels=cpu.kernels, device="eager"))
    for got, frame, on_cpu in zip(results, frames, one_at_a_time, strict=True):
        assert _same(got, on_cpu if got.backend == "cpu" else alone.register(frame))
        assert got.dx_mm == pytest.approx(on_cpu.dx_mm, abs=1e-9) and got.dy_mm == pytest.approx(on_cpu.dy_mm, abs=1e-9)
        assert got.rotation_deg == pytest.approx(on_cpu.rotation_deg, abs=1e-9) and got.ok == on_cpu.ok


def test_a_queued_frame_gets_the_lane_before_the_frame_that_just_gave_it_back():
    """Lanes go to queued frames first come, first served: a thread in a loop cannot keep one lane to itself."""
    import time

    from portalign.registration._plan import LanePool

    class Plan:
        def new_lane(self, backend):  # pragma: no cover - the limit is one lane
            raise AssertionError("no second lane under a limit of one")

    pool = LanePool(Plan())  # type: ignore[arg-type]
    order: list[str] = []
    held = pool.acquire(1, None)  # type: ignore[arg-type]

    def queued() -> None:
        lane = pool.acquire(1, None)  # type: ignore[arg-type]
        order.append("queued")
        pool.release(lane)

    waiter = threading.Thread(target=queued)
    waiter.start()
    deadline = time.monotonic() + 10.0
    while not pool._queue and time.monotonic() < deadline:  # the other frame is waiting for the lane
        time.sleep(0.001)
    assert pool._queue
    pool.release(held)
    again = pool.acquire(1, None)  # type: ignore[arg-type]  # the loop's next frame: behind the queued one
    order.append("again")
    pool.release(again)
    waiter.join(10.0)
    assert order == ["queued", "again"]
    assert pool.idle() and len(pool.free) == 1


def test_the_busiest_geometry_is_kept_when_others_come_and_go(monkeypatch):
    """Frames served from the per-frame lookup still count as uses: the least recently used geometry goes first."""
    from portalign.registration import _reference

    base = anatomy(160, seed=3)
    reference = prepare_reference(Image(moved(base, 0, 0, 0, shape=(96, 112)).astype(np.float32), (1.0, 1.0),
                                        (55.5, 47.5)), backend="cpu")
    built: list[tuple] = []
    real = _reference.Reference._build_plan

    def counting(self, key, *args, **kwargs):
        built.append(key)
        return real(self, key, *args, **kwargs)

    monkeypatch.setattr(_reference.Reference, "_build_plan", counting)
    busy = Image(moved(base, 1.0, 0.5, 0, shape=(96, 112)).astype(np.float32), (1.0, 1.0), (55.5, 47.5))
    for k in range(_reference.MAX_PLANS + 3):
        reference.register(busy)
        other = Image(moved(base, 1.0, 0.5, 0, shape=(96, 112)).astype(np.float32), (1.0, 1.0), (50.5 + k, 47.5))
        reference.register(other)
    reference.register(busy)
    assert sum(1 for key in built if key[2] == (55.5, 47.5)) == 1  # built once, never dropped
    assert len(reference._plans) <= _reference.MAX_PLANS


def test_the_per_frame_lookup_stays_bounded_when_header_values_jitter():
    from portalign.registration import _reference

    base = anatomy(160, seed=3)
    reference = prepare_reference(Image(moved(base, 0, 0, 0, shape=(64, 72)).astype(np.float32), (1.0, 1.0),
                                        (35.5, 31.5)), backend="cpu")
    pixels = moved(base, 1.0, 0.5, 0, shape=(64, 72)).astype(np.float32)
    for k in range(3 * _reference.MAX_FRAME_POOL_KEYS):
        reference.register(Image(pixels, (1.0, 1.0), (35.5 + k * 1e-9, 31.5)))  # the same geometry to 6 decimals
    assert len(reference._plans) == 1
    assert len(reference._frame_pools) <= _reference.MAX_FRAME_POOL_KEYS
