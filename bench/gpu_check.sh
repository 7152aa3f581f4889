#!/usr/bin/env bash
# GPU check for a machine with a CUDA device and no network.
#
# Expects numba, numba-cuda, CuPy, scipy, pytest and pytest-benchmark to be installed. The device
# image carries numpy 2.5, which numba-cuda 0.30.4 cannot compile kernels with; so before the run, on
# the machine with network, fill .whl/ (git-ignored) with a numpy 2.4 wheel for the device's Python,
# pydicom, rocket-fft (scipy.fft inside numba code: the CPU global search) and portalign's own wheel, and
# carry it (device tool: carry [".whl"]):
#     rm -rf .whl && pip download "numpy>=2.4,<2.5" --only-binary=:all: --no-deps --python-version 3.12 \
#         --platform manylinux2014_x86_64 -d .whl && pip download pydicom --no-deps -d .whl \
#         && pip download "rocket-fft>=0.4.1,<0.5" --only-binary=:all: --no-deps --python-version 3.12 \
#         --platform manylinux_2_28_x86_64 -d .whl && pip wheel --no-deps . -w .whl
# The wheels are installed without an index and without dependencies into .gpu-site/, which goes
# first on PYTHONPATH (the image's own numpy stays as it is). Without a portalign wheel the tree is
# installed there from source. Nothing below needs the service extras (tests/test_gpu.py is the one
# module collected); pydicom is carried so that a DICOM file can be registered there by hand.
#
# Then: the GPU tests on the real device (python -m pytest -m gpu tests), the latency /
# throughput table of bench/gpu_latency.py for the CPU and GPU backends side by side (batches on
# 1, 2 and 4 lanes), and the device work per frame (bench/device_work.py: kernel calls, host
# round trips, bytes moved), and the 6-DOF 2D/3D registration on both backends (bench/register3d.py).
#
# Usage:  bash bench/gpu_check.sh [extra arguments for bench/gpu_latency.py]
# Env:    PYTHON (default python), OUT (where to write gpu_latency.json; default out/)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-out}
status=0

echo "== environment"
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

echo "== install (into .gpu-site, first on PYTHONPATH)"
shopt -s nullglob
SITE="$PWD/.gpu-site"
rm -rf "$SITE"
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    "$PY" -m pip install --no-index --no-deps --quiet --target "$SITE" "${wheels[@]}" \
        || { echo "installing .whl/*.whl failed"; status=1; }
fi
own=(.whl/portalign-*.whl)
if ((${#own[@]} == 0)); then
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --quiet --target "$SITE" . \
        || { echo "pip install . failed"; exit 1; }
fi
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import numpy, portalign; print('numpy', numpy.__version__, '| portalign from', portalign.__file__)"
"$PY" -c "from portalign.backends import gpu_status; ok, detail = gpu_status(); print('GPU backend:', ok, detail); raise SystemExit(0 if ok else 3)" \
    || { echo "the GPU backend is not available here: nothing more to check"; exit 3; }

echo "== GPU tests on the device"
# NUMBA_ENABLE_CUDASIM must be unset: the tests run the compiled kernels on the device. Only the module
# that holds them is collected: the others import the service extras (httpx, pynetdicom), absent here.
if ! env -u NUMBA_ENABLE_CUDASIM "$PY" -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py; then
    status=1
    # the project turns every warning into an error; a CuPy or numba-cuda warning on this machine would
    # fail every test, so run once more with warnings shown, not raised, to tell the two apart
    echo "== GPU tests again, warnings shown instead of raised"
    env -u NUMBA_ENABLE_CUDASIM "$PY" -m pytest -m gpu -q -p no:cacheprovider -W default -rw tests/test_gpu.py
fi

echo "== latency and throughput (1024 x 768 synthetic frames)"
mkdir -p "$OUT"
env -u NUMBA_ENABLE_CUDASIM "$PY" bench/gpu_latency.py --backend both --json "$OUT/gpu_latency.json" "$@" || status=1

echo "== 6-DOF 2D/3D: two 640 x 480 views against the thorax CT (needs ../shared/data/real; target <= 0.3 s)"
for backend in gpu cpu; do
    env -u NUMBA_ENABLE_CUDASIM "$PY" -m bench.register3d --backend "$backend" --setups 2 --repeats 3 \
        --json "$OUT/register3d_$backend.json" || status=1
done

echo "== device work per 1024 x 768 frame (counted on the CPU backend: the optimiser makes the same calls)"
"$PY" -m bench.device_work || status=1
exit $status
