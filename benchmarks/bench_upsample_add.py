"""upsample_add side by side: eager (F.interpolate + add), torch.compile of it, and each fpnops
backend, on the FPN's P2..P5-sized maps. Interleaved rounds, medians, ratios vs eager.

    python benchmarks/bench_upsample_add.py                 # CPU, N=2, C=256, fp32 and bf16
    python benchmarks/bench_upsample_add.py --device cuda --batch 8 --out results.json
"""
import argparse
import datetime
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import compare, copy_bandwidth, machine, summarize, write_json  # noqa: E402

import fpnops  # noqa: E402
from fpnops.ops.upsample_add import upsample_add_reference  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_case(n, c, size, dtype, device, layout, rounds, with_compile):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    lat = torch.randn(n, c, size, size, dtype=dtype, device=device).contiguous(memory_format=fmt)
    top = torch.randn(n, c, (size + 1) // 2, (size + 1) // 2, dtype=dtype, device=device)
    top = top.contiguous(memory_format=fmt)
    ref = upsample_add_reference(top, lat)
    fns = {"eager": lambda: upsample_add_reference(top, lat)}
    if with_compile:
        compiled = torch.compile(upsample_add_reference)
        fns["compile"] = lambda: compiled(top, lat)
    backends = ["native"] if device == "cpu" or fpnops.backends()["cuda"] else []
    if device == "cuda" and fpnops.backends()["triton"]:
        backends.append("triton")
    for b in backends:
        fns[b] = (lambda b=b: fpnops.upsample_add(top, lat, backend=b))
    for name, fn in fns.items():  # never time a wrong answer
        if not torch.equal(fn(), ref):
            raise AssertionError(f"{name} differs from eager for {n}x{c}x{size}^2 {dtype} {layout}")
    inner = 1 if size >= 100 or device == "cpu" else 10
    stats = summarize(compare(fns, device, rounds=rounds, inner=inner), "eager")
    nbytes = (2 * lat.numel() + top.numel()) * lat.element_size()  # fused minimum traffic
    for s in stats.values():
        s["GBps"] = nbytes / s["median_ms"] / 1e6
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 100, 50, 25])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument("--layouts", nargs="+", default=["contiguous", "channels_last"])
    p.add_argument("--rounds", type=int, default=25)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--out", help="write every figure to this JSON file")
    args = p.parse_args(argv)

    results = []
    copy_gbps = copy_bandwidth(args.device)
    print(f"copy bandwidth ({args.device}): {copy_gbps:.1f} GB/s (read + write)")
    print(f"{'case':44s} {'impl':8s} {'median ms':>10s} {'p20-p80 ms':>16s} {'x eager':>8s} "
          f"{'GB/s':>7s} {'% copy':>7s}")
    for dtype in args.dtypes:
        for layout in args.layouts:
            for size in args.sizes:
                stats = run_case(args.batch, args.channels, size, DTYPES[dtype], args.device,
                                 layout, args.rounds, not args.no_compile)
                case = f"N={args.batch} C={args.channels} {size}x{size} {dtype} {layout}"
                for impl, s in stats.items():
                    s["pct_of_copy"] = 100 * s["GBps"] / copy_gbps
                    print(f"{case:44s} {impl:8s} {s['median_ms']:10.3f} "
                          f"{s['p20_ms']:7.3f}-{s['p80_ms']:<8.3f} {s['speedup']:8.2f} "
                          f"{s['GBps']:7.1f} {s['pct_of_copy']:7.1f}")
                    results.append({"case": case, "size": size, "dtype": dtype, "layout": layout,
                                    "impl": impl, **s})
    if args.out:
        write_json(args.out, {"benchmark": "upsample_add", "device": args.device,
                              "command": " ".join(sys.argv), "machine": machine(),
                              "date": datetime.date.today().isoformat(), "copy_GBps": copy_gbps,
                              "results": results})
    return results


if __name__ == "__main__":
    main()
