"""FPN neck side by side: FusedFPN vs eager torchvision FeaturePyramidNetwork vs torch.compile of
it, on the ResNet50 pyramid of an 800x800 image (C2..C5: 256@200^2 .. 2048@25^2), with
LastLevelMaxPool as in Faster R-CNN. Forward (inference) and forward+backward (training).

    python benchmarks/bench_fpn.py                                  # CPU: N=1,2; fp32, bf16
    python benchmarks/bench_fpn.py --device cuda --batch 1 8 --layout channels_last --dtypes float16 bfloat16
"""
import argparse
import datetime
import os
import sys
from collections import OrderedDict

import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import add_vs_compile, compare, machine, peak_mib, summarize, write_json  # noqa: E402

import fpnops  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PYRAMID = [(256, 200), (512, 100), (1024, 50), (2048, 25)]  # ResNet50 C2..C5 at 800x800


def inputs(n, dtype, device, layout, requires_grad):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return OrderedDict((str(i), torch.randn(n, c, s, s, dtype=dtype, device=device)
                        .contiguous(memory_format=fmt).requires_grad_(requires_grad))
                       for i, (c, s) in enumerate(PYRAMID))


def run_case(n, dtype, device, layout, mode, rounds, with_compile):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    tv = FeaturePyramidNetwork([c for c, _ in PYRAMID], 256, extra_blocks=LastLevelMaxPool())
    tv = tv.to(device=device, dtype=dtype, memory_format=fmt).train(mode == "fwd+bwd")
    fused = fpnops.FusedFPN.from_module(tv)
    x = inputs(n, dtype, device, layout, mode == "fwd+bwd")
    models = {"eager": tv, "fpnops": fused}
    if with_compile:
        models["compile"] = torch.compile(tv)

    def step(model):
        if mode == "fwd":
            with torch.no_grad():
                return model(x)
        out = model(x)
        sum(v.float().sum() for v in out.values()).backward()
        return out

    with torch.no_grad():  # never time a wrong answer
        ref, got = tv(x), fused(x)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "FusedFPN differs from torchvision"
    fns = {name: (lambda m=m: step(m)) for name, m in models.items()}
    stats = summarize(compare(fns, device, rounds=rounds, warmup=2), "eager")
    if device == "cuda":
        for name, fn in fns.items():
            stats[name]["peak_MiB"] = peak_mib(fn)
    return add_vs_compile(stats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--layout", default="contiguous", choices=["contiguous", "channels_last"])
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--out")
    args = p.parse_args(argv)

    results = []
    print(f"{'case':40s} {'impl':8s} {'median ms':>10s} {'p20-p80 ms':>20s} {'x eager':>8s} {'x compile':>9s}")
    for dtype in args.dtypes:
        for n in args.batch:
            for mode in args.modes:
                stats = run_case(n, DTYPES[dtype], args.device, args.layout, mode, args.rounds,
                                 not args.no_compile)
                case = f"N={n} {dtype} {args.layout} {mode}"
                for impl, s in stats.items():
                    vc = f"{s['vs_compile']:9.2f}" if "vs_compile" in s else " " * 9
                    print(f"{case:40s} {impl:8s} {s['median_ms']:10.2f} "
                          f"{s['p20_ms']:9.2f}-{s['p80_ms']:<10.2f} {s['speedup']:8.2f} {vc}")
                    results.append({"case": case, "batch": n, "dtype": dtype, "mode": mode,
                                    "layout": args.layout, "impl": impl, **s})
    if args.out:
        write_json(args.out, {"benchmark": "fpn_neck", "device": args.device, "command": " ".join(sys.argv),
                              "date": datetime.date.today().isoformat(), "machine": machine(),
                              "results": results})


if __name__ == "__main__":
    main()
