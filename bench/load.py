"""Load test of the HTTP service: N concurrent clients on loopback, throughput and latency.

Starts ``portalign serve`` itself (a separate process by default, so that the
clients do not share the server's interpreter) on a free loopback port, uploads
a synthetic reference, and lets ``--clients`` threads, each with its own HTTP
connection, register frames with known shifts until ``--frames`` frames have
been sent or ``--duration`` seconds have passed. Reports throughput, latency
percentiles (client side: request sent -> response read), the server-side
registration time, the largest error against the known shift, and the errors,
which must be zero (exit status 1 otherwise).

    python bench/load.py                       # 8 clients, 200 frames, 256 x 256
    python bench/load.py --clients 16 --frames 1000 --size 512 --json
    python bench/load.py --url http://127.0.0.1:8000 --token T   # an already running server
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from scipy import ndimage

SPACING = 1.0


def blobs(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3 * size / 128)
    return ((img - img.min()) / np.ptp(img) * 3000 + 200).astype(np.float32)


def raw(pixels: np.ndarray, token: str | None) -> dict:
    headers = {
        "Content-Type": "application/octet-stream",
        "X-Rows": str(pixels.shape[0]),
        "X-Cols": str(pixels.shape[1]),
        "X-Dtype": "float32",
        "X-Pixel-Spacing-Mm": str(SPACING),
    }
    if token:
        headers["X-API-Token"] = token
    return {"content": np.ascontiguousarray(pixels, dtype="<f4").tobytes(), "headers": headers}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace) -> tuple[str, object]:
    """Start the server (subprocess or thread); return its URL and a stop handle."""
    if args.in_process:
        from portalign.service import ServerThread, create_app

        server = ServerThread(create_app(token=args.token, workers=args.workers, warm_up=True)).start()
        return server.url, server.stop
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "portalign.service", "--host", "127.0.0.1", "--port", str(port)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    env = dict(os.environ)
    if args.token:
        env["PORTALIGN_TOKEN"] = args.token
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        raise TimeoutError("the server did not answer /health within 120 s")

    def stop() -> None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        process.stderr.close()

    return url, stop


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--frames", type=int, default=200, help="frames in total (default 200)")
    parser.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds (default 120)")
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels, 1 mm spacing (default 256)")
    parser.add_argument("--workers", type=int, default=None, help="server registration threads")
    parser.add_argument("--url", default=None, help="use this running server instead of starting one")
    parser.add_argument("--token", default=None)
    parser.add_argument("--in-process", action="store_true", help="run the server in a thread of this process")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    stop = None
    url = args.url
    if url is None:
        url, stop = start_server(args)
    try:
        image = blobs(args.size)
        rng = np.random.default_rng(1)
        truths = [tuple(rng.uniform(-5, 5, 2)) for _ in range(16)]
        payloads = [raw(ndimage.shift(image, (dy, dx), order=3, mode="nearest"), args.token) for dx, dy in truths]
        with httpx.Client(base_url=url, timeout=120) as c:
            response = c.post("/v1/references", **raw(image, args.token))
            response.raise_for_status()
            ref = response.json()["id"]
            for payload in payloads[:2]:  # plan for this geometry, kernels compiled
                c.post(f"/v1/references/{ref}/register", **payload).raise_for_status()
            backend = c.get("/health").json()

        lock = threading.Lock()
        state = {"sent": 0}
        latencies: list[float] = []
        server_ms: list[float] = []
        errors: list[str] = []
        worst = [0.0]
        deadline = time.monotonic() + args.duration

        def client(n: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as c:
                while True:
                    with lock:
                        if state["sent"] >= args.frames or time.monotonic() > deadline:
                            return
                        k = state["sent"]
                        state["sent"] += 1
                    payload, (dx, dy) = payloads[k % len(payloads)], truths[k % len(truths)]
                    t0 = time.perf_counter()
                    try:
                        r = c.post(f"/v1/references/{ref}/register", **payload)
                        elapsed = (time.perf_counter() - t0) * 1e3
                        if r.status_code != 200:
                            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                        body = r.json()
                        err = max(abs(body["dx_mm"] - dx), abs(body["dy_mm"] - dy))
                        with lock:
                            latencies.append(elapsed)
                            server_ms.append(body["elapsed_ms"])
                            worst[0] = max(worst[0], err)
                            if not body["ok"]:
                                errors.append(f"frame {k}: not ok ({body['reason']})")
                    except Exception as exc:
                        with lock:
                            errors.append(f"client {n} frame {k}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(args.clients)]
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t_start
    finally:
        if stop is not None:
            stop()

    report = {
        "server": "in-process thread" if args.in_process else ("external" if args.url else "subprocess"),
        "backend": backend.get("backend"),
        "device": backend.get("device"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "clients": args.clients,
        "frame_shape": [args.size, args.size],
        "frames": len(latencies),
        "errors": len(errors),
        "wall_s": round(wall, 3),
        "throughput_fps": round(len(latencies) / wall, 2) if wall > 0 else None,
        "latency_ms_p50": round(percentile(latencies, 50), 2),
        "latency_ms_p90": round(percentile(latencies, 90), 2),
        "latency_ms_p99": round(percentile(latencies, 99), 2),
        "latency_ms_max": round(max(latencies), 2) if latencies else None,
        "server_registration_ms_median": round(statistics.median(server_ms), 2) if server_ms else None,
        "max_abs_error_mm": round(worst[0], 4),
        "first_errors": errors[:5],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['frames']} frames of {args.size}x{args.size} from {args.clients} clients in {wall:.2f} s "
              f"({report['server']} server, {report['backend']}, {report['device']})")
        print(f"throughput {report['throughput_fps']} frames/s; latency p50 {report['latency_ms_p50']} ms, "
              f"p90 {report['latency_ms_p90']} ms, p99 {report['latency_ms_p99']} ms, max {report['latency_ms_max']} ms")
        print(f"server registration median {report['server_registration_ms_median']} ms; "
              f"largest error vs truth {report['max_abs_error_mm']} mm; errors {report['errors']}")
        for line in errors[:5]:
            print("  " + line)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
