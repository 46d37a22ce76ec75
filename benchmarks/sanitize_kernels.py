"""Every variant of fpnops' GPU kernels once, on small tensors, for compute-sanitizer:

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck --error-exitcode 9 \
        python benchmarks/sanitize_kernels.py --device cuda

- the CUDA kernels (fpnops._C): one call per template instantiation the launchers can pick
  (tests/cuda_emulation/variants.py, whose coverage of the launch plans is tested on the CPU);
- the Triton kernels: every variant of the compile check (fpnops/bench/triton_targets.py).

Bit-exact results cannot show a read past a tensor's end that happens to find the right bytes;
memcheck can, with the caching allocator off (otherwise small tensors share one segment). Each
output is also checked against eager, so this is not only a crash test. --device cpu (the CI
rehearsal) runs the CUDA cases on the CPU kernels and says that Triton is left out.
"""
import argparse
import importlib.util
import pathlib
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _variants_module():
    spec = importlib.util.spec_from_file_location("variants", ROOT / "tests" / "cuda_emulation" / "variants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _triton_cases(device):
    if device != "cuda":
        print("triton: left out on the CPU (the interpreter is not what memcheck checks)")
        return []
    from fpnops import _backend
    if not _backend.triton_runs_on("cuda"):
        print("triton: not usable on this GPU; left out")
        return []
    from fpnops.bench import triton_targets
    from fpnops.triton._launch import launch
    return [(f"triton {v.name}", lambda d, v=v: v.launch(v.inputs(d, True), launch))
            for v in triton_targets.variants()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = p.parse_args(argv)
    cases = _variants_module().sanitizer_cases() + _triton_cases(args.device)
    failed = 0
    for what, call in cases:
        t0 = time.perf_counter()
        try:
            call(args.device)
            if args.device == "cuda":
                torch.cuda.synchronize()  # a kernel's error surfaces here, under its name
            status = "ok"
        except Exception as e:  # noqa: BLE001  (every case reports; the exit code sums up)
            failed += 1
            status = f"FAILED {type(e).__name__}: {str(e)[:200]}"
        print(f"{what}: {status} ({time.perf_counter() - t0:.2f} s)", flush=True)
    print(f"sanitize_kernels: {len(cases) - failed} of {len(cases)} cases ran clean on {args.device}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
