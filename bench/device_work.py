"""What one registration asks of a device: kernel calls, host round trips and bytes moved, per frame.

Usage (from the repository root; needs no GPU)::

    python -m bench.device_work [--shape 768x1024] [--frames 5]

The optimiser never branches on the backend, so the calls it makes on the CPU
backend are the calls it makes on the GPU. This script registers synthetic
frames (those of ``bench/gpu_latency.py``) on a counting copy of the CPU
backend and reports, per frame:

* kernel calls, by kernel (on a GPU each is one to three CUDA launches, all
  queued on the frame's stream);
* host round trips: each read of a device result on the host (a stream
  synchronisation on a GPU), with the bytes read;
* uploads from the host, with their bytes;
* the time spent outside the kernels (Python orchestration and the numpy
  statistics, which on a GPU become CuPy calls): on any backend the host pays
  it for every frame, so it is a floor under the GPU latency as well.

On a GPU every round trip costs a stream synchronisation and every kernel call
Python's launch overhead, whatever the image size: these counts, times those
costs, are a floor under the GPU latency. Bytes read back show that no
frame-sized array leaves the device.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

__all__ = ["Tally", "counting_backend", "device_work", "main"]

#: Kernels whose results come back to the host as Python values (a read on a GPU).
RETURNS_TO_HOST = ("pixel_list", "masked_range")


@dataclass
class Tally:
    """Counts of device work (kernel calls, reads back to the host, uploads) since the last reset."""

    calls: Counter = field(default_factory=Counter)
    reads: int = 0
    read_bytes: int = 0
    largest_read_bytes: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    kernel_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, nbytes: int) -> None:
        with self.lock:
            self.reads += 1
            self.read_bytes += nbytes
            self.largest_read_bytes = max(self.largest_read_bytes, nbytes)

    def upload(self, nbytes: int) -> None:
        with self.lock:
            self.uploads += 1
            self.upload_bytes += nbytes

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.reads = self.read_bytes = self.largest_read_bytes = self.uploads = self.upload_bytes = 0
            self.kernel_seconds = 0.0


def counting_backend(tally: Tally) -> Any:
    """Return the CPU backend with every kernel call, host read and upload counted in ``tally``."""
    from portalign.backends import Backend, cpu_backend

    cpu = cpu_backend()

    def counted(name: str, kernel: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = kernel(*args, **kwargs)
            elapsed = time.perf_counter() - start
            with tally.lock:
                tally.calls[name] += 1
                tally.kernel_seconds += elapsed
            if name in RETURNS_TO_HOST:
                tally.read(8 * (len(out) if isinstance(out, tuple) else 1))
            return out

        return call

    kernels = SimpleNamespace(**{name: counted(name, k) for name, k in vars(cpu.kernels).items()})

    @dataclass(frozen=True)
    class CountingBackend(Backend):
        def asarray(self, array: Any, dtype: Any = None) -> Any:
            out = super().asarray(array, dtype)
            tally.upload(int(out.nbytes))
            return out

        def to_host(self, array: Any) -> np.ndarray:
            out = super().to_host(array)
            tally.read(int(out.nbytes))
            return out

    return CountingBackend(name="cpu", xp=np, kernels=kernels, device="CPU kernels, counted")


def device_work(shape: tuple[int, int] = (768, 1024), n_frames: int = 5) -> dict[str, Any]:
    """Register ``n_frames`` synthetic frames of ``shape`` after a warm-up; return the device work per frame."""
    import portalign

    from bench.gpu_latency import SPACING_MM, synthetic_frames, synthetic_reference

    tally = Tally()
    reference = synthetic_reference(shape)
    frames, poses = synthetic_frames(reference, n_frames + 1)
    options = portalign.RegistrationOptions(field="none")
    prepared = portalign.prepare_reference(portalign.Image.from_array(reference, pixel_spacing_mm=SPACING_MM),
                                           options, backend=counting_backend(tally))
    images = [portalign.Image.from_array(f, pixel_spacing_mm=SPACING_MM) for f in frames]
    prepared.register(images[-1])  # the plan (reference uploads) is not per-frame work
    tally.reset()
    start = time.perf_counter()
    results = [prepared.register(image) for image in images[:n_frames]]
    total_seconds = time.perf_counter() - start
    frame_bytes = int(np.prod(shape)) * 4
    return {
        "shape": list(shape),
        "frames": n_frames,
        "ok": sum(r.ok for r in results),
        "max_error_mm": float(max(max(abs(r.dx_mm - p[0]), abs(r.dy_mm - p[1]))
                                  for r, p in zip(results, poses[:n_frames], strict=True))),
        "kernel_calls": {k: v / n_frames for k, v in sorted(tally.calls.items())},
        "kernel_calls_total": sum(tally.calls.values()) / n_frames,
        "host_reads": tally.reads / n_frames,
        "host_read_bytes": tally.read_bytes / n_frames,
        "largest_read_bytes": tally.largest_read_bytes,
        "uploads": tally.uploads / n_frames,
        "upload_bytes": tally.upload_bytes / n_frames,
        "frame_bytes": frame_bytes,
        "ms_per_frame": 1e3 * total_seconds / n_frames,
        "ms_outside_kernels": 1e3 * (total_seconds - tally.kernel_seconds) / n_frames,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the device work per frame; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.device_work", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="768x1024", help="rows x cols of the synthetic frames")
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args(argv)
    rows, cols = (int(v) for v in args.shape.lower().split("x"))
    work = device_work((rows, cols), args.frames)
    print(f"{rows}x{cols} frames, {work['frames']} registered ({work['ok']} ok, worst error "
          f"{work['max_error_mm']:.3f} mm); per frame:")
    print(f"  kernel calls   {work['kernel_calls_total']:7.1f}   "
          + ", ".join(f"{k} {v:g}" for k, v in work["kernel_calls"].items()))
    print(f"  host reads     {work['host_reads']:7.1f}   {work['host_read_bytes'] / 1024:.1f} KiB in all, "
          f"largest {work['largest_read_bytes'] / 1024:.1f} KiB (the frame is {work['frame_bytes'] / 1024:.0f} KiB)")
    print(f"  uploads        {work['uploads']:7.1f}   {work['upload_bytes'] / 1024:.1f} KiB in all")
    print(f"  host time      {work['ms_per_frame']:7.2f} ms on the CPU backend, {work['ms_outside_kernels']:.2f} ms of it "
          "outside the kernels (Python and numpy statistics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
