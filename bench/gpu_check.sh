#!/usr/bin/env bash
# GPU check for a machine with a CUDA device and no network.
#
# Expects numba, numba-cuda, CuPy, scipy, pytest and pytest-benchmark to be installed. The device
# image carries numpy 2.5, which numba-cuda 0.30.4 cannot compile kernels with; so before the run, on
# the machine with network, fill .whl/ (git-ignored) with a numpy 2.4 wheel for the device's Python,
# pydicom, rocket-fft (scipy.fft inside numba code: the CPU global search) and portalign's own wheel, and
# carry it (device tool: carry [".whl"]):
#     P="--only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
#        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64"
#     rm -rf .whl && pip download "numpy>=2.4,<2.5" $P -d .whl && pip download pydicom --no-deps -d .whl \
#         && pip download "rocket-fft>=0.4.1,<0.5" $P -d .whl && pip wheel --no-deps . -w .whl
# (numpy 2.4's wheels are manylinux_2_27/2_28: with manylinux2014 alone pip finds none.) The 6-DOF and
# held-out steps need the thorax CT, which ../shared holds but which does not travel; carry it packed
# (29 MB; .ct/ is git-ignored like .whl/; carry [".whl", ".ct"]):
#     mkdir -p .ct && tar -C ../shared/data/real/itkelastix -cJf .ct/ct.tar.xz thorax_ct_phase00
# The wheels are installed without an index and without dependencies into .gpu-site/, which goes
# first on PYTHONPATH (the image's own numpy stays as it is). Without a portalign wheel the tree is
# installed there from source. Nothing below needs the service extras (tests/test_gpu.py is the one
# module collected); pydicom is carried so that a DICOM file can be registered there by hand.
#
# Then, each step under its own time limit (so that one hang cannot eat a device lease), output also
# in $OUT/gpu_check.log: the first registration of a fresh process on the GPU before any kernel is cached
# (compilation included); the latency / throughput table of bench/gpu_latency.py for the CPU and GPU
# backends side by side (batches on 1, 2 and 4 lanes); the GPU tests on the real device (python -m pytest
# -m gpu tests/test_gpu.py, warnings as errors); the first registration once more with numba-cuda's cache;
# the latency again with frames through a radiation field that each frame detects (how many launch
# sequences replayed a graph); 16 held-out-style pairs of every kind registered on both backends with
# their largest difference (bench/held_out.py --backend both); the 6-DOF 2D/3D registration on the GPU
# (bench/register3d.py; the CT is looked for in ../shared, or unpacked from .ct/ct.tar.xz when carried);
# where a warm GPU frame's host time goes (bench/gpu_profile.py, the levels made ready on the device, the
# latency with CUDA graphs off); and the device work per frame (bench/device_work.py). A fresh install
# compiles the CPU kernels once too (about 2 minutes of one core on the project's machine).
#
# The steps run in the order of what a short lease most needs: the first frame, the latency table, the
# tests, then the rest; each writes to the log as it goes, so a run stopped at its limit still reports
# the steps it finished.
#
# Usage:  bash bench/gpu_check.sh [extra arguments for bench/gpu_latency.py]
# Env:    PYTHON (default python, else python3), OUT (where the JSON and the log go; default out/),
#         GPU_CHECK_3D_CPU=1 also times the 6-DOF registration on the CPU backend,
#         GPU_CHECK_QUICK=1 leaves out the 6-DOF and device-work steps (a second run in a lease),
#         GPU_CHECK_ONLY="held_out 3d" runs only the named steps (cold, latency, tests, cached, field,
#         profile, levels, nographs, 3d, held_out, device_work); the install is kept when .gpu-site
#         already holds portalign (a second call on a warm machine)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
OUT=${OUT:-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
status=0
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started)) s] $*"; }
# limit SECONDS COMMAND...: run a step, stop it after SECONDS and say so
limit() { local s=$1; shift; timeout --kill-after=10 "$s" "$@"; local rc=$?; ((rc == 124 || rc == 137)) && echo "(stopped after $s s)"; return $rc; }

step environment
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$PY" - <<'EOF'
import importlib
for name in ("numpy", "scipy", "numba", "numba_cuda", "cupy", "pytest", "pydicom", "rocket_fft"):
    try:
        module = importlib.import_module(name)
        print(f"{name:10} {getattr(module, '__version__', '?')}")
    except ImportError as exc:
        print(f"{name:10} missing ({exc})")
EOF

step "install (into .gpu-site, first on PYTHONPATH)"
shopt -s nullglob
SITE="$PWD/.gpu-site"
ONLY=${GPU_CHECK_ONLY:-}
# want STEP: whether this run includes the step (every step unless GPU_CHECK_ONLY names some)
want() { [[ -z $ONLY || " $ONLY " == *" $1 "* ]]; }
if [[ -n $ONLY && -d $SITE/portalign ]]; then
    echo "kept: $SITE (GPU_CHECK_ONLY, installed by an earlier call)"
    wheels=()
    own=(kept)
else
    rm -rf "$SITE"
    wheels=(.whl/*.whl)
    own=(.whl/portalign-*.whl)
fi
if ((${#wheels[@]})); then
    "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" "${wheels[@]}" \
        || { echo "installing .whl/*.whl failed"; status=1; }
fi
if ((${#own[@]} == 0)); then
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --quiet --target "$SITE" . \
        || { echo "pip install . failed"; exit 1; }
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import numpy, portalign; print('numpy', numpy.__version__, '| portalign from', portalign.__file__)" \
    || { echo "portalign cannot be imported with $PY (above: what is missing); nothing more to check"; exit 1; }
"$PY" -c "from portalign.backends import gpu_status; ok, detail = gpu_status(); print('GPU backend:', ok, detail); raise SystemExit(0 if ok else 3)" \
    || { echo "the GPU backend is not available here: nothing more to check"; exit 3; }

cold() {  # first registration in a fresh process, imports included
    limit 120 env -u NUMBA_ENABLE_CUDASIM "$PY" - "$1" <<'EOF'
import sys, time
t0 = time.perf_counter()
import portalign
from bench.gpu_latency import SPACING_MM, synthetic_frames, synthetic_reference
t_import = time.perf_counter() - t0
reference = synthetic_reference((768, 1024))  # the test images (not part of a user's first registration)
frames, _ = synthetic_frames(reference, 1)
t1 = time.perf_counter()
prepared = portalign.prepare_reference(portalign.Image.from_array(reference, pixel_spacing_mm=SPACING_MM),
                                       portalign.RegistrationOptions(field="none"), backend="gpu")
result = prepared.register(portalign.Image.from_array(frames[0], pixel_spacing_mm=SPACING_MM))
t2 = time.perf_counter()
print(f"first GPU registration of a fresh process ({sys.argv[1]}): {t_import + t2 - t1:.2f} s with imports "
      f"({t_import:.2f} s of imports, {t2 - t1:.2f} s from prepare_reference; making the test images "
      f"{t1 - t0 - t_import:.2f} s more); ok={result.ok} dx={result.dx_mm:.3f} dy={result.dy_mm:.3f}")
EOF
}
QUICK=${GPU_CHECK_QUICK:-0}
if want cold; then
    step "first registration in a fresh process, nothing cached yet"
    cold "kernels compiled" || status=1
fi

if want latency; then
    step "latency and throughput (1024 x 768 synthetic frames)"
    limit 300 env -u NUMBA_ENABLE_CUDASIM "$PY" bench/gpu_latency.py --backend both --batch 256 \
        --json "$OUT/gpu_latency.json" "$@" || status=1
fi

if want tests; then
    step "GPU tests on the device (warnings are errors)"
    # NUMBA_ENABLE_CUDASIM must be unset: the tests run the compiled kernels on the device. Only the module
    # that holds them is collected: the others import the service extras (httpx, pynetdicom), absent here.
    # -X faulthandler: a crash at interpreter exit (after pytest's own handler is gone) still prints its stack
    limit 300 env -u NUMBA_ENABLE_CUDASIM "$PY" -X faulthandler -m pytest -m gpu -q -p no:cacheprovider -rfEw \
        --tb=short tests/test_gpu.py || status=1
fi

if want cached; then
    step "first registration in a fresh process, kernels from numba-cuda's cache"
    cold "kernels cached" || status=1
    step "where numba-cuda cached the kernels (kernels/gpu/_cache.py: the user's cache folder, stamped with the set)"
    "$PY" -c "from portalign.kernels.gpu import edge; from portalign.kernels.cpu._cache import install_cuda_locators
c = edge._gradient_correlation_blocks._cache; print('stamped locators installed:', install_cuda_locators(), '| locator:',
type(c._impl.locator).__name__, '| path:', c.cache_path)" || echo "(the cache locator could not be read)"
fi

if want field; then
    step "latency through a radiation field each frame detects (usable-pixel counts vary, as in cine: graphs per bucket)"
    limit 150 env -u NUMBA_ENABLE_CUDASIM "$PY" bench/gpu_latency.py --backend both --field --frames 30 --batch 64 \
        --lanes 2 --no-drr --json "$OUT/gpu_latency_field.json" || status=1
fi

if want held_out && [[ $QUICK != 1 ]]; then
    step "held-out-style pairs of every kind (fields, cones, MLC, open, portal references, low dose, dead lines) on both"
    if [[ ! -d ../shared/data/real/itkelastix/thorax_ct_phase00 && -f .ct/ct.tar.xz ]]; then
        mkdir -p ../shared/data/real/itkelastix && tar -xJf .ct/ct.tar.xz -C ../shared/data/real/itkelastix
    fi
    limit 240 env -u NUMBA_ENABLE_CUDASIM "$PY" -m bench.held_out --pairs 16 --backend both || status=1
fi

if want 3d && [[ $QUICK != 1 ]]; then
    step "6-DOF 2D/3D: two 640 x 480 views against the thorax CT (target <= 0.3 s on a GPU)"
    if [[ ! -d ../shared/data/real/itkelastix/thorax_ct_phase00 && -f .ct/ct.tar.xz ]]; then
        mkdir -p ../shared/data/real/itkelastix && tar -xJf .ct/ct.tar.xz -C ../shared/data/real/itkelastix
    fi
    backends=(gpu)
    [[ ${GPU_CHECK_3D_CPU:-0} == 1 ]] && backends+=(cpu)
    for backend in "${backends[@]}"; do
        limit 240 env -u NUMBA_ENABLE_CUDASIM "$PY" -m bench.register3d --backend "$backend" --setups 2 --repeats 3 \
            --json "$OUT/register3d_$backend.json" || status=1
    done
fi

if want profile; then
    step "where a warm GPU frame's host time goes"
    limit 120 env -u NUMBA_ENABLE_CUDASIM "$PY" -m bench.gpu_profile --backend gpu --frames 30 --top 30 || status=1
fi
if want levels; then
    step "latency with the levels made ready by the device's own kernels (PORTALIGN_GPU_LEVELS=device)"
    limit 120 env -u NUMBA_ENABLE_CUDASIM PORTALIGN_GPU_LEVELS=device "$PY" bench/gpu_latency.py --backend gpu \
        --frames 30 --batch 64 --lanes 1,4 --no-drr || status=1
fi
if want nographs; then
    step "latency with CUDA graphs off (PORTALIGN_CUDA_GRAPHS=0)"
    limit 120 env -u NUMBA_ENABLE_CUDASIM PORTALIGN_CUDA_GRAPHS=0 "$PY" bench/gpu_latency.py --backend gpu \
        --frames 30 --batch 32 --lanes 1 --no-drr || status=1
fi

if want device_work && [[ $QUICK != 1 ]]; then
    step "device work per 1024 x 768 frame (counted on the CPU backend: the optimiser makes the same calls)"
    limit 120 "$PY" -m bench.device_work || status=1
fi

step "summary: the issue's targets (from $OUT/*.json)"
"$PY" - "$OUT" <<'EOF' || status=1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {r["backend"]: r for r in json.loads((out / "gpu_latency.json").read_text())["rows"]} \
    if (out / "gpu_latency.json").exists() else {}
gpu, cpu = rows.get("gpu", {}), rows.get("cpu", {})
def fig(row, key, fmt="{:.2f}"):
    return fmt.format(row[key]) if key in row else "-"
print(f"| figure (1024x768) | CPU | GPU | target |\n|---|---|---|---|")
print(f"| median / p99 per frame (ms) | {fig(cpu, 'latency_ms_median')} / {fig(cpu, 'latency_ms_p99')} | "
      f"{fig(gpu, 'latency_ms_median')} / {fig(gpu, 'latency_ms_p99')} | GPU <= 0.5 ms, never slower than the CPU |")
fps = " / ".join(f"{v:.0f} ({k})" for k, v in gpu.get("frames_per_s_batched", {}).items())
print(f"| batched frames/s (lanes) | {' / '.join(f'{v:.0f}' for v in cpu.get('frames_per_s_batched', {}).values())} | "
      f"{fps or '-'} | >= 5,000 |")
three = out / "register3d_gpu.json"
if three.exists():
    d = json.loads(three.read_text())
    print(f"| 6-DOF, two 640x480 views (s, median) | - | {d['register_s_median']:.2f} | <= 0.3 s |")
fielded = out / "gpu_latency_field.json"
if fielded.exists():
    rows = {r["backend"]: r for r in json.loads(fielded.read_text())["rows"]}
    gpu, cpu = rows.get("gpu", {}), rows.get("cpu", {})
    runs = gpu.get("graph_runs_timed_frames", {})
    print(f"| median per frame through a detected field (ms) | {fig(cpu, 'latency_ms_median')} | "
          f"{fig(gpu, 'latency_ms_median')} (graphs replayed {runs.get('replayed', '-')}, captured "
          f"{runs.get('captured', '-')}, eager {runs.get('eager', '-')}) | as without a field |")
EOF
step "done, status $status"
exit $status
