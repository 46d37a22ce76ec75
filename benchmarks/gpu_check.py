"""The bookkeeping of benchmarks/gpu_check.sh, without torch (it runs after every stage, and must
work when a stage broke the environment):

  merge   after each stage: the stages so far (work/stages.tsv), the bench JSON files
          (work/bench-*.json) and every DESIGN.md target with its measured figure go into
          OUT/<name>.json and OUT/summary.txt; every log (work/logs/) into OUT/logs.tar.gz.
          Each file is written beside its final name and renamed, so a kill at any moment
          leaves the previous complete version.
  verify  at the end: the file count, the archive, the summary (the rehearsal also checks
          that a stage killed by its timeout kept the earlier results).

    python benchmarks/gpu_check.py merge --work DIR --out DIR --name h200 --budget 480 --started EPOCH
    python benchmarks/gpu_check.py verify --out DIR --name h200 [--max-files 8] [--expect-stage NAME ...]
"""
import argparse
import io
import json
import os
import sys
import tarfile
import time

SCHEMA = "fpnops.gpu_check/1"
MAX_FILES = 8  # what the device tool brings back from $OUT


# The targets of ../shared/DESIGN.md ("Performance targets"), each with how to read its figure
# from the bench rows: (what, against, target, device, rule). The rules are functions below.
def _targets():
    return [
        ("upsample_add, P2-size maps", "device copy bandwidth", ">= 90%", "cuda", _pct_copy_p2),
        ("upsample_add", "eager interpolate + add", ">= 1.8x", "cuda", _op_ratio("vs_eager", 1.8)),
        ("upsample_add", "torch.compile of the same", ">= 1.0x", "cuda", _op_ratio("vs_compile", 1.0)),
        ("upsample_add, CPU (2 cores)", "eager", ">= 1.5x", "cpu", _op_ratio("vs_eager", 1.5)),
        ("FPN neck forward, fp16 channels_last, N=8, 800x800", "eager torchvision FPN", ">= 1.15x",
         "cuda", _module("fpn", "FPN neck fwd ", "vs_eager", 1.15, dtypes=("float16",))),
        ("ResNet50 backbone inference, fp16/bf16 channels_last, N=8, 800x800", "eager", ">= 1.5x",
         "cuda", _module("backbone", "", "vs_eager", 1.5, dtypes=("float16", "bfloat16"))),
        ("same", "torch.compile (freezing)", ">= 1.05x", "cuda",
         _module("backbone", "", "vs_compile", 1.05, dtypes=("float16", "bfloat16"))),
        ("ResNet50 / ResNet50-FPN inference, CPU fp32", "eager", ">= 1.3x", "cpu",
         _module("backbone", "", "vs_eager", 1.3, dtypes=("float32",))),
        ("same, steady state", "torch.compile (freezing)", ">= 1.0x", "cpu",
         _module("backbone", "", "vs_compile", 1.0, dtypes=("float32",))),
        ("peak memory, ResNet50-FPN inference", "eager", "<= 0.7x", "cuda", _peak_memory),
        ("the GPU check on the lent machine", "its lease", "<= 8 minutes, <= 8 files back", "any",
         None),  # filled in by merge from the stages themselves
    ]


def _ok(rows, **match):
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def _fused(rows):
    return [r for r in rows if r["impl"] in ("native", "triton", "fpnops")]


def _pct_copy_p2(rows):
    got = [r for r in _fused(_ok(rows, suite="ops")) if r["case"].startswith("upsample_add P2")
           and r.get("pct_of_copy") is not None]
    if not got:
        return None
    best = max(got, key=lambda r: r["pct_of_copy"])
    return best["pct_of_copy"] >= 90, f"{best['pct_of_copy']:.0f}% ({best['impl']}, {best['dtype']}, {best['GBps']:.0f} GB/s)"


def _op_ratio(key, need):
    def rule(rows):
        per_case = {}
        for r in _fused(_ok(rows, suite="ops")):
            if r["case"].startswith("upsample_add") and r.get(key) is not None:
                k = (r["case"], r["dtype"])
                if k not in per_case or r[key] > per_case[k][key]:
                    per_case[k] = r  # the faster of native and triton
        if not per_case:
            return None
        worst = min(per_case.values(), key=lambda r: r[key])
        text = ", ".join(f"{c.split()[1]} {d} {r[key]:.2f}x ({r['impl']})" for (c, d), r in sorted(per_case.items()))
        return worst[key] >= need, f"worst {worst[key]:.2f}x; {text}"
    return rule


def _module(suite, prefix, key, need, dtypes):
    def rule(rows):
        got = [r for r in _ok(rows, suite=suite, impl="fpnops") if r["case"].startswith(prefix)
               and r["dtype"] in dtypes and r.get(key) is not None]
        if not got:
            return None
        worst = min(got, key=lambda r: r[key])
        text = ", ".join(f"{r['case']} {r['dtype']} {r[key]:.2f}x" for r in got)
        return worst[key] >= need, text
    return rule


def _peak_memory(rows):
    pairs = []
    for r in _ok(rows, suite="backbone", impl="fpnops"):
        e = [x for x in _ok(rows, suite="backbone", impl="eager", case=r["case"], dtype=r["dtype"])
             if x.get("peak_MiB")]
        if "fpn" in r["case"] and r.get("peak_MiB") is not None and e:
            pairs.append((r["peak_MiB"] / e[0]["peak_MiB"], r))
    if not pairs:
        return None
    worst, r = max(pairs, key=lambda p: p[0])
    return worst <= 0.7, f"{worst:.2f}x ({r['case']} {r['dtype']}: {r['peak_MiB']:.0f} MiB)"


def _read_stages(work):
    stages = []
    path = os.path.join(work, "stages.tsv")
    if os.path.exists(path):
        for line in open(path):
            name, status, rc, seconds, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            stages.append({"stage": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                           "seconds": float(seconds or 0), "note": note})
    return stages


def _read_bench(work):
    runs = []
    for name in sorted(os.listdir(work)):
        if name.startswith("bench-") and name.endswith(".json"):
            try:
                with open(os.path.join(work, name)) as f:
                    runs.append({"stage": name[len("bench-"):-len(".json")], **json.load(f)})
            except (OSError, ValueError) as e:  # a stage killed while writing: say so, go on
                runs.append({"stage": name, "error": f"unreadable: {e}"})
    return runs


def evaluate(runs, stages, elapsed_s, budget_s, nfiles):
    """[{what, against, target, device, measured, met}] for every target: met True/False, or
    None with measured saying why there is no figure."""
    out = []
    for what, against, target, device, rule in _targets():
        row = {"what": what, "against": against, "target": target, "device": device}
        if rule is None:
            row.update(measured=f"{elapsed_s / 60:.1f} min of a {budget_s / 60:.0f}-minute box, {nfiles} files",
                       met=elapsed_s <= budget_s and nfiles <= MAX_FILES)
        else:
            rows = [dict(r, device=run.get("settings", {}).get("device"),
                         shape=f"N={run['settings']['batch']} {run['settings']['size'][0]}x{run['settings']['size'][1]} "
                               f"{run['settings']['layout']}")
                    for run in runs if "results" in run for r in run["results"]]
            rows = [r for r in rows if device in (r["device"], "any")]
            got = rule(rows) if rows else None
            if got is None:
                why = "no {} run in this check".format(device.upper()) if not rows else "its case did not run or was not ok"
                row.update(measured=f"not measured ({why})", met=None)
            else:
                shapes = sorted({r["shape"] for r in rows})
                row.update(measured=f"{got[1]} [{'; '.join(shapes)}]", met=bool(got[0]))
        out.append(row)
    return out


def _atomic_write(path, data):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _archive(work):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        logs = os.path.join(work, "logs")
        if os.path.isdir(logs):
            tar.add(logs, arcname="logs")
    return buf.getvalue()


def summary_text(payload):
    lines = [f"fpnops GPU check ({payload['mode']}) on {payload['device']}: "
             f"{payload['elapsed_s']:.0f} s of {payload['budget_s']:.0f} s"]
    lines.append("stages:")
    for s in payload["stages"]:
        lines.append(f"  {s['stage']:<14} {s['status']:<9} rc={s['rc']}  {s['seconds']:6.1f} s  {s['note']}")
    lines.append("targets (../shared/DESIGN.md):")
    mark = {True: "MET ", False: "MISS", None: "--  "}
    if payload["mode"] == "rehearse":  # tiny CPU shapes: a verdict would mean nothing
        mark = {True: "reh ", False: "reh ", None: "--  "}
    for t in payload["targets"]:
        lines.append(f"  [{mark[t['met']]}] {t['what']} vs {t['against']}: target {t['target']}; {t['measured']}")
    if payload["mode"] == "rehearse":
        lines.append("rehearsal: CPU, tiny shapes, the GPU run's time boxes; these figures test the "
                     "script, they do not measure the targets")
    return "\n".join(lines) + "\n"


def merge(args):
    stages = _read_stages(args.work)
    runs = _read_bench(args.work)
    elapsed = time.time() - args.started
    nfiles = 3 + (1 if os.path.exists(os.path.join(args.out, f"{args.name}.png")) else 0)
    payload = {"schema": SCHEMA, "mode": args.mode, "device": args.name, "elapsed_s": elapsed,
               "budget_s": args.budget, "stages": stages,
               "targets": evaluate(runs, stages, elapsed, args.budget, nfiles), "bench": runs}
    text = summary_text(payload)
    _atomic_write(os.path.join(args.out, "logs.tar.gz"), _archive(args.work))
    _atomic_write(os.path.join(args.out, f"{args.name}.json"), (json.dumps(payload, indent=1) + "\n").encode())
    _atomic_write(os.path.join(args.out, "summary.txt"), text.encode())
    return text


def verify(args):
    """Problems with what OUT holds now, [] when none."""
    problems = []
    files = [os.path.join(d, f) for d, _, fs in os.walk(args.out) for f in fs]
    if len(files) > args.max_files:
        problems.append(f"{len(files)} files under OUT, more than {args.max_files}: {sorted(files)}")
    try:
        with tarfile.open(os.path.join(args.out, "logs.tar.gz")) as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError) as e:
        problems.append(f"logs.tar.gz unreadable: {e}")
        names = []
    try:
        with open(os.path.join(args.out, f"{args.name}.json")) as f:
            payload = json.load(f)
        summary = open(os.path.join(args.out, "summary.txt")).read()
    except (OSError, ValueError) as e:
        return problems + [f"results unreadable: {e}"]
    done = {s["stage"]: s for s in payload["stages"]}
    for stage in args.expect_stage:
        if stage not in done:
            problems.append(f"stage {stage} missing from {args.name}.json")
        elif done[stage]["status"] != "skipped" and not any(n.startswith(f"logs/{stage}") for n in names):
            problems.append(f"stage {stage}'s log missing from logs.tar.gz")
    for t in _targets():
        if t[0] not in summary:
            problems.append(f"target {t[0]!r} missing from summary.txt")
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--work", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--name", required=True)
    m.add_argument("--mode", default="gpu")
    m.add_argument("--budget", type=float, required=True)
    m.add_argument("--started", type=float, required=True)
    v = sub.add_parser("verify")
    v.add_argument("--out", required=True)
    v.add_argument("--name", required=True)
    v.add_argument("--max-files", type=int, default=MAX_FILES)
    v.add_argument("--expect-stage", nargs="*", default=[])
    args = p.parse_args(argv)
    if args.cmd == "merge":
        print(merge(args), end="")
        return 0
    problems = verify(args)
    for line in problems:
        print("gpu check verify:", line)
    print("gpu check verify:", "ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
