"""Winograd F(4x4, 3x3) (fpnops::conv3x3_winograd) against oneDNN's direct convolution on the
same prepacked terms the fused modules use, for every 3x3 stride-1 conv shape of ResNet50 and
ResNet34 at the benchmark's inputs (N=1 512x512, N=2 800x800): medians of interleaved rounds and
the ratio (above 1.0: Winograd faster), with each one's error against float64. This is where
fpnops/ops/winograd.py's MIN_CHANNELS comes from.

    python benchmarks/winograd.py --out benchmarks/results/winograd-cpu-2core.json
"""
import argparse
import json
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fpnops.bench.timing import compare, machine  # noqa: E402
from fpnops.ops.winograd import conv3x3_winograd, winograd_weight  # noqa: E402

# (N, channels, side): ResNet layer1..4's 3x3 convs (in = out channels) at stride 4..32.
SHAPES = [(n, c, size // s) for n, size in ((1, 512), (2, 800))
          for c, s in ((64, 4), (128, 8), (256, 16), (512, 32))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    rows = []
    with torch.no_grad():
        for n, c, side in SHAPES:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, c, side, side, generator=g).contiguous(memory_format=torch.channels_last)
            w = torch.randn(c, c, 3, 3, generator=g) / (3 * c ** 0.5)
            b = torch.randn(c, generator=g)
            packed = torch.ops.mkldnn._reorder_convolution_weight(w, [1, 1], [1, 1], [1, 1], 1, list(x.shape))
            v = winograd_weight(w)
            fns = {"direct": lambda: torch.ops.fpnops.conv_bn_act_cpu_prepacked(
                       x, packed, b, [1, 1], [1, 1], [1, 1], 1, None, True),
                   "winograd": lambda: conv3x3_winograd(x, v, b, None, True)}
            ref = F.conv2d(x.double(), w.double(), b.double(), padding=1).clamp_min(0)
            err = {k: ((f().double() - ref).norm() / ref.norm()).item() for k, f in fns.items()}
            med = {k: statistics.median(s) for k, s in compare(fns, "cpu", rounds=args.rounds).items()}
            row = {"n": n, "channels": c, "side": side, "direct_ms": med["direct"],
                   "winograd_ms": med["winograd"], "speedup": med["direct"] / med["winograd"],
                   "rel_err_direct": err["direct"], "rel_err_winograd": err["winograd"]}
            rows.append(row)
            print(f"N={n} C={c:3d} {side:3d}x{side:<3d} direct {row['direct_ms']:7.2f} ms  "
                  f"winograd {row['winograd_ms']:7.2f} ms  {row['speedup']:.2f}x  rel err "
                  f"{err['direct']:.1e} / {err['winograd']:.1e}", flush=True)
    if args.out:
        doc = {"command": "python benchmarks/winograd.py " + " ".join(argv or sys.argv[1:]),
               "machine": machine(), "rounds": args.rounds, "results": rows}
        pathlib.Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
