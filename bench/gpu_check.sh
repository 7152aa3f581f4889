#!/usr/bin/env bash
# GPU check for a machine with a CUDA device and no network.
#
# Expects numpy, numba, numba-cuda, CuPy, scipy, pytest and pytest-benchmark to be installed.
# Before the run, on the machine with network, fill .whl/ (git-ignored) and carry it:
#     rm -rf .whl && pip download pydicom --no-deps -d .whl && pip wheel --no-deps . -w .whl
# (device tool: carry [".whl"]). Its wheels, portalign's own included, are installed without an
# index and without dependencies, so nothing is built on the device. Without a portalign wheel the
# tree is installed editable without build isolation (needs setuptools and wheel there). Nothing
# below needs pydicom or the service extras (checked by running tests/test_gpu.py with them blocked);
# pydicom is carried so that a DICOM file can be registered there by hand.
#
# Then: the GPU tests on the real device (python -m pytest -m gpu tests), the latency /
# throughput table of bench/gpu_latency.py for the CPU and GPU backends side by side (batches on
# 1, 2 and 4 lanes), and the device work per frame (bench/device_work.py: kernel calls, host
# round trips, bytes moved).
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
for name in ("numpy", "scipy", "numba", "numba_cuda", "cupy", "pytest", "pydicom"):
    try:
        module = importlib.import_module(name)
        print(f"{name:10} {getattr(module, '__version__', '?')}")
    except ImportError as exc:
        print(f"{name:10} missing ({exc})")
EOF

echo "== install"
shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
    "$PY" -m pip install --no-index --no-deps --quiet --force-reinstall "${wheels[@]}" \
        || { echo "installing .whl/*.whl failed"; status=1; }
fi
own=(.whl/portalign-*.whl)
if ((${#own[@]} == 0)); then
    "$PY" -m pip install --no-index --no-deps --no-build-isolation --quiet -e . || { echo "pip install -e . failed"; exit 1; }
fi
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

echo "== device work per 1024 x 768 frame (counted on the CPU backend: the optimiser makes the same calls)"
"$PY" -m bench.device_work || status=1
exit $status
