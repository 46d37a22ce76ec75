"""What a transform costs a fused model: the eager model, the fused model (fpnops.fuse) and the
fused model under torch.jit.script, torch.jit.trace and torch.fx.symbolic_trace, timed side by
side (interleaved rounds, medians, CPU float32 inference). Script, trace and FX record the
original modules' math (README "What a fused model supports"), so they cost what eager costs;
this measures how much of the fused speed a user gives up by scripting, tracing or FX-tracing a
fused model instead of calling it (or compiling it).

    python benchmarks/transforms.py --out benchmarks/results/transforms-<cpu>.json
"""
import argparse
import json
import pathlib
import sys
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torchvision  # noqa: E402

import fpnops  # noqa: E402
from fpnops.bench.timing import compare, machine, summarize  # noqa: E402


def _model(name):
    torch.manual_seed(0)
    if name == "resnet50":
        model = torchvision.models.resnet50()
    else:
        from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
        model = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    rows = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation warnings
        for name in ("resnet50", "resnet50_fpn"):
            eager = _model(name)
            fused = fpnops.fuse(eager)
            x = torch.randn(1, 3, args.size, args.size)
            fns = {"eager": lambda: eager(x), "fpnops": lambda: fused(x),
                   "script(fpnops)": torch.jit.script(fused), "trace(fpnops)": torch.jit.trace(fused, x, strict=False),
                   "fx(fpnops)": torch.fx.symbolic_trace(fused)}
            fns = {k: (v if k in ("eager", "fpnops") else (lambda m=v: m(x))) for k, v in fns.items()}
            stats = summarize(compare(fns, "cpu", rounds=args.rounds), "eager")
            for impl, s in stats.items():
                rows.append({"case": f"{name} 1x3x{args.size}x{args.size} float32", "impl": impl, **s})
                print(f"{name:13s} {impl:15s} {s['median_ms']:8.2f} ms  x eager {s['speedup']:.2f}",
                      flush=True)
    if args.out:
        doc = {"command": "python benchmarks/transforms.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine(), "rounds": args.rounds, "results": rows}
        pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
