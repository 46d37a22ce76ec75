"""Codegen report per kernel and arch (sm_80, sm_90): static evidence read from SASS, not a
measurement. No GPU needed.

- fpnops' Triton kernels: every variant of fpnops/bench/triton_targets.py (the launchers' own
  launches, compiled for each arch by a stand-in driver);
- fpnops' own CUDA kernels, where fpnops._C was built with CUDA: every kernel found in it for
  the arch, by its demangled name.

Per kernel: registers, spills, shared memory, global access widths, tensor-core instructions,
hot-path instructions per byte and the fraction of H100 HBM bandwidth that issue rate allows
(the model of fpnops/bench/sass.py).

    python benchmarks/codegen_report.py [--out DIR] [--arch 80 90] [--cuda-so PATH] [--bench RUN.json ...]

writes DIR/codegen-sm80.{json,md} and DIR/codegen-sm90.{json,md} (DIR: --out, else $OUT where
that is set, as on the GPU machine, else benchmarks/results). With --bench (files of `fpnops bench
--out` from a GPU), each memory-bound kernel's measured GB/s and share of the copy bandwidth are
joined with the ceiling its SASS allows: the static figure next to the measured one.
"""
import argparse
import importlib.util
import json
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The installed fpnops where there is one (after `pip install .` the source tree has no _C); the
# source tree only where nothing is installed (a checkout built in place).
if importlib.util.find_spec("fpnops") is None:
    sys.path.insert(0, str(ROOT))

# Compiling happens in child processes without TRITON_INTERPRET (triton_targets.compile_in_child).
from fpnops.bench import sass, triton_targets  # noqa: E402

# Kernels whose work is moving memory: their instructions per byte decide their speed.
MEMORY_BOUND_OPS = ("upsample_add", "upsample_add_backward_top")


def model():
    return {
        "what": "static evidence from SASS (cuobjdump), not a measurement",
        "h100_thread_instructions_per_s": sass.H100_THREAD_INSTR_PER_S,
        "h100_hbm_bytes_per_s": sass.H100_HBM_BYTES_PER_S,
        "balance_instructions_per_byte": sass.BALANCE_INSTR_PER_BYTE,
        "memory_bound_budget": sass.MEMORY_BOUND_BUDGET,
        "note": ("132 SMs x 4 schedulers x 1.98 GHz x 32 threads = 3.35e13 thread instructions/s "
                 "against 3.35e12 B/s of HBM3: a hot path above ~10 instructions per byte cannot "
                 "reach the bandwidth; the budget keeps 2x headroom. Both archs' kernels are "
                 "rated against this H100 model (sm_80 code included)."),
    }


def triton_section(arch, records):
    rows = []
    for rec in records:
        row = {k: rec[k] for k in ("name", "op", "dtype", "layout", "tags")}
        if "error" in rec:
            row["error"] = rec["error"]
        else:
            row.update(sass.summary(triton_targets.kernel_of(rec)))
            row.update(shared=rec["shared"], num_warps=rec["num_warps"],
                       num_stages=rec["num_stages"], constexprs=rec["constexprs"],
                       memory_bound=rec["op"] in MEMORY_BOUND_OPS)
        rows.append(row)
    return rows


def cuda_section(arch, so_path=None):
    """fpnops._C's CUDA kernels for sm_<arch>, every one found, by demangled name."""
    if so_path is None:
        from fpnops import _extension
        if not _extension.WITH_CUDA:
            return {"built_with_cuda": False, "kernels": [],
                    "note": "fpnops._C was built without CUDA: no CUDA kernels to report"}
        so_path = _extension._C.__file__
    try:
        found = sass.kernels_of(so_path, f"sm_{arch}")
    except RuntimeError as e:  # cuobjdump finds no code of this arch in the binary
        return {"built_with_cuda": True, "kernels": [], "library": os.path.basename(so_path),
                "note": f"no sm_{arch} code found in {os.path.basename(so_path)}: {e}"}
    rows = []
    for pretty, kernel in sorted(sass.demangle(found).items()):
        row = sass.summary(kernel)
        row["name"] = pretty
        rows.append(row)
    note = "" if rows else f"no sm_{arch} kernels found in {os.path.basename(so_path)}"
    return {"built_with_cuda": True, "library": os.path.basename(so_path), "kernels": rows,
            "note": note}


_LAYOUTS = {"contiguous": "nchw", "channels_last": "nhwc"}  # bench layout -> variant layout


def joined(report, bench_runs):
    """One row per measured memory-bound row of the bench (upsample_add on a GPU): its GB/s and %
    of copy, beside the lowest SASS ceiling among the kernels that can have run it (Triton: the
    variants of its dtype and layout; native: fpnops._C's upsample_add kernels)."""
    rows = []
    for run in bench_runs:
        if run.get("settings", {}).get("device") != "cuda":  # CPU rows have no SASS to set beside
            continue
        layout = _LAYOUTS.get(run.get("settings", {}).get("layout"))
        for r in run.get("results", []):
            if r.get("GBps") is None or r["impl"] not in ("triton", "native") or r["status"] != "ok":
                continue
            if r["impl"] == "triton":
                pool = [k for k in report["triton"] if k["op"] == r["params"]["op"] and k["dtype"] == r["dtype"]
                        and k["layout"] == layout and "error" not in k]
            else:
                pool = [k for k in report["cuda"]["kernels"] if r["params"]["op"] in k["name"]]
            ceilings = [k["h100_bandwidth_ceiling"] for k in pool if k.get("h100_bandwidth_ceiling") is not None]
            rows.append({"case": r["case"], "dtype": r["dtype"], "impl": r["impl"], "layout": layout,
                         "GBps": r["GBps"], "pct_of_copy": r["pct_of_copy"],
                         "sass_ceiling": min(ceilings) if ceilings else None, "kernels": len(pool)})
    return rows


def _joined_table(rows):
    lines = ["| case | dtype | impl | layout | measured GB/s | % of copy | SASS ceiling (H100 model) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ceiling = "-" if r["sass_ceiling"] is None else f"{r['sass_ceiling']:.0%} ({r['kernels']} kernels)"
        pct = "-" if r["pct_of_copy"] is None else f"{r['pct_of_copy']:.0f}%"
        lines.append(f"| {r['case']} | {r['dtype']} | {r['impl']} | {r['layout']} | {r['GBps']:.0f} | {pct} | {ceiling} |")
    return "\n".join(lines)


def _fmt_widths(d):
    return " ".join(f"{n}x{w}" for w, n in sorted(d.items(), key=lambda kv: -int(kv[0][:-1]))) or "-"


def _fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(rows, name_key="name"):
    head = ("| kernel | regs | spills | smem B | loads (count x bits) | stores | tensor core | "
            "hot-path instr/B | H100 BW ceiling |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| `{r[name_key]}` | COMPILE ERROR: {r['error'][:200]} |||||||")
            continue
        name = r[name_key].replace("|", "\\|")  # demangled C++ names may hold operator|
        tc = " ".join(f"{n}x{k}" for k, n in sorted(r["tensor_core"].items())) or "-"
        ceiling = r["h100_bandwidth_ceiling"]
        lines.append(
            f"| `{name}` | {_fmt(r['registers'])} | {r['spills']} | {_fmt(r['shared'])} | "
            f"{_fmt_widths(r['global_loads'])} | {_fmt_widths(r['global_stores'])} | {tc} | "
            f"{_fmt(r['instructions_per_byte'])} | "
            f"{'-' if ceiling is None else f'{ceiling:.0%}'} |")
    return "\n".join(lines)


def markdown(report):
    arch, m = report["arch"], report["model"]
    out = [f"# Codegen report, {arch}: static evidence, not a measurement", "",
           "Read from the SASS of each kernel (cuobjdump; `python benchmarks/codegen_report.py`). "
           f"Model ({m['note']}) Balance {m['balance_instructions_per_byte']:.1f} instructions per "
           f"byte; budget for memory-bound kernels {m['memory_bound_budget']:.1f}. "
           "\"H100 BW ceiling\": the fraction of HBM bandwidth the hot path's issue rate allows "
           "(100%: not issue-bound); meaningful for the memory-bound kernels only (upsample_add "
           "forward and backward), not for GEMMs. Loads and stores: static counts of global "
           "access instructions by width in bits (128: 16-byte vectors; LDGSTS copies count as "
           "loads). Hot path: the main loop, or the whole kernel where there is none.", "",
           "## Triton kernels", "",
           "One row per variant the launchers produce (fpnops/bench/triton_targets.py): "
           "`op/dtype/layout[/path]`, typical FPN/ResNet shapes.", "",
           _table(report["triton"]), "", "## CUDA kernels (fpnops._C)", ""]
    cuda = report["cuda"]
    if cuda["note"]:
        out += [cuda["note"] + ".", ""]
    if cuda["kernels"]:
        out += [_table(cuda["kernels"]), ""]
    if report.get("measured"):
        out += ["## Measured on the GPU beside the static ceiling", "",
                "GB/s from `fpnops bench` (a measurement); the ceiling is the static figure above.", "",
                _joined_table(report["measured"]), ""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--arch", type=int, nargs="+", default=list(triton_targets.ARCHS),
                    choices=triton_targets.ARCHS)
    ap.add_argument("--cuda-so", help="read CUDA kernels from this binary instead of fpnops._C")
    ap.add_argument("--bench", nargs="*", default=[], metavar="RUN.json",
                    help="`fpnops bench --out` files whose memory-bound rows to join with the SASS")
    args = ap.parse_args(argv)
    bench_runs = []
    for path in args.bench:
        try:
            bench_runs.append(json.loads(pathlib.Path(path).read_text()))
        except (OSError, ValueError) as e:  # a bench stage that died: join the others
            print(f"codegen_report: skipping {path}: {e}")
    if sass.cuobjdump() is None:
        sys.exit("codegen_report: no cuobjdump (Triton's wheel ships one; or set CUOBJDUMP)")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = triton_targets.compile_in_child(tmp, archs=tuple(args.arch))
        for arch in args.arch:
            report = {"arch": f"sm_{arch}", "model": model(),
                      "triton": triton_section(arch, compiled[arch]),
                      "cuda": cuda_section(arch, args.cuda_so)}
            report["measured"] = joined(report, bench_runs)
            (out / f"codegen-sm{arch}.json").write_text(json.dumps(report, indent=1) + "\n")
            (out / f"codegen-sm{arch}.md").write_text(markdown(report))
            errors = sum("error" in r for r in report["triton"])
            print(f"sm_{arch}: {len(report['triton'])} Triton variants ({errors} failed), "
                  f"{len(report['cuda']['kernels'])} CUDA kernels -> {out}/codegen-sm{arch}.md")


if __name__ == "__main__":
    main()
