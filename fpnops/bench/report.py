"""What `python -m fpnops bench` shows and keeps: the table, the JSON file, the bar chart.

JSON schema "fpnops.bench/3" (documented key by key in the README):
  {"schema", "date" (ISO 8601, UTC), "elapsed_s", "command", "settings": {suites, device, dtypes, batch,
   size [H, W], layout, rounds, warmup, quick, compile_mode, timing, float32}, "machine": {fpnops, torch, cuda,
   triton, python, platform, cpu, cpu_count, cpu_threads, cpu_capability, gpu?, fpnops_backends},
   "copy_GBps" (null if no memory-bound case ran), "compile_startup_ms" (null without compile or
   module cases), "results": [row, ...]}
  row: {"suite", "case", "dtype", "impl", "status" ("ok" | "wrong" | "failed"), "note",
        "rel_err" (vs the case's reference; null if failed), "tol" (the most rel_err may be; 0.0:
        bit-identical), "median_ms", "p20_ms", "p80_ms", "calls_per_sample", "vs_eager", "vs_compile", "GBps", "pct_of_copy", "peak_MiB", "setup_ms", "first_call_ms",
        "breakeven_calls", "params"}
  Figures a row does not have are null: timings of a wrong or failed impl, vs_compile without a
  compile baseline, GB/s for compute-bound cases, peak memory on the CPU, setup figures of the
  ops suite. /1 -> /2: elapsed_s, compile_startup_ms, setup_ms, first_call_ms, breakeven_calls.
  /2 -> /3: settings.timing, settings.float32, tol, calls_per_sample; CUDA rows are timed per
  call with L2 flushed and float32 rows without TF32 (/2 timed one call after a sync, in TF32).
"""
import json

SCHEMA = "fpnops.bench/3"
ROW_KEYS = ("suite", "case", "dtype", "impl", "status", "note", "rel_err", "tol", "median_ms", "p20_ms",
            "p80_ms", "calls_per_sample", "vs_eager", "vs_compile", "GBps", "pct_of_copy", "peak_MiB", "setup_ms",
            "first_call_ms", "breakeven_calls", "params")

_COLUMNS = (("case", 50, "{}"), ("impl", 7, "{}"), ("median ms", 10, "{:.3f}"),
            ("p20-p80 ms", 17, None), ("x eager", 7, "{:.2f}"), ("x compile", 9, "{:.2f}"),
            ("GB/s", 7, "{:.1f}"), ("% copy", 6, "{:.0f}"), ("peak MiB", 8, "{:.0f}"),
            ("rel err", 8, "{:.1e}"), ("tol", 7, "{}"), ("setup s", 7, "{:.2f}"), ("1st call s", 10, "{:.2f}"),
            ("pays back", 9, "{}"))


def header():
    cells = [f"{name:<{w}}" if i < 2 else f"{name:>{w}}" for i, (name, w, _) in enumerate(_COLUMNS)]
    return "  ".join(cells) + "  status"


def format_row(r):
    vals = {"case": f"{r['case']} {r['dtype']}", "impl": r["impl"], "median ms": r["median_ms"],
            "x eager": r["vs_eager"], "x compile": r["vs_compile"], "GB/s": r["GBps"],
            "% copy": r["pct_of_copy"], "peak MiB": r["peak_MiB"], "rel err": r["rel_err"],
            "tol": None if r["tol"] is None else "exact" if r["tol"] == 0.0 else f"{r['tol']:.1e}",
            "setup s": None if r["setup_ms"] is None else r["setup_ms"] / 1e3,
            "1st call s": None if r["first_call_ms"] is None else r["first_call_ms"] / 1e3,
            "pays back": r["breakeven_calls"]}
    cells = []
    for i, (name, w, fmt) in enumerate(_COLUMNS):
        if name == "p20-p80 ms":
            text = f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f}" if r["p20_ms"] is not None else ""
        else:
            v = vals[name]
            text = "" if v is None else fmt.format(v)
        cells.append(f"{text:<{w}}" if i < 2 else f"{text:>{w}}")
    status = r["status"] + (f" ({r['note']})" if r["note"] else "")
    return "  ".join(cells) + "  " + status


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")


def plot(path, payload):
    """Horizontal bar charts: each timed impl's speedup over eager, per case, 1.0 marked; and,
    when module cases ran, what each impl costs before its steady state (setup + first call)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from e
    rows = [r for r in payload["results"] if r["impl"] != "eager" and r["vs_eager"] is not None]
    starts = [r for r in payload["results"] if r["first_call_ms"] is not None]
    impls = dict.fromkeys(r["impl"] for r in rows + starts)
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    n_speed = len(dict.fromkeys(_label(r) for r in rows))
    n_start = len(dict.fromkeys(_label(r) for r in starts))
    heights = [1.2 + 0.55 * n for n in (n_speed, n_start) if n]
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    axes = list(axes[:, 0])
    if n_speed:
        ax = axes.pop(0)
        _bars(ax, rows, colors, lambda r: r["vs_eager"], "%.2fx", pays_back=False)
        ax.set_xlim(0, 1.15 * max([r["vs_eager"] for r in rows] + [1.0]))
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("speedup over eager PyTorch (median; higher is better)")
        m = payload["machine"]
        where = m.get("gpu") or f"{m['cpu']} ({m['cpu_threads']} threads)"
        ax.set_title(f"fpnops bench on {payload['settings']['device']}: {where}\n"
                     f"torch {m['torch']}, {payload['date'][:10]}", fontsize=9)
    if n_start:
        ax = axes.pop(0)
        total = lambda r: ((r["setup_ms"] or 0) + r["first_call_ms"]) / 1e3  # noqa: E731
        _bars(ax, starts, colors, total, "%.2f s", pays_back=True)
        ax.set_xscale("log")
        ax.set_xlim(0.5 * min(map(total, starts)), 30 * max(map(total, starts)))  # room for labels
        ax.set_xlabel("before steady state, s (log): setup (fuse / from_module) + first call; "
                      "compile: first call from an empty cache")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(r):
    return f"{r['case']} {r['dtype']}"


def _bars(ax, rows, colors, value, fmt, pays_back):
    """One group of bars per case, one bar per impl, labelled with fmt % value (and, with
    pays_back, compile's breakeven)."""
    cases = list(dict.fromkeys(_label(r) for r in rows))
    for y, case in enumerate(cases):
        mine = [r for r in rows if _label(r) == case]
        height = 0.8 / len(mine)
        for j, r in enumerate(mine):  # this case's impls side by side around its tick
            v = value(r)
            bar = ax.barh(y + (j - (len(mine) - 1) / 2) * height, v, height=height,
                          color=colors[r["impl"]], label=r["impl"])
            text = fmt % v
            if pays_back and r["breakeven_calls"] is not None:
                text += f" (pays back: {r['breakeven_calls']}{' calls' if r['breakeven_calls'] != 'never' else ''})"
            ax.bar_label(bar, labels=[text], fontsize=7, padding=2)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_yticks(range(len(cases)), cases, fontsize=8)
    ax.invert_yaxis()
