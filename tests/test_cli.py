"""python -m fpnops: info, bench (tables, JSON as the README documents it, plots, errors)."""
import json
import pathlib
import re

import pytest
import torch

import fpnops
from helpers import run_cli


def run(*args, cwd):
    return run_cli(*args, cwd=cwd)


def test_info_reports_versions_backends_and_auto_choice(tmp_path):
    r = run("info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"fpnops {fpnops.__version__}" in out and f"torch {torch.__version__}" in out
    assert f"_C built against torch {torch.__version__}" in out
    cuda = fpnops.backends()["cuda"]
    assert ("CUDA: archs " in out) == cuda and ("CUDA: not built" in out) == (not cuda)
    assert "upsample_add: backend='auto' runs cpu: native" in out
    assert "conv_bn_act: backend='auto' runs cpu: native" in out


def test_bad_arguments_print_usage(tmp_path):
    r = run(cwd=tmp_path)
    assert r.returncode == 2 and "usage: python -m fpnops" in r.stderr
    r = run("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'frobnicate'" in r.stderr


# --- bench ----------------------------------------------------------------------------------------

def _readme_keys(title):
    """The keys the README's table under `title` documents (first column, in backticks)."""
    text = (ROOT / "README.md").read_text()
    section = text.split(title, 1)[1].split("\n\n", 2)[1]
    return [key for line in section.splitlines() if line.startswith("| `")
            for key in re.findall(r"`([^`]+)`", line.split("|")[1])]


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_quick_writes_table_json_and_plot(tmp_path):
    r = run("bench", "--quick", "--suite", "ops", "fpn", "--size", "64x96", "--rounds", "2",
            "--out", "b.json", "--plot", "b.png", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "x eager" in r.stdout and "upsample_add P2 1x256x16x24 float32" in r.stdout
    assert "[1/4] ops: upsample_add P2 float32" in r.stderr  # progress
    data = json.loads((tmp_path / "b.json").read_text())
    assert list(data) == _readme_keys("bench JSON: the file")
    assert data["schema"] == "fpnops.bench/1" and data["command"].startswith("python -m fpnops bench --quick")
    assert data["settings"]["size"] == [64, 96] and data["settings"]["device"] == "cpu"
    assert data["machine"]["torch"] == torch.__version__ and data["copy_GBps"] > 0
    rows = data["results"]
    assert {r_["impl"] for r_ in rows} == {"eager", "compile", "native", "fpnops"}
    for row in rows:
        assert list(row) == _readme_keys("bench JSON: a result row")
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["peak_MiB"] is None  # CUDA only
        if row["impl"] == "eager":
            assert row["vs_eager"] == 1.0
    ups = [row for row in rows if row["case"].startswith("upsample_add")]
    assert ups and all(row["GBps"] > 0 and row["rel_err"] == 0.0 for row in ups)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_backbone_quick_without_compile(tmp_path):
    r = run("bench", "--suite", "backbone", "--quick", "--size", "64", "--rounds", "2",
            "--compile-mode", "none", "--out", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [(row["case"], row["impl"]) for row in rows] == [("resnet50_fpn 1x3x64x64", "eager"),
                                                          ("resnet50_fpn 1x3x64x64", "fpnops")]
    assert all(row["status"] == "ok" and row["rel_err"] < 1e-4 and row["vs_compile"] is None for row in rows)


@pytest.mark.parametrize("args, message", [
    (("--size", "0"), "argument --size: expected N or HxW"),
    (("--size", "12x"), "argument --size: expected N or HxW"),
    (("--batch", "-1"), "argument --batch: expected a positive integer"),
    (("--suite", "everything"), "argument --suite: invalid choice: 'everything'"),
    (("--dtype", "int8"), "argument --dtype: invalid choice: 'int8'"),
])
def test_bench_argument_errors_give_usage(tmp_path, args, message):
    r = run("bench", *args, cwd=tmp_path)
    assert r.returncode == 2 and "usage: python -m fpnops bench" in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_bench_cuda_without_gpu_is_a_usage_error(tmp_path):
    r = run("bench", "--device", "cuda", cwd=tmp_path)
    assert r.returncode == 2 and "--device cuda: no CUDA device is visible" in r.stderr


def test_bench_reports_a_wrong_result_and_does_not_time_it():
    from fpnops import bench
    from fpnops.bench.suites import Case
    x = torch.randn(8, 8)
    case = Case("toy", {}, {"eager": lambda: x + 1, "fpnops": lambda: x + 1.01, "broken": lambda: 1 / 0},
                lambda: x + 1, {"eager": 0.0, "fpnops": 1e-4, "broken": 0.0})
    cfg = {"device": "cpu", "rounds": 3, "warmup": 1}
    rows = {row["impl"]: row for row in bench.run_case("ops", case, cfg, "float32", None)}
    assert rows["eager"]["status"] == "ok" and rows["eager"]["vs_eager"] == 1.0
    assert rows["fpnops"]["status"] == "wrong" and "rel err" in rows["fpnops"]["note"]
    assert rows["fpnops"]["median_ms"] is None and rows["fpnops"]["rel_err"] > 1e-4
    assert rows["broken"]["status"] == "failed" and "ZeroDivisionError" in rows["broken"]["note"]
