#!/usr/bin/env bash
# fpnops against the lent GPU machine's stack, on a machine without a GPU: Python 3.12, torch
# 2.11.0+cu130, torchvision 0.26.0, Triton 3.6.0 (CUDA wheels from PyPI) in a venv of its own.
# It builds fpnops with the CUDA kernels for sm_90 from a copy of the tree (the checkout's own
# in-place build is left alone), then runs what a CPU can run: the CPU test suite (its CUDA
# emulation, FakeTensor and interpreter tests, the sm_80/sm_90 Triton and SASS compile checks)
# and the GPU check's CPU rehearsal. The last line says PASSED or FAILED.
#   run:  bash benchmarks/stack_check.sh            (the working tree)
#         STACK_REF=HEAD bash benchmarks/stack_check.sh   (a commit instead)
#   env:  STACK_VENV (default /tmp/fpnops-stack312), STACK_PYTHON (default python3.12)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=${STACK_VENV:-/tmp/fpnops-stack312}
py=""
# The first Python 3.12 that runs (a pyenv shim may exist and refuse to run).
for cand in ${STACK_PYTHON:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
  if "$cand" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then py=$cand; break; fi
done
[ -n "$py" ] || { echo "stack check: no Python 3.12 found (set STACK_PYTHON)"; exit 2; }
log=${STACK_LOG:-/tmp/fpnops-stack-check}
mkdir -p "$log"

step() { echo "== $(date +%T) $*"; }
fail() { echo "stack check: $*"; echo "stack check FAILED"; exit 1; }

step "venv $venv ($("$py" -V))"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv" || fail "venv"
# The GPU machine's versions, exactly (torch's cu130 wheel is PyPI's default for 2.11.0). numpy
# below 2.4: Triton 3.6's interpreter (the CPU tests' Triton) takes int() of a 1-element array,
# which numpy 2.4 refuses (Triton 3.8 squeezes it first); the GPU machine compiles instead.
"$venv/bin/python" -m pip install -q "torch==2.11.0" "torchvision==0.26.0" "triton==3.6.0" "numpy<2.4" \
  setuptools wheel ninja pybind11 pytest pytest-timeout expecttest matplotlib scikit-image \
  > "$log/pip.log" 2>&1 || { tail -n 30 "$log/pip.log"; fail "pip install"; }
"$venv/bin/python" -c "import sys, torch, torchvision, triton; print(sys.version.split()[0], torch.__version__, torchvision.__version__, triton.__version__)" \
  | tee "$log/versions.txt"

src=$(mktemp -d /tmp/fpnops-stack-src.XXXX)
trap 'rm -rf "$src"' EXIT
if [ -n "${STACK_REF:-}" ]; then
  git archive "$STACK_REF" | tar -x -C "$src"
else  # tracked files and untracked ones git does not ignore, as they are now
  git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -x -C "$src"
fi
step "build with CUDA (sm_90) from $src"
(cd "$src" && FPNOPS_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-2} TORCH_CUDA_ARCH_LIST=9.0 \
  "$venv/bin/python" -m pip install -v --no-build-isolation --no-deps . > "$log/build.log" 2>&1) \
  || { tail -n 60 "$log/build.log"; fail "build"; }
grep -E "fpnops: building" "$log/build.log" | head -n 2
(cd / && "$venv/bin/python" -c "import fpnops; b = fpnops.backends(); print(b); assert b['cpu'] and b['cuda_compiled']") \
  || fail "import of the built fpnops"

step "CPU test suite"
(cd "$src" && FPNOPS_REQUIRE_EMULATION=1 PATH="$venv/bin:$PATH" "$venv/bin/pytest" -q tests \
  -p no:cacheprovider > "$log/tests.log" 2>&1)
tests_rc=$?
tail -n 15 "$log/tests.log"

step "GPU check rehearsal"
rm -rf "$log/rehearsal"  # the rehearsal counts the files it leaves there
(cd "$src" && PATH="$venv/bin:$PATH" OUT="$log/rehearsal" bash benchmarks/gpu_check.sh --rehearse \
  > "$log/rehearsal.log" 2>&1)
rehearse_rc=$?
tail -n 12 "$log/rehearsal.log"

echo "stack: $(cat "$log/versions.txt"); tests rc=$tests_rc; rehearsal rc=$rehearse_rc; logs in $log"
[ "$tests_rc" = 0 ] && [ "$rehearse_rc" = 0 ] && echo "stack check PASSED" || fail "see above"
