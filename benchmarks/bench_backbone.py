"""ResNet50 backbone and ResNet50-FPN inference side by side: fpnops.fuse(model) vs eager vs
torch.compile of eager (with torch._inductor.config.freezing=True, and the mode given), with
randomised BatchNorm statistics. Interleaved rounds, medians, ratios; peak memory on CUDA.

    python benchmarks/bench_backbone.py                       # CPU: N=1, 512x512, fp32 and bf16
    python benchmarks/bench_backbone.py --device cuda --batch 8 --size 800 --dtypes float16 bfloat16 \\
        --layout channels_last --compile-mode max-autotune-no-cudagraphs
"""
import argparse
import copy
import datetime
import os
import sys

import torch
import torchvision
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_vs_compile, compare, machine, peak_mib, summarize, write_json  # noqa: E402

import fpnops  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def randomize_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


class Backbone(torch.nn.Module):
    """torchvision ResNet50 up to C5 (no pooling / fc), as a detector uses it."""

    def __init__(self):
        super().__init__()
        self.body = torchvision.models._utils.IntermediateLayerGetter(
            torchvision.models.resnet50(), {"layer4": "c5"})

    def forward(self, x):
        return self.body(x)["c5"]


MODELS = {
    "resnet50": Backbone,
    "resnet50_fpn": lambda: resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5),
}


def flat(y):
    return list(y.values()) if isinstance(y, dict) else [y]


def rel_err(a, b):
    return max(((x.double() - y.double()).norm() / y.double().norm()).item() for x, y in zip(flat(a), flat(b)))


def run_case(name, n, size, dtype, device, layout, rounds, compile_mode):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    eager = randomize_bn(MODELS[name]()).eval()
    ref64 = copy.deepcopy(eager).double().to(device)
    eager = eager.to(device=device, dtype=dtype, memory_format=fmt)
    fused = fpnops.fuse(eager)
    x = torch.randn(n, 3, size, size, device=device).to(dtype).contiguous(memory_format=fmt)
    fns = {"eager": eager, "fpnops": fused}
    if compile_mode:
        torch._dynamo.reset()
        torch._inductor.config.freezing = True
        mode = None if compile_mode == "default" else compile_mode
        fns["compile"] = torch.compile(copy.deepcopy(eager), mode=mode)
    with torch.no_grad():
        ref = ref64(x.double())
        errs = {k: rel_err(m(x), ref) for k, m in fns.items()}  # also warms up / compiles
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        if errs["fpnops"] > tol:
            raise AssertionError(f"fpnops relative error {errs['fpnops']:.2e} > {tol}")
        stats = summarize(compare({k: (lambda m=m: m(x)) for k, m in fns.items()}, device,
                                  rounds=rounds, warmup=1), "eager")
        for k, m in fns.items():
            stats[k]["rel_err_vs_fp64"] = errs[k]
            if device == "cuda":
                stats[k]["peak_MiB"] = peak_mib(lambda m=m: m(x))
    return add_vs_compile(stats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--layout", default="contiguous", choices=["contiguous", "channels_last"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode (with freezing), or 'none' to skip compile")
    p.add_argument("--out")
    args = p.parse_args(argv)
    compile_mode = None if args.compile_mode == "none" else args.compile_mode

    results = []
    print(f"{'case':48s} {'impl':8s} {'median ms':>10s} {'x eager':>8s} {'x compile':>9s} {'rel err':>9s} {'peak MiB':>9s}")
    for name in args.models:
        for dtype in args.dtypes:
            stats = run_case(name, args.batch, args.size, DTYPES[dtype], args.device, args.layout,
                             args.rounds, compile_mode)
            case = f"{name} N={args.batch} {args.size}x{args.size} {dtype} {args.layout}"
            for impl, s in stats.items():
                vc = f"{s['vs_compile']:9.2f}" if "vs_compile" in s else " " * 9
                pk = f"{s['peak_MiB']:9.0f}" if "peak_MiB" in s else " " * 9
                print(f"{case:48s} {impl:8s} {s['median_ms']:10.1f} {s['speedup']:8.2f} {vc} "
                      f"{s['rel_err_vs_fp64']:9.1e} {pk}")
                results.append({"case": case, "model": name, "dtype": dtype, "impl": impl, **s})
    if args.out:
        write_json(args.out, {"benchmark": "backbone", "device": args.device, "command": " ".join(sys.argv),
                              "date": datetime.date.today().isoformat(), "machine": machine(),
                              "compile_mode": args.compile_mode, "results": results})


if __name__ == "__main__":
    main()
