"""fpnops bench: fpnops side by side with eager PyTorch and torch.compile of it.

Every case runs the eager baseline, torch.compile of that baseline and fpnops' versions in
interleaved rounds after warm-up (CPU timed with perf_counter; CUDA with events around each
call, L2 flushed before it) and reports medians, the 20th-80th percentile spread and ratios.
Each result is checked against the reference before it is timed (float32 on CUDA: TF32 off;
half dtypes: within twice eager's own error); a wrong one is reported as wrong and not timed.
For the FPN neck and the backbones it also reports what a user pays before steady state:
fpnops.fuse() (FusedFPN.from_module), each one's first call (torch.compile's compiling from an
empty cache), and after how many calls compile's start-up is paid back by its steady-state
speed, if ever.
"""
import argparse
import contextlib
import datetime
import logging
import math
import shlex
import sys
import time

import torch

from fpnops.bench import report, suites
from fpnops.bench.timing import (cold_compile_cache, compare_calls, copy_bandwidth, machine, method,
                                 peak_mib, summarize, wall_ms)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Defaults per device: the CPU ones are small enough for a 2-core machine (README "Benchmarks"
# has the measured run time); the CUDA ones are the detector-training shapes of the targets.
DEFAULTS = {"cpu": {"dtype": ["float32"], "batch": 1, "size": "512x512", "layout": "contiguous",
                    "rounds": 5, "warmup": 1},
            "cuda": {"dtype": ["float16"], "batch": 8, "size": "800x800", "layout": "channels_last",
                     "rounds": 20, "warmup": 3}}


def image_size(text):
    """argparse type of --size: N or HxW, each >= 64 (so an FPN has P6)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 64:
        raise argparse.ArgumentTypeError(f"expected N or HxW with N, H, W >= 64 (P6 must exist), got {text!r}")
    return tuple(parts * 2 if len(parts) == 1 else parts)


def positive_int(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def add_arguments(p):
    p.add_argument("--suite", nargs="+", default=["all"], choices=[*suites.SUITES, "all"],
                   help="ops: upsample_add and conv_bn_act alone; fpn: the FPN neck; backbone: "
                        "ResNet50 and ResNet50-FPN inference (default: all)")
    p.add_argument("--device", choices=["cpu", "cuda"],
                   help="default: cuda if a GPU is visible, else cpu")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES),
                   help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--batch", type=positive_int, help="default: 1 on cpu, 8 on cuda")
    p.add_argument("--size", type=image_size, help="input image size, N or HxW (default: 512 on cpu, 800 on cuda)")
    p.add_argument("--layout", choices=["contiguous", "channels_last"],
                   help="memory format (default: contiguous on cpu, channels_last on cuda)")
    p.add_argument("--rounds", type=positive_int, help="timed rounds per case (default: 5 on cpu, 20 on cuda)")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode of the baseline (default, reduce-overhead, "
                        "max-autotune-no-cudagraphs, ...) or 'none' to skip it; backbones compile "
                        "with inductor freezing")
    p.add_argument("--quick", action="store_true",
                   help="fewer cases (P2, P3, one conv, the FPN forward, ResNet50-FPN) and half the rounds: a "
                        "smoke run; most of a run's time is building models and compiling, so it "
                        "saves less time than it drops cases (README: Benchmarks)")
    p.add_argument("--out", metavar="FILE.json", help="write every figure, the machine and the versions")
    p.add_argument("--plot", metavar="FILE.png", help="bar charts of the speedups over eager and of the start-up costs (matplotlib)")


def settings_from(args, parser):
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    d = DEFAULTS[device]
    rounds = args.rounds or (max(2, d["rounds"] // 2) if args.quick else d["rounds"])
    suite_names = list(suites.SUITES) if "all" in args.suite else list(dict.fromkeys(args.suite))
    return {"suites": suite_names, "device": device, "dtypes": args.dtype or d["dtype"],
            "batch": args.batch or d["batch"], "size": list(args.size or image_size(d["size"])),
            "layout": args.layout or d["layout"], "rounds": rounds, "warmup": d["warmup"],
            "quick": args.quick,
            "compile_mode": None if args.compile_mode == "none" else args.compile_mode,
            "timing": method(device)}


def _flat(y):
    if isinstance(y, torch.Tensor):
        return [y]
    return [t for v in (y.values() if isinstance(y, dict) else y) for t in _flat(v)]


def rel_err(got, ref, exact):
    """max over outputs of ||got - ref|| / ||ref||, in float64; exact: inf unless bit-identical."""
    errs = []
    got, ref = _flat(got), _flat(ref)
    if len(got) != len(ref):
        return math.inf
    for a, b in zip(got, ref):
        if a.shape != b.shape:
            return math.inf
        if exact and not torch.equal(a, b):
            return math.inf
        errs.append(((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item())
    return max(errs, default=0.0)


def _row(suite, case, dtype, impl, **figures):
    row = dict.fromkeys(report.ROW_KEYS)
    row.update(suite=suite, case=case.name, dtype=dtype, impl=impl, note="", params=case.params)
    row.update(figures)
    return row


def breakeven_calls(compiled, fused):
    """After how many calls (the first included) compile's total time, setup + first call + a
    median per further call, is no more than fpnops' total: an int, or "never" when compile is
    not faster than fpnops in steady state (its start-up is never paid back)."""
    start_c = (compiled["setup_ms"] or 0.0) + compiled["first_call_ms"]
    start_f = (fused["setup_ms"] or 0.0) + fused["first_call_ms"]
    if start_c <= start_f:
        return 1
    gain = fused["median_ms"] - compiled["median_ms"]  # per call, in steady state
    if gain <= 0:
        return "never"
    return 1 + math.ceil((start_c - start_f) / gain)


def _first_call(impl, fn, case, device):
    """Run (and time) an impl's first call; compile compiles here, under the case's inductor
    config, and for module cases from a cold cache (see timing.cold_compile_cache)."""
    with contextlib.ExitStack() as stack:
        if impl == "compile":
            if case.compile_config:
                stack.enter_context(torch._inductor.config.patch(**case.compile_config))
            if case.setup_ms is not None:
                stack.enter_context(cold_compile_cache())
        return wall_ms(fn, device)


def run_case(suite, case, cfg, dtype, copy_gbps):
    """Check every impl against the case's reference, then time the right ones, interleaved.
    With case.eager_factor, an impl's tol is max(its tol, eager_factor x eager's error) (eager
    runs first), except where it is 0.0 (bit-identical)."""
    rows, timed, first_ms = {}, {}, {}
    expected = case.expected()
    eager_err = None
    for impl, fn in case.impls.items():
        tol = case.tol[impl]
        try:
            got, first_ms[impl] = _first_call(impl, fn, case, cfg["device"])
            err = rel_err(got, expected, exact=tol == 0.0)
        except Exception as e:  # noqa: BLE001  (reported in the table, never hidden)
            rows[impl] = _row(suite, case, dtype, impl, status="failed", tol=tol,
                              note=f"{type(e).__name__}: {e}"[:160])
            continue
        if impl == "eager" and case.eager_factor:
            eager_err = err
        if eager_err is not None and tol != 0.0:
            tol = max(tol, case.eager_factor * eager_err)
        if err > tol:
            what = "not bit-identical" if tol == 0.0 else f"rel err {err:.1e} > {tol:.1e}"
            rows[impl] = _row(suite, case, dtype, impl, status="wrong", note=what, rel_err=err, tol=tol)
        else:
            rows[impl] = _row(suite, case, dtype, impl, status="ok", rel_err=err, tol=tol)
            timed[impl] = fn
    del expected
    if timed:
        samples, calls = compare_calls(timed, cfg["device"], rounds=cfg["rounds"], warmup=cfg["warmup"])
        stats = summarize(samples, next(iter(timed)))
        eager = stats.get("eager", {}).get("median_ms")
        compiled = stats.get("compile", {}).get("median_ms")
        for impl, s in stats.items():
            r = rows[impl]
            r.update(median_ms=s["median_ms"], p20_ms=s["p20_ms"], p80_ms=s["p80_ms"], calls_per_sample=calls[impl])
            r["vs_eager"] = eager / s["median_ms"] if eager else None
            r["vs_compile"] = compiled / s["median_ms"] if compiled else None
            if case.nbytes:
                r["GBps"] = case.nbytes / s["median_ms"] / 1e6
                r["pct_of_copy"] = 100 * r["GBps"] / copy_gbps if copy_gbps else None
            if cfg["device"] == "cuda":
                r["peak_MiB"] = peak_mib(timed[impl])
    if case.setup_ms is not None:
        for impl, r in rows.items():
            if r["status"] == "ok":
                r.update(setup_ms=case.setup_ms.get(impl), first_call_ms=first_ms[impl])
        c, f = rows.get("compile"), rows.get("fpnops")
        if c and f and c["status"] == f["status"] == "ok":
            c["breakeven_calls"] = breakeven_calls(c, f)
    return [rows[impl] for impl in case.impls]


def compile_startup_ms(device):
    """The first torch.compile call of this process, on x + 1 from a cold cache: the imports and
    compiler start-up a user's first compiled model pays once per process (the cases' compile
    first calls come after it, so they do not)."""
    x = torch.ones(8, device=device)
    with cold_compile_cache():
        return wall_ms(lambda: torch.compile(lambda t: t + 1)(x), device)[1]


def run(args, parser=None):
    parser = parser or argparse.ArgumentParser(prog="fpnops bench")
    started = time.perf_counter()
    cfg = settings_from(args, parser)
    # Inductor's CPU codegen loads torch.utils.cpp_extension, which warns about CUDA_HOME on
    # machines without a CUDA runtime: noise between the table's rows.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    with suites.ieee_float32(cfg["device"]) as float32:  # TF32 off on CUDA, restored after
        cfg["float32"] = float32
        return _run(args, cfg, started)


def _run(args, cfg, started):
    device = cfg["device"]
    plan = []
    for dtype in cfg["dtypes"]:
        s = suites.Settings(device, DTYPES[dtype], cfg["batch"], tuple(cfg["size"]), cfg["layout"],
                            cfg["quick"], cfg["compile_mode"])
        plan += [(suite, dtype, label, build) for suite in cfg["suites"] for label, build in suites.cases(suite, s)]
    copy_gbps = copy_bandwidth(device) if "ops" in cfg["suites"] else None
    setup_suites = {"fpn", "backbone"} & set(cfg["suites"])
    startup_ms = compile_startup_ms(device) if cfg["compile_mode"] and setup_suites else None
    m = machine()
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_threads']} threads"
    print(f"fpnops bench on {device} ({where}); torch {m['torch']}; "
          f"N={cfg['batch']}, {cfg['size'][0]}x{cfg['size'][1]}, {cfg['layout']}, {cfg['rounds']} rounds")
    print(f"float32: {cfg['float32']}; timing: {cfg['timing']}")
    if copy_gbps:
        print(f"copy bandwidth: {copy_gbps:.1f} GB/s (read + write)")
    if startup_ms is not None:
        print(f"torch.compile start-up: {startup_ms / 1e3:.2f} s (this process's first compile, of x + 1; "
              "not in the first calls below)")
    print(report.header())
    results = []
    for i, (suite, dtype, label, build) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {suite}: {label} {dtype} ...", file=sys.stderr, flush=True)
        torch._dynamo.reset()  # every case compiles afresh, for its own static shapes
        case = build()
        for r in run_case(suite, case, cfg, dtype, copy_gbps):
            print(report.format_row(r), flush=True)
            results.append(r)
        del case
        if device == "cuda":
            torch.cuda.empty_cache()
    payload = {"schema": report.SCHEMA,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "elapsed_s": time.perf_counter() - started,
               "command": getattr(args, "prog", "fpnops") + " " + shlex.join(getattr(args, "argv", None) or ["bench"]),
               "settings": cfg, "machine": m, "copy_GBps": copy_gbps, "compile_startup_ms": startup_ms,
               "results": results}
    if args.out:
        report.write_json(args.out, payload)
        print(f"wrote {args.out}")
    if args.plot:
        report.plot(args.plot, payload)
        print(f"wrote {args.plot}")
    bad = [r for r in results if r["status"] != "ok"]
    return 1 if bad else 0
