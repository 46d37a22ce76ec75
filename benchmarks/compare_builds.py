"""Before/after: `python -m fpnops bench` of two fpnops source trees (each built in place),
alternated run by run on one machine, so both meet the same load; prints per case the median
over runs of each tree's median, and after/before both in ms and in the ratio to eager of the
same run (which cancels most of a shared machine's drift).

    python benchmarks/compare_builds.py BEFORE_TREE AFTER_TREE --runs 3 -- --suite ops backbone
    python benchmarks/compare_builds.py /tmp/base . --out benchmarks/results/before-after.json

Arguments after `--` go to `fpnops bench`. Each run is a fresh interpreter with PYTHONPATH set
to its tree, started outside both trees.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def run_bench(tree, bench_args, out):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    cmd = [sys.executable, "-m", "fpnops", "bench", *bench_args, "--out", out]
    proc = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_builds: bench failed in {tree}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    with open(out) as f:
        return json.load(f)


def collect(runs):
    """{(suite, case, impl): [median_ms per run]} and {(suite, case, impl): [median / eager's]}."""
    ms, vs_eager = {}, {}
    for doc in runs:
        eager = {(r["suite"], r["case"], r["dtype"]): r["median_ms"] for r in doc["results"]
                 if r["impl"] == "eager" and r["status"] == "ok"}
        for r in doc["results"]:
            if r["status"] != "ok":
                continue
            key = (r["suite"], f'{r["case"]} {r["dtype"]}', r["impl"])
            ms.setdefault(key, []).append(r["median_ms"])
            base = eager.get((r["suite"], r["case"], r["dtype"]))
            if base:
                vs_eager.setdefault(key, []).append(r["median_ms"] / base)
    return ms, vs_eager


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="source tree of the build before (fpnops/_C built in place)")
    p.add_argument("after", help="source tree of the build after")
    p.add_argument("--runs", type=int, default=3, help="bench runs per tree, alternated (default 3)")
    p.add_argument("--out", help="write every run's figures and the summary here (JSON)")
    args = p.parse_args(own)
    docs = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for name in ("before", "after"):
                print(f"[{2 * i + (name == 'after') + 1}/{2 * args.runs}] {name}: {getattr(args, name)}",
                      file=sys.stderr, flush=True)
                docs[name].append(run_bench(getattr(args, name), bench_args,
                                            os.path.join(tmp, f"{name}-{i}.json")))
    (b_ms, b_rel), (a_ms, a_rel) = collect(docs["before"]), collect(docs["after"])
    med = statistics.median
    rows = []
    print(f"{'case':62s} {'impl':8s} {'before ms':>10s} {'after ms':>10s} {'after/before':>12s} "
          f"{'(x eager)':>10s}")
    for key in b_ms:
        if key not in a_ms:
            continue
        row = {"suite": key[0], "case": key[1], "impl": key[2], "before_ms": med(b_ms[key]),
               "after_ms": med(a_ms[key]), "before_runs_ms": b_ms[key], "after_runs_ms": a_ms[key]}
        row["after_over_before"] = row["after_ms"] / row["before_ms"]
        rel = None
        if key[2] != "eager" and key in b_rel and key in a_rel:
            rel = row["after_over_before_vs_eager"] = med(a_rel[key]) / med(b_rel[key])
        rows.append(row)
        print(f"{key[1][:62]:62s} {key[2]:8s} {row['before_ms']:10.2f} {row['after_ms']:10.2f} "
              f"{row['after_over_before']:12.3f} {'' if rel is None else f'{rel:10.3f}'}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"before": args.before, "after": args.after, "bench_args": bench_args,
                       "runs": args.runs, "rows": rows, "before_runs": docs["before"],
                       "after_runs": docs["after"]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
