"""Writes every measured figure of README.md from the committed results files.

    python benchmarks/readme_figures.py           # rewrite the README's figure blocks
    python benchmarks/readme_figures.py --check   # exit 1 if the README and the files disagree
    python benchmarks/readme_figures.py --commands  # the commands that write those files

A figure block in the README is `<!-- figure NAME -->...<!-- /figure -->` (a whole section or a
few words inside a sentence); this script owns what is between the markers and writes it from
benchmarks/results/, naming the file, the command, the date and the spread of each figure.
tests/test_readme.py runs the check in CI, and fails on measured-looking figures (speedups,
times, percentages) outside the blocks.

The results files and the commands that write them (REGENERATE below; run them on a quiet
machine, then this script, and commit the README with them). A file that is missing, or older
than the fields a block needs (a bench file of schema /1 has no setup costs), renders as a
sentence saying so and naming the command.
"""
import argparse
import difflib
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "benchmarks/results"
BLOCK = re.compile(r"<!-- figure ([\w-]+) -->(.*?)<!-- /figure -->", re.S)


REGENERATE = {
    "cpu-2core.json": "fpnops bench --out benchmarks/results/cpu-2core.json --plot benchmarks/results/cpu-2core.png",
    "cpu-2core-quick.json": "fpnops bench --quick --out benchmarks/results/cpu-2core-quick.json",
    "cpu-2core-bf16.json": ("fpnops bench --dtype bfloat16 --suite ops --out benchmarks/results/cpu-2core-bf16.json "
                            "--plot benchmarks/results/cpu-2core-bf16.png"),
    "demo-cpu-2core/demo.json": "fpnops demo --out benchmarks/results/demo-cpu-2core",
    "install-cpu-2core.json": "python benchmarks/install_cost.py --tests --out benchmarks/results/install-cpu-2core.json",
    "transforms-epyc-avx512.json": "python benchmarks/transforms.py --rounds 15 --out benchmarks/results/transforms-epyc-avx512.json",
    "winograd-points-xeon-amx.json": ("python benchmarks/winograd_points.py "
                                      "--out benchmarks/results/winograd-points-xeon-amx.json"),
}


def load(name):
    """The results file's dict, or None if it is not there."""
    path = os.path.join(ROOT, RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def not_measured(name, what, data=None):
    """The sentence a block holds until `name` has what it needs."""
    why = (f"`{RESULTS}/{name}` is not committed yet" if data is None else
           f"the committed `{RESULTS}/{name}` ({data.get('schema', 'no schema')}, "
           f"{when(data) if data.get('date') else 'undated'}) predates it")
    return f"not measured yet: {what}; {why} (`{REGENERATE[name]}`)"


def rows_by_case(data):
    """{case label: {impl: row}} in the file's order."""
    out = {}
    for r in data["results"]:
        out.setdefault(f"{r['case']} {r['dtype']}", {})[r["impl"]] = r
    return out


def ms(r):
    return f"{r['median_ms']:.2f}" if r and r.get("median_ms") is not None else "-"


def spread(r):
    """p20-p80 as a percentage of the median: (p80 - p20) / median."""
    return 100 * (r["p80_ms"] - r["p20_ms"]) / r["median_ms"]


def ratio(x):
    return "-" if x is None else f"{x:.2f}"


def seconds(x_ms):
    if x_ms is None:
        return "-"
    return "<0.01" if x_ms < 10 else f"{x_ms / 1e3:.2f}"


def gb(n):
    return f"{n / 1e9:.2f} GB"


def when(data):
    return data["date"][:10]


# --- the figures ------------------------------------------------------------------------------

def bench_source(data, name):
    m, st = data["machine"], data["settings"]
    threads = f"{m['cpu_threads']} thread{'s' * (m['cpu_threads'] != 1)}"
    elapsed = f", {data['elapsed_s']:.0f} s in all" if data.get("elapsed_s") is not None else ""
    return (f"`{RESULTS}/{name}` (`.png`): `{data['command']}` on {m['cpu']} ({m['cpu_count']} cores, "
            f"{threads}, {m['cpu_capability']}), torch {m['torch']}, {when(data)}; N={st['batch']}, "
            f"{st['size'][0]}x{st['size'][1]}, {st['layout']}, medians of {st['rounds']} interleaved "
            f"rounds{elapsed}")


def bench_time(data):
    return f"{data['elapsed_s'] / 60:.1f} minutes"


def results_table(data):
    """Medians with their p20-p80 spread, ratios, GB/s, one line per case."""
    lines = ["| case | eager ms | compile ms | fpnops ms (p20-p80) | fpnops x eager | fpnops x compile | fpnops GB/s (% of copy) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for case, impls in rows_by_case(data).items():
        f = impls.get("fpnops") or impls.get("native")
        if f is None or f.get("median_ms") is None:
            continue
        bw = f"{f['GBps']:.1f} ({f['pct_of_copy']:.0f}%)" if f.get("GBps") else ""
        lines.append(f"| {case} | {ms(impls.get('eager'))} | {ms(impls.get('compile'))} | "
                     f"{ms(f)} ({f['p20_ms']:.2f}-{f['p80_ms']:.2f}) | {ratio(f['vs_eager'])} | "
                     f"{ratio(f['vs_compile'])} | {bw} |")
    return "\n".join(lines)


def setup_table(data):
    """What each impl costs before steady state, for the module cases."""
    lines = ["| case | fuse / from_module s | fpnops 1st call s | compile 1st call s (empty cache) | "
             "eager 1st call s | compile pays back after |", "| --- | --- | --- | --- | --- | --- |"]
    for case, impls in rows_by_case(data).items():
        f, c, e = impls.get("fpnops"), impls.get("compile"), impls.get("eager")
        if not f or f.get("first_call_ms") is None:
            continue
        pays = c.get("breakeven_calls") if c else None
        pays = "-" if pays is None else ("never (fpnops is as fast or faster)" if pays == "never"
                                         else f"{pays} calls")
        lines.append(f"| {case} | {seconds(f['setup_ms'])} | {seconds(f['first_call_ms'])} | "
                     f"{seconds(c and c.get('first_call_ms'))} | {seconds(e and e.get('first_call_ms'))} | {pays} |")
    return "\n".join(lines)


def max_spread(data):
    timed = [r for r in data["results"] if r.get("median_ms")]
    worst = max(timed, key=spread)
    return f"{spread(worst):.0f}% ({worst['case']}, {worst['impl']})"


def run_to_run(d, case_prefix):
    """fpnops' ratios to eager and to compile in each whole run of a compare_builds file."""
    rows = {r["impl"]: r for r in d["rows"] if r["case"].startswith(case_prefix)}
    f = rows["fpnops"]["after_runs_ms"]
    vs = {}
    for base in ("eager", "compile"):
        if base in rows:
            rs = [b / x for b, x in zip(rows[base]["after_runs_ms"], f)]
            vs[base] = f"{min(rs):.2f}-{max(rs):.2f}x {base}"
    return f"{len(f)} runs: " + ", ".join(vs.values())


def runs_block(d, name):
    """fpnops' run-to-run ratios for both backbones in the 'after' runs of a compare_builds file."""
    r50, fpn = run_to_run(d, "resnet50 "), run_to_run(d, "resnet50_fpn ")
    head, _, r50 = r50.partition(": ")
    return (f"{head}: ResNet50 {r50}; ResNet50-FPN {fpn.partition(': ')[2]} (`{name}`, the 'after' "
            f"tree, the current code: `{d['command']}`)")


def summary(data):
    c = rows_by_case(data)
    pick = {k.split(" ")[0] if not k.startswith("FPN") else "fpn_fwd": v for k, v in c.items()
            if k.startswith(("resnet50 ", "resnet50_fpn ", "FPN neck fwd "))}
    parts = []
    for key, label in (("fpn_fwd", "the FPN neck (forward)"), ("resnet50", "ResNet50"),
                       ("resnet50_fpn", "ResNet50-FPN")):
        f = pick[key]["fpnops"]
        parts.append(f"{label} {f['vs_eager']:.2f}x eager and {f['vs_compile']:.2f}x torch.compile")
    return "; ".join(parts)


def setup_summary(data):
    """The ResNet50-FPN setup costs in one sentence."""
    impls = next(v for k, v in rows_by_case(data).items() if k.startswith("resnet50_fpn "))
    f, c = impls["fpnops"], impls["compile"]
    pays = c["breakeven_calls"]
    pays = ("is never paid back: fpnops is as fast or faster per call" if pays == "never" else
            f"is paid back after {pays} calls")
    startup = data.get("compile_startup_ms")
    extra = (f" (plus {startup / 1e3:.1f} s once per process for torch.compile's own start-up, "
             "measured on `x + 1`)" if startup is not None else "")
    return (f"ResNet50-FPN: `fpnops.fuse` took {f['setup_ms'] / 1e3:.2f} s and the fused model's first "
            f"call {f['first_call_ms'] / 1e3:.2f} s (folding, prepacking), against "
            f"{c['first_call_ms'] / 1e3:.1f} s for torch.compile's first call from an empty "
            f"cache{extra}; at the medians above, compile's start {pays}")


def bf16(data):
    c = rows_by_case(data)
    ups = [v["native"] for k, v in c.items() if k.startswith("upsample_add")]
    convs = [v for k, v in c.items() if k.startswith("conv_bn_act")]
    ve = [v["native"]["vs_eager"] for v in convs]
    vc = [v["native"]["vs_compile"] for v in convs]
    eager_s = [v["eager"]["median_ms"] / 1e3 for v in convs]
    return (f"bfloat16 (`{data['command']}`, `{RESULTS}/cpu-2core-bf16.json`/`.png`, {when(data)}): "
            f"upsample_add {min(r['vs_eager'] for r in ups):.2f}-{max(r['vs_eager'] for r in ups):.2f}x eager "
            f"(bit-identical); conv_bn_act {min(ve):.0f}-{max(ve):.0f}x eager and "
            f"{min(vc):.1f}-{max(vc):.1f}x torch.compile, because on this AVX2 CPU oneDNN's bf16 "
            f"convolution is a slow reference loop ({min(eager_s):.1f}-{max(eager_s):.1f} s per eager "
            "conv) and fpnops computes such convs in float32, rounding once")


def demo(data, name):
    t = data["timing"]
    r, f = t["reference"], t["fused"]
    worst = max(lv["rel_err"] for lv in data["levels"].values())
    date = f", {data['date'][:10]}" if data.get("date") else ""
    return (f"`{data['command']}`{date}, {data['size'][0]}x{data['size'][1]}: every level within "
            f"{worst:.1e} of the reference; reference {r['median_ms']:.0f} ms (p20-p80 "
            f"{r['p20_ms']:.0f}-{r['p80_ms']:.0f}), fused {f['median_ms']:.0f} ms "
            f"({f['p20_ms']:.0f}-{f['p80_ms']:.0f}), {f['speedup']:.2f}x, medians of {t['rounds']} "
            f"interleaved rounds (`{RESULTS}/{name}/demo.json`)")


def install(data):
    b, d = data["builds"], data["download"]
    m = data["machine"]
    lines = [f"Measured on {m['cpu']} ({m['cpu_count']} cores, shared with other work: the load column "
             f"is the 1-minute load average before and after each step: a build keeps both cores busy by itself, about 2; more is other work), "
             f"Python {m['python']}, pip {m['pip']}, {data['date'][:10]} (`{data['command']}`, "
             f"`{RESULTS}/install-cpu-2core.json`):", "",
             "| step | cost | load |", "| --- | --- | --- |",
             f"| download: {' + '.join(d['requested'])} and their dependencies, Linux x86-64 wheels "
             f"| {gb(d['bytes'])} in {d['packages']} wheels ({gb(d['cuda_libraries_bytes'])} of them "
             "CUDA libraries and Triton) | |",
             f"| installed in the environment | {gb(data['installed_bytes'])} | |"]

    def load_(v):
        return f"{v['load_before'][0]:.1f} -> {v['load_after'][0]:.1f}"
    names = {"cuda": "build, CPU + CUDA kernels, default archs (8.0;9.0+PTX with no GPU visible)",
             "cuda-9.0": "build, CPU + CUDA kernels, one arch (`TORCH_CUDA_ARCH_LIST=9.0`)",
             "cpu": "build, CPU kernels only (`FPNOPS_BUILD_CUDA=0`)"}
    for key, label in names.items():
        if key in b:
            lines.append(f"| {label} | {b[key]['seconds'] / 60:.1f} min | {load_(b[key])} |")
    if "tests" in data:
        t = data["tests"]
        lines.append(f"| tests, `{t['command']}` ({t['summary']}) | {t['seconds'] / 60:.1f} min | {load_(t)} |")
    else:
        lines.append("| tests | " + not_measured("install-cpu-2core.json", "the test suite's time", data) + " | |")
    return "\n".join(lines)


def build_one_arch(data):
    b = data["builds"]
    one, default = b.get("cuda-9.0"), b.get("cuda")
    if not one or not default:
        return not_measured("install-cpu-2core.json", "the CUDA builds' times", data)
    return (f"{one['seconds'] / 60:.1f} min for one arch against {default['seconds'] / 60:.1f} min for the "
            f"default archs, at 1-minute load averages of {one['load_before'][0]:.1f} and "
            f"{default['load_before'][0]:.1f} when each started")


def setup_block(cpu):
    if not any(r.get("first_call_ms") is not None for r in cpu["results"]):
        return "\n" + not_measured("cpu-2core.json", "the start-up costs (fuse, first calls, cold compile, "
                                   "pay-back)", cpu) + ".\n"
    return "\n" + setup_table(cpu) + "\n\n" + setup_summary(cpu) + ".\n"


def quick_time(quick, cpu):
    if not quick or quick.get("elapsed_s") is None:
        return not_measured("cpu-2core-quick.json", "the time of a --quick run", quick)
    default = (f" against {cpu['elapsed_s']:.0f} s for the default run (`cpu-2core.json`)"
               if cpu.get("elapsed_s") is not None else "")
    return (f"{quick['elapsed_s']:.0f} s (`cpu-2core-quick.json`){default}: most of a run is building "
            "models and compiling")


def winograd_points(d, name):
    """The point-set study's summary: the current set (as the kernel runs it) against the
    recommended one, with the CPU, date and command."""
    if d is None:
        return not_measured(name, "the Winograd point-set study")
    sets = {p["name"]: p for p in d["point_sets"]}
    cur, rec = d["summary"]["0,+-1,+-2 [kernel]"], d["summary"][d["recommended"]["name"] + " [primary]"]
    # subnormal inputs are bounded by an absolute term instead (fpnops/ops/winograd.py)
    worst = lambda s: max(c["c_tile"] for k, c in s.items() if not k.startswith("denormal"))  # noqa: E731
    p = sets["0,+-1,+-2"]
    kernel_ops = 12 * p["kernel_bt_ops"]["total"] + 10 * p["kernel_at_ops"]["total"]
    r = sets[d["recommended"]["name"]]["per_tile_ops"]
    flags = ", ".join(d["cpu_flags"])
    return (f"`{RESULTS}/{name}` (`{d['command']}`), {d['cpu_model']} ({flags}), {d['date'][:10]}: "
            f"ours has a norm-wise error of {cur['normal C=64']['norm_err']:.2e} at 64 channels and "
            f"a tile constant c of at most {worst(cur):.1e} over the normal-range cases; "
            f"{d['recommended']['name'].replace(',', ', ')} has {rec['normal C=64']['norm_err']:.2e} "
            f"and {worst(rec):.1e}, for {r['input_per_channel'] + r['output_per_channel']} transform "
            f"operations per tile and channel against our kernel's {kernel_ops} "
            f"({p['cost']} for our points with shared subexpressions)")


def transforms(d, name):
    """What script, trace and FX cost a fused model (their graphs fold at every call)."""
    if d is None:
        return not_measured(name, "what scripting, tracing and FX-tracing a fused model cost")
    rows = {(r["case"], r["impl"]): r for r in d["results"]}
    parts = []
    for case in dict.fromkeys(r["case"] for r in d["results"]):
        cell = lambda impl: rows[(case, impl)]["speedup"]  # noqa: E731
        parts.append(f"{case.split()[0]}: fused {cell('fpnops'):.2f}x eager, scripted "
                     f"{cell('script(fpnops)'):.2f}x, traced {cell('trace(fpnops)'):.2f}x, FX "
                     f"{cell('fx(fpnops)'):.2f}x")
    m = d["machine"]
    return (f"`{RESULTS}/{name}` (`{d['command']}`), {m['cpu']} (ATen's {m.get('cpu_capability', '')} "
            f"kernels, {m.get('cpu_threads', '')} threads), {d['results'][0]['case'].split()[1]}, "
            f"medians of {d['rounds']} interleaved rounds: " + "; ".join(parts))


def figures(load=load):
    """{block name: its text} from the results files (`load(name)`: a file's dict, or None)."""
    cpu, quick, install_ = load("cpu-2core.json"), load("cpu-2core-quick.json"), load("install-cpu-2core.json")
    rn50 = next(v for k, v in rows_by_case(cpu).items() if k.startswith("resnet50 "))
    return {
        "bench-time": (bench_time(cpu) if cpu.get("elapsed_s") is not None else
                       not_measured("cpu-2core.json", "the run's wall time", cpu)),
        "quick-time": quick_time(quick, cpu),
        "bench-cpu-source": bench_source(cpu, "cpu-2core.json") + (
            f"; copy bandwidth {cpu['copy_GBps']:.1f} GB/s" if cpu.get("copy_GBps") else ""),
        "bench-cpu-table": "\n" + results_table(cpu) + "\n",
        "bench-cpu-setup": setup_block(cpu),
        "bench-cpu-summary": summary(cpu),
        "bench-cpu-spread": max_spread(cpu),
        "bench-cpu-runs": runs_block(load("issue11-winograd-before-after-cpu-2core.json"),
                                     "issue11-winograd-before-after-cpu-2core.json"),
        "bench-cpu-bf16": bf16(load("cpu-2core-bf16.json")),
        "resnet-rel-err": f"{rn50['fpnops']['rel_err']:.1e}",
        "demo": demo(load("demo-cpu-2core/demo.json"), "demo-cpu-2core"),
        "install": "\n" + install(install_) + "\n",
        "build-one-arch": build_one_arch(install_),
        "transforms": transforms(load("transforms-epyc-avx512.json"), "transforms-epyc-avx512.json"),
        "winograd-points": winograd_points(load("winograd-points-xeon-amx.json"),
                                           "winograd-points-xeon-amx.json"),
    }


def render(text, values=None):
    """text with every figure block rewritten; a KeyError names a block this script lacks."""
    values = figures() if values is None else values
    return BLOCK.sub(lambda m: f"<!-- figure {m.group(1)} -->{values[m.group(1)]}<!-- /figure -->", text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    p.add_argument("--commands", action="store_true",
                   help="print the commands that write the results files the README uses, and exit")
    args = p.parse_args()
    if args.commands:
        print("\n".join(REGENERATE.values()))
        return 0
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    new = render(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                       "README.md", "README.md (from the results)"))
            print("README.md disagrees with benchmarks/results: run python benchmarks/readme_figures.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        with open(path, "w") as f:
            f.write(new)
        print("rewrote README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
