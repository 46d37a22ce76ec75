"""benchmarks/gpu_check.sh, rehearsed on the CPU (--rehearse): every stage's logic under its time
box, the results kept after each stage, at most 8 files back, a summary with every target, and a
run that ends by its budget whatever its stages do. Also the bookkeeping (gpu_check.py) and the
codegen report's join of measured bandwidth with the SASS ceilings, on made-up bench rows."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import time

import pytest

import fpnops

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
REQUIRED = ("check", "tests", "bench-ops-fp16", "bench-backbone", "sanitizer")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def rehearse(out, budget=None):
    # The fpnops this test imported (installed, or a checkout built in place), for the script's
    # `python -P -m fpnops` too.
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable,
               PYTHONPATH=str(pathlib.Path(fpnops.__file__).parents[1]))
    if budget is not None:
        env["GPU_CHECK_BUDGET"] = str(budget)
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "--rehearse"], env=env, capture_output=True, text=True,
                          timeout=900)
    return proc, time.monotonic() - t0


def results(out):
    return json.loads((out / "cpu-rehearsal.json").read_text())


@pytest.fixture(scope="module")
def full_rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    proc, seconds = rehearse(out)
    return out, proc, seconds


def test_rehearsal_runs_every_stage_and_keeps_results_past_a_killed_stage(full_rehearsal):
    out, proc, seconds = full_rehearsal
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = results(out)
    stages = {s["stage"]: s for s in payload["stages"]}
    for name in REQUIRED:
        assert stages[name]["status"] == "ok", stages[name]
    # The GPU tests were selected (and skipped here): the marker reaches them.
    skipped = int(stages["tests"]["note"].split(" skipped")[0].split()[-1])
    assert skipped >= 100, stages["tests"]
    # The stage its box killed is recorded as such, and everything before it is intact.
    assert stages["killed"]["status"] == "timeout" and stages["killed"]["rc"] == 124
    runs = {r["stage"]: r for r in payload["bench"]}
    for name in ("ops-fp16", "backbone"):
        rows = runs[name]["results"]
        assert rows and all(r["status"] == "ok" for r in rows), rows
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{n}.log" for n in (*REQUIRED, "killed")} <= names
    assert payload["elapsed_s"] <= payload["budget_s"]


def test_rehearsal_sends_back_few_files_and_a_summary_with_every_target(full_rehearsal):
    out, proc, _ = full_rehearsal
    files = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert files == ["cpu-rehearsal.json", "logs.tar.gz", "summary.txt"]
    summary = (out / "summary.txt").read_text()
    gpu_check = _load("gpu_check")
    for what, against, target, *_ in gpu_check._targets():
        assert f"{what} vs {against}: target {target}" in summary
    assert summary in proc.stdout  # printed at the end, too
    assert "these figures test the script, they do not measure the targets" in summary


def test_a_short_budget_ends_the_run_on_time_with_what_was_done(tmp_path):
    """Whatever the stages do, the run ends by its budget (plus the kill's grace): the boxes are
    clipped to what is left, and the stages after the deadline are recorded as skipped."""
    budget = 40
    proc, seconds = rehearse(tmp_path, budget=budget)
    assert seconds <= budget + 15, seconds  # timeout's 5 s kill grace, the last merge, bash
    payload = results(tmp_path)
    status = [s["status"] for s in payload["stages"]]
    assert "skipped" in status[1:] or "timeout" in status, payload["stages"]
    assert payload["stages"][1]["stage"] == "check" and payload["stages"][1]["status"] == "ok"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) <= 8


def _row(**kw):
    row = {"suite": "ops", "case": "upsample_add P2 8x256x200x200", "dtype": "float16", "impl": "native",
           "status": "ok", "vs_eager": 2.0, "vs_compile": 1.1, "GBps": 3000.0, "pct_of_copy": 95.0,
           "peak_MiB": None, "params": {"op": "upsample_add"}}
    row.update(kw)
    return row


def _run(rows, device="cuda", layout="channels_last"):
    return {"settings": {"device": device, "batch": 8, "size": [800, 800], "layout": layout}, "results": rows}


def test_targets_are_read_from_the_bench_rows():
    gpu_check = _load("gpu_check")
    rows = [_row(), _row(impl="triton", pct_of_copy=80.0, vs_eager=2.5, GBps=2500.0),
            _row(case="upsample_add P3 8x256x100x100", vs_eager=1.7),
            _row(suite="fpn", case="FPN neck fwd 8x256x200x200 (P2)", impl="fpnops", vs_eager=1.2),
            _row(suite="backbone", case="resnet50_fpn 8x3x800x800", impl="eager", peak_MiB=1000.0),
            _row(suite="backbone", case="resnet50_fpn 8x3x800x800", impl="fpnops", peak_MiB=650.0,
                 vs_eager=1.6, vs_compile=1.01)]
    got = {(t["what"], t["against"]): t for t in gpu_check.evaluate([_run(rows)], [], 300, 480, 3)}
    p2 = got[("upsample_add, P2-size maps", "device copy bandwidth")]
    assert p2["met"] is True and p2["measured"].startswith("95% (native")
    # The faster fused impl per case counts; the worst case decides: P3 at 1.7x misses 1.8x.
    vs_eager = got[("upsample_add", "eager interpolate + add")]
    assert vs_eager["met"] is False and vs_eager["measured"].startswith("worst 1.70x")
    assert got[("FPN neck forward, fp16 channels_last, N=8, 800x800", "eager torchvision FPN")]["met"] is True
    assert got[("same", "torch.compile (freezing)")]["met"] is False  # 1.01 < 1.05
    assert got[("peak memory, ResNet50-FPN inference", "eager")]["met"] is True  # 0.65x
    cpu = got[("upsample_add, CPU (2 cores)", "eager")]
    assert cpu["met"] is None and "no CPU run" in cpu["measured"]
    lease = got[("the GPU check on the lent machine", "its lease")]
    assert lease["met"] is True and "3 files" in lease["measured"]
    assert gpu_check.evaluate([_run(rows)], [], 500, 480, 3)[-1]["met"] is False


def test_codegen_report_joins_measured_bandwidth_with_the_sass_ceiling():
    report_mod = _load("codegen_report")
    report = {"triton": [{"op": "upsample_add", "dtype": "float16", "layout": "nhwc", "h100_bandwidth_ceiling": 0.9},
                         {"op": "upsample_add", "dtype": "float16", "layout": "nhwc", "h100_bandwidth_ceiling": 1.0},
                         {"op": "upsample_add", "dtype": "float16", "layout": "nchw", "h100_bandwidth_ceiling": 0.5},
                         {"op": "upsample_add", "dtype": "float16", "layout": "nhwc", "error": "x"}],
              "cuda": {"kernels": [{"name": "fpnops::upsample_add_kernel<half, 8>", "h100_bandwidth_ceiling": 0.8}]}}
    runs = [_run([_row(impl="triton"), _row(), _row(impl="eager")]),
            _run([_row()], device="cpu")]  # CPU rows have no SASS beside them
    rows = report_mod.joined(report, runs)
    assert [(r["impl"], r["sass_ceiling"], r["kernels"]) for r in rows] == [("triton", 0.9, 2), ("native", 0.8, 1)]
    assert "| upsample_add P2 8x256x200x200 | float16 | triton | nhwc | 3000 | 95% | 90% (2 kernels) |" in \
        report_mod._joined_table(rows)
