"""What installing fpnops costs on this machine: the download, the space, the build, the tests.

    python benchmarks/install_cost.py --out benchmarks/results/install-cpu-2core.json
    python benchmarks/install_cost.py --builds cpu --tests --out ...

- download: the wheels pip picks for the torch and torchvision installed here (a dry run of
  `pip install torch==X torchvision==Y --ignore-installed`, its report's files sized: local files
  by stat, remote ones by an HTTP HEAD); nothing is installed.
- installed: the files those packages have in this environment (their RECORDs, summed).
- builds: `pip wheel --no-build-isolation --no-deps` of a fresh copy of the tracked sources (so
  no object file is reused), timed, for each variant: `cpu` (FPNOPS_BUILD_CUDA=0), `cuda`
  (FPNOPS_BUILD_CUDA=1, the default archs) and `cuda-9.0` (one arch). MAX_JOBS is left unset,
  as a user leaves it.
- tests: `python -m pytest -q tests` from the repository root, timed (--tests).
The load average is kept before and after each step: on a shared machine it says how much of
a time was other people's work.
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDS = {"cpu": {"FPNOPS_BUILD_CUDA": "0"},
          "cuda": {"FPNOPS_BUILD_CUDA": "1"},
          "cuda-9.0": {"FPNOPS_BUILD_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "9.0"}}


def load():
    return [round(x, 2) for x in os.getloadavg()]


def wheel_bytes(url):
    if url.startswith("file://"):
        return os.path.getsize(url[len("file://"):])
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
        return int(r.headers["Content-Length"])


def download():
    """The wheels of torch + torchvision (the versions here) and their dependencies, sized."""
    import torch
    import torchvision
    want = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
                        "--quiet", "--report", report, *want], check=True, capture_output=True)
        with open(report) as f:
            items = json.load(f)["install"]
    sizes = {i["metadata"]["name"]: wheel_bytes(i["download_info"]["url"]) for i in items}
    return {"requested": want, "packages": len(sizes), "bytes": sum(sizes.values()),
            "cuda_libraries_bytes": sum(v for k, v in sizes.items() if k.startswith(("nvidia", "cuda", "triton"))),
            "by_package": dict(sorted(sizes.items(), key=lambda kv: -kv[1]))}


def installed(names):
    total = 0
    for name in names:
        dist = importlib.metadata.distribution(name)
        for f in dist.files or ():
            p = dist.locate_file(f)
            if os.path.isfile(p):
                total += os.path.getsize(p)
    return total


def tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True,
                           text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))


def build(variant):
    env = {k: v for k, v in os.environ.items() if k not in ("MAX_JOBS", "TORCH_CUDA_ARCH_LIST")}
    env.update(BUILDS[variant])
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "src"), os.path.join(tmp, "wheel")
        tracked_copy(src)
        before = load()
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation",
                            "--no-deps", "-w", out, src], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"build {variant} failed:\n{(r.stdout + r.stderr)[-3000:]}")
        # pip -v writes the build's output to stderr, indented
        line = re.search(r"^\s*(fpnops: building.*)$", r.stdout + r.stderr, re.M)
        wheel = [os.path.join(out, w) for w in os.listdir(out) if w.endswith(".whl")][0]
        return {"env": BUILDS[variant], "seconds": seconds, "message": line and line.group(1).strip(),
                "wheel_bytes": os.path.getsize(wheel), "load_before": before, "load_after": load()}


def tests():
    before = load()
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests"], cwd=ROOT, capture_output=True, text=True)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    return {"command": "python -m pytest -q tests", "seconds": time.perf_counter() - t0,
            "returncode": r.returncode, "summary": tail, "load_before": before, "load_after": load()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--builds", nargs="*", default=list(BUILDS), choices=list(BUILDS))
    p.add_argument("--tests", action="store_true", help="also time the test suite")
    p.add_argument("--no-download", action="store_true", help="skip sizing the download")
    p.add_argument("--out", metavar="FILE.json", required=True)
    p.add_argument("--merge", action="store_true",
                   help="keep what --out already holds, replacing only what this run measures")
    args = p.parse_args()
    import torch
    command = "python benchmarks/" + " ".join([os.path.basename(__file__), *sys.argv[1:]])
    old = {}
    if args.merge and os.path.exists(args.out):
        with open(args.out) as f:
            old = json.load(f)
    result = {**old, "schema": "fpnops.install/1", "command": "; ".join(filter(None, [old.get("command"), command])),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "pip": importlib.metadata.version("pip")}}
    try:
        with open("/proc/cpuinfo") as f:
            result["machine"]["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if not args.no_download:
        result["download"] = download()
        result["installed_bytes"] = installed(result["download"]["by_package"])
    result["builds"] = dict(old.get("builds", {}))
    for variant in args.builds:
        print(f"building {variant} ...", file=sys.stderr, flush=True)
        result["builds"][variant] = build(variant)
        print(f"  {result['builds'][variant]['seconds']:.0f} s", file=sys.stderr, flush=True)
    if args.tests:
        print("testing ...", file=sys.stderr, flush=True)
        result["tests"] = tests()
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
