#!/usr/bin/env bash
# The GPU check: one call on the lent H100/H200 (at most 8 minutes, at most 8 files back from
# $OUT) builds fpnops for the visible GPU, runs its GPU tests, times upsample_add, the FPN neck and
# ResNet50-FPN against eager and torch.compile, and runs compute-sanitizer over every CUDA kernel
# variant, in that order of value. Each stage has its own time box, clipped to what is left of the
# whole; after each one, OUT holds its complete results, so a kill at any point keeps what is done:
#   OUT/<gpu>.json    every stage, every bench row, every DESIGN.md target with its figure
#   OUT/summary.txt   the same, short (printed at the end)
#   OUT/logs.tar.gz   every stage's log
# Commit OUT/<gpu>.json as benchmarks/results/<gpu>.json (h100 or h200).
#
#   bash benchmarks/gpu_check.sh              on the GPU machine (then: run's timeout_s >= 540)
#   bash benchmarks/gpu_check.sh --rehearse   the same stages and boxes on the CPU, tiny shapes,
#                                             plus a stage killed by its box (CI)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=gpu
[ "${1:-}" = "--rehearse" ] && mode=rehearse
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
work=$(mktemp -d /tmp/fpnops-gpu-check.XXXX)
mkdir -p "$work/logs"
started=$(date +%s)

if [ "$mode" = gpu ]; then
  budget=${GPU_CHECK_BUDGET:-465}  # seconds for everything, the build included (<= 8 min with the
                                   # last kill's 5 s grace and the final merge)
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr 'A-Z' 'a-z')
  case "$name" in *h200*) name=h200 ;; *h100*) name=h100 ;; *) name=gpu ;; esac
  nvidia-smi > "$work/logs/nvidia-smi.txt" 2>&1
  dev=(--device cuda)
  shapes=(--batch 8 --size 800 --layout channels_last --rounds 10)
else
  budget=${GPU_CHECK_BUDGET:-465}
  # The same boxes as on the GPU: the work is what is scaled down (CPU, tiny shapes).
  name=cpu-rehearsal
  dev=(--device cpu)
  shapes=(--batch 1 --size 64 --layout channels_last --rounds 2 --compile-mode none)
fi
deadline=$((started + budget))

merge() {
  "$PY" "$root/benchmarks/gpu_check.py" merge --work "$work" --out "$OUT" --name "$name" --mode "$mode" \
    --budget "$budget" --started "$started" > /dev/null
}

# stage NAME BOX_SECONDS COMMAND...: runs COMMAND under `timeout` (BOX, clipped to the
# deadline), its output in logs/NAME.log, its status in stages.tsv; then merges.
stage() {
  local sname=$1 box=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 5 ]; then
    printf '%s\tskipped\t\t0\tno time left\n' "$sname" >> "$work/stages.tsv"; merge; return 0
  fi
  [ "$box" -gt "$left" ] && box=$left
  echo "== $(date +%T) $sname (box ${box} s)"
  local t0 rc status ms
  t0=$(date +%s%N)
  timeout -k 5 "$box" "$@" > "$work/logs/$sname.log" 2>&1
  rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$sname" "$status" "$rc" "$((ms / 1000)).$(( ms % 1000 / 100 ))" \
    "$(tail -n 1 "$work/logs/$sname.log" | tr '\t' ' ' | cut -c1-120)" >> "$work/stages.tsv"
  merge
  echo "   $status (rc=$rc)"
  return $rc
}

skip() {  # stage NAME did not run here, and why
  printf '%s\tskipped\t\t0\t%s\n' "$1" "$2" >> "$work/stages.tsv"
  echo "== $1: skipped ($2)"
}

bench=("$PY" -P -m fpnops bench)  # each run's JSON goes to work/bench-<stage>.json for the merge

# 1. Build for the visible GPU's arch only; meanwhile the CPU build of the CUDA kernels that
# tests/test_cuda_emulation.py reads its launch plans from (one compile, otherwise paid inside
# the tests' box).
if [ "$mode" = gpu ]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1)
  { command -v ninja && ninja --version; } > "$work/logs/ninja.txt" 2>&1  # without it: one compile at a time
  FPNOPS_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${arch:-9.0}} \
    stage build 150 bash -c '(cd tests && "$0" -c "import cuda_emulation as e; e.load(); print(\"emulation built\")") \
      > "$1" 2>&1 & "$0" -m pip install -v --no-build-isolation --no-deps .; rc=$?; wait; exit $rc' \
      "$PY" "$work/logs/emulation-build.log" \
    || { tail -n 40 "$work/logs/build.log"; echo "GPU CHECK: BUILD FAILED"; cat "$OUT/summary.txt"; exit 1; }
else
  skip build "rehearse: uses the fpnops already installed"
fi

# 2. Stop at once if the build has no CUDA kernels or no GPU is visible.
(cd / && stage check 60 "$PY" -c "
import sys, torch, fpnops
b = fpnops.backends()
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'fpnops', fpnops.__version__, b)
if '$mode' == 'gpu' and not (b['cuda_compiled'] and b['cuda_available']):
    sys.exit('GPU CHECK: fpnops has no usable CUDA backend: cuda_compiled=%s, cuda_available=%s' % (b['cuda_compiled'], b['cuda_available']))
print('check ok' + (' (rehearse: no GPU expected)' if '$mode' != 'gpu' else ''))
") || { cat "$work/logs/check.log"; echo "GPU CHECK: STOPPED"; exit 1; }
cat "$work/logs/check.log"

# 3. The GPU tests only (marked gpu in tests/conftest.py: the CUDA and Triton cases and the fused
# modules on CUDA), each under a per-test timeout where pytest-timeout is installed.
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 60)
stage tests 120 "$PY" -P -m pytest -q -m gpu tests -p no:cacheprovider "${per_test[@]}"

# 4. upsample_add, conv_bn_act and the FPN neck in fp16 against eager and torch.compile.
stage bench-ops-fp16 100 "${bench[@]}" "${dev[@]}" --out "$work/bench-ops-fp16.json" --suite ops fpn --dtype float16 "${shapes[@]}"

# 5. ResNet50-FPN fp16 channels_last N=8 800x800 against eager and torch.compile (freezing).
stage bench-backbone 130 "${bench[@]}" "${dev[@]}" --out "$work/bench-backbone.json" --suite backbone --quick --dtype float16 "${shapes[@]}"

# 6. compute-sanitizer memcheck over every CUDA kernel variant, the caching allocator off (with it,
# small tensors share segments and an access out of one tensor lands in another).
if [ "$mode" = gpu ]; then
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 stage sanitizer 90 compute-sanitizer --tool memcheck \
    --error-exitcode 9 "$PY" -P benchmarks/sanitize_kernels.py --device cuda
else
  stage sanitizer 90 "$PY" -P benchmarks/sanitize_kernels.py --device cpu  # no compute-sanitizer here
fi

# 7. Only then, while time is left: more dtypes, IEEE float32, the codegen report joined with
# the measured bandwidth, max-autotune.
stage bench-ops-bf16 90 "${bench[@]}" "${dev[@]}" --out "$work/bench-ops-bf16.json" --suite ops fpn --dtype bfloat16 "${shapes[@]}"
stage bench-ops-fp32 60 "${bench[@]}" "${dev[@]}" --out "$work/bench-ops-fp32.json" --suite ops --dtype float32 "${shapes[@]}"
stage codegen 60 "$PY" -P benchmarks/codegen_report.py --arch 90 --out "$work/logs/codegen" \
  --bench "$work"/bench-*.json
if [ "$mode" = rehearse ]; then
  # A stage its box kills: what the earlier stages left must stay intact (verify checks it).
  stage killed 3 sleep 600
else
  stage bench-autotune 120 "${bench[@]}" "${dev[@]}" --out "$work/bench-autotune.json" --suite backbone --quick --dtype bfloat16 "${shapes[@]}" \
    --compile-mode max-autotune-no-cudagraphs
fi

merge
expect=(check tests bench-ops-fp16 bench-backbone sanitizer)
[ "$mode" = gpu ] && expect=(build "${expect[@]}")
"$PY" benchmarks/gpu_check.py verify --out "$OUT" --name "$name" --expect-stage "${expect[@]}" \
  > "$work/logs/verify.log" 2>&1
vrc=$?
merge
cat "$work/logs/verify.log"
echo "== summary ($OUT/summary.txt; commit $OUT/$name.json as benchmarks/results/$name.json)"
cat "$OUT/summary.txt"
rm -rf "$work"
exit $vrc
