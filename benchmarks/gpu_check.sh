#!/usr/bin/env bash
# On the lent GPU machine, in one call: build fpnops, run the whole test suite on the GPU (CUDA
# and Triton kernels bit-exact vs eager), compute-sanitizer on the CUDA kernels, and the
# benchmarks. Everything lands under $OUT; the short summary is printed last.
#   run: bash benchmarks/gpu_check.sh
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
gpu=$(python3 -c "import torch; n=torch.cuda.get_device_name().lower(); print('h200' if 'h200' in n else 'h100' if 'h100' in n else 'gpu')")

export FPNOPS_BUILD_CUDA=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
if ! python3 -m pip install --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
fi
(cd /tmp && python3 -c "import fpnops; print(fpnops.backends())") | tee "$OUT/backends.txt"

python3 -P -m pytest -q tests -p no:cacheprovider > "$OUT/tests.log" 2>&1
echo "tests rc=$?"

cat > /tmp/sanitize.py <<'PY'
import torch, fpnops
for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 13, 19, device="cuda", dtype=dt).contiguous(memory_format=fmt)
        w = torch.randn(24, 16, 3, 3, device="cuda", dtype=dt)
        b = torch.randn(24, device="cuda", dtype=dt)
        r = torch.randn(2, 24, 13, 19, device="cuda", dtype=dt).contiguous(memory_format=fmt)
        for relu in (True, False):
            fpnops.conv_bn_act(x, w, b, padding=1, residual=r, relu=relu)
            fpnops.conv_bn_act(x, w[:, :, :1, :1].contiguous(), b, residual=r, relu=relu, backend="triton")
for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for fmt in (torch.contiguous_format, torch.channels_last):
        t = torch.randn(2, 24, 13, 19, device="cuda", dtype=dt).contiguous(memory_format=fmt)
        l = torch.randn(2, 24, 25, 37, device="cuda", dtype=dt, requires_grad=True).contiguous(memory_format=fmt)
        tt = t.detach().requires_grad_()
        fpnops.upsample_add(tt, l).sum().backward()
        fpnops.upsample_add(t[..., 1:], l[..., ::2])
torch.cuda.synchronize(); print("sanitize run done")
PY
timeout 300 compute-sanitizer --tool memcheck python3 /tmp/sanitize.py > "$OUT/sanitizer.log" 2>&1
echo "compute-sanitizer rc=$? (see sanitizer.log; it may refuse the device under gVisor)"
# Every variant of fpnops' own CUDA kernels (the emulation tests' GPU cases, small tensors)
# under memcheck: an access out of bounds on the GPU, which bit-exact results cannot show.
timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 python3 -P -m pytest -q \
  tests/test_cuda_emulation.py -k "not emulated and not past_2_pow" -p no:cacheprovider \
  > "$OUT/sanitizer_kernels.log" 2>&1
echo "compute-sanitizer (kernel variants) rc=$?"

# The suites of `python -m fpnops bench`: ops + FPN neck at N=8 800x800 channels_last in the three
# dtypes; backbones against torch.compile max-autotune (freezing) in fp16/bf16.
python3 -P -m fpnops bench --device cuda --suite ops fpn --dtype float16 bfloat16 float32 \
  --out "$OUT/$gpu.json" --plot "$OUT/$gpu.png" > "$OUT/bench.txt" 2>&1
echo "bench ops+fpn rc=$?"
python3 -P -m fpnops bench --device cuda --suite backbone --dtype float16 bfloat16 --rounds 10 \
  --compile-mode max-autotune-no-cudagraphs \
  --out "$OUT/$gpu-backbone.json" --plot "$OUT/$gpu-backbone.png" > "$OUT/bench_backbone.txt" 2>&1
echo "bench backbone rc=$?"
# Static codegen (SASS: 128-bit accesses, spills, instructions per byte against the H100
# model) of the kernels just measured, printed next to their bandwidth.
if [ -f benchmarks/codegen_report.py ]; then
  python3 -P benchmarks/codegen_report.py > "$OUT/codegen.txt" 2>&1
  echo "codegen report rc=$?"
fi

echo "== tests"; tail -n 3 "$OUT/tests.log"
echo "== sanitizer"; tail -n 3 "$OUT/sanitizer.log"; tail -n 3 "$OUT/sanitizer_kernels.log"
echo "== ops + FPN neck"; grep -v Warning "$OUT/bench.txt" | tail -n 80
if [ -f "$OUT/codegen.txt" ]; then echo "== codegen (SASS)"; tail -n 60 "$OUT/codegen.txt"; fi
echo "== backbones"; grep -v Warning "$OUT/bench_backbone.txt" | tail -n 20
