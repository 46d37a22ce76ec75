"""What `python -m fpnops bench` shows and keeps: the table, the JSON file, the bar chart.

JSON schema "fpnops.bench/1" (documented in the README):
  {"schema", "date" (ISO 8601, UTC), "command", "settings": {suites, device, dtypes, batch,
   size [H, W], layout, rounds, warmup, quick, compile_mode}, "machine": {fpnops, torch, cuda,
   triton, python, platform, cpu, cpu_count, cpu_threads, cpu_capability, gpu?, fpnops_backends},
   "copy_GBps" (null if no memory-bound case ran), "results": [row, ...]}
  row: {"suite", "case", "dtype", "impl", "status" ("ok" | "wrong" | "failed"), "note",
        "rel_err" (vs the case's reference; null if failed), "median_ms", "p20_ms", "p80_ms",
        "vs_eager", "vs_compile", "GBps", "pct_of_copy", "peak_MiB", "params"}
  Figures a row does not have are null: timings of a wrong or failed impl, vs_compile without a
  compile baseline, GB/s for compute-bound cases, peak memory on the CPU.
"""
import json

SCHEMA = "fpnops.bench/1"
ROW_KEYS = ("suite", "case", "dtype", "impl", "status", "note", "rel_err", "median_ms", "p20_ms",
            "p80_ms", "vs_eager", "vs_compile", "GBps", "pct_of_copy", "peak_MiB", "params")

_COLUMNS = (("case", 50, "{}"), ("impl", 7, "{}"), ("median ms", 10, "{:.3f}"),
            ("p20-p80 ms", 17, None), ("x eager", 7, "{:.2f}"), ("x compile", 9, "{:.2f}"),
            ("GB/s", 7, "{:.1f}"), ("% copy", 6, "{:.0f}"), ("peak MiB", 8, "{:.0f}"),
            ("rel err", 8, "{:.1e}"))


def header():
    cells = [f"{name:<{w}}" if i < 2 else f"{name:>{w}}" for i, (name, w, _) in enumerate(_COLUMNS)]
    return "  ".join(cells) + "  status"


def format_row(r):
    vals = {"case": f"{r['case']} {r['dtype']}", "impl": r["impl"], "median ms": r["median_ms"],
            "x eager": r["vs_eager"], "x compile": r["vs_compile"], "GB/s": r["GBps"],
            "% copy": r["pct_of_copy"], "peak MiB": r["peak_MiB"], "rel err": r["rel_err"]}
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
    """A horizontal bar chart: each timed impl's speedup over eager, per case, and 1.0 marked."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from e
    rows = [r for r in payload["results"] if r["impl"] != "eager" and r["vs_eager"] is not None]
    cases = list(dict.fromkeys(f"{r['case']} {r['dtype']}" for r in rows))
    colors = {impl: f"C{i}" for i, impl in enumerate(dict.fromkeys(r["impl"] for r in rows))}
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.55 * len(cases)))
    for y, case in enumerate(cases):
        mine = [r for r in rows if f"{r['case']} {r['dtype']}" == case]
        height = 0.8 / len(mine)
        for j, r in enumerate(mine):  # this case's impls side by side around its tick
            bar = ax.barh(y + (j - (len(mine) - 1) / 2) * height, r["vs_eager"], height=height,
                          color=colors[r["impl"]], label=r["impl"])
            ax.bar_label(bar, fmt="%.2fx", fontsize=7, padding=2)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(0, 1.15 * max([r["vs_eager"] for r in rows] + [1.0]))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(cases)), cases, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over eager PyTorch (median; higher is better)")
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_threads']} threads)"
    ax.set_title(f"fpnops bench on {payload['settings']['device']}: {where}\n"
                 f"torch {m['torch']}, {payload['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
