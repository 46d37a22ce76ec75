"""The CLI (`fpnops` and `python -m fpnops`): info, bench (tables, JSON as the README documents
it, setup costs, plots, errors), and where it runs from (the source tree included)."""
import argparse
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch

import fpnops
from fpnops import bench
from helpers import run_cli


def run(*args, cwd):
    return run_cli(*args, cwd=cwd)


def test_info_reports_versions_backends_and_auto_choice(tmp_path):
    r = run("info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"fpnops {fpnops.__version__}" in out and f"torch {torch.__version__}" in out
    assert f"_C built against torch {torch.__version__}" in out
    cuda = fpnops.backends()["cuda_compiled"]
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
# The bench tests assert CPU figures: they say --device cpu, since bench defaults to cuda
# wherever a GPU is visible (test_bench_tests_do_not_depend_on_a_visible_gpu).
CPU = ("--device", "cpu")


def test_bench_tests_do_not_depend_on_a_visible_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    assert bench.settings_from(parser.parse_args(["--quick"]), parser)["device"] == "cuda"
    cfg = bench.settings_from(parser.parse_args([*CPU, "--quick"]), parser)
    assert (cfg["device"], cfg["dtypes"], cfg["batch"], cfg["layout"]) == ("cpu", ["float32"], 1, "contiguous")
    assert cfg["timing"] == "perf_counter, 1 call per sample"


def test_bench_quick_writes_table_json_and_plot(tmp_path):
    r = run("bench", *CPU, "--quick", "--suite", "ops", "fpn", "--size", "64x96", "--rounds", "2",
            "--out", "b.json", "--plot", "b.png", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "x eager" in r.stdout and "upsample_add P2 1x256x16x24 float32" in r.stdout
    assert "float32: IEEE; timing: perf_counter, 1 call per sample" in r.stdout
    assert "[1/4] ops: upsample_add P2 float32" in r.stderr  # progress
    data = json.loads((tmp_path / "b.json").read_text())
    assert list(data) == _readme_keys("bench JSON: the file")
    assert data["schema"] == "fpnops.bench/3" and data["command"].startswith("python -m fpnops bench --device cpu --quick")
    assert data["settings"]["size"] == [64, 96] and data["settings"]["device"] == "cpu"
    assert data["settings"]["float32"] == "IEEE" and data["settings"]["timing"] == "perf_counter, 1 call per sample"
    assert data["machine"]["torch"] == torch.__version__ and data["copy_GBps"] > 0
    assert data["compile_startup_ms"] > 0 and "torch.compile start-up: " in r.stdout
    assert data["machine"]["fpnops_backends"]["cuda_compiled"] == fpnops.backends()["cuda_compiled"]
    rows = data["results"]
    assert {r_["impl"] for r_ in rows} == {"eager", "compile", "native", "fpnops"}
    for row in rows:
        assert list(row) == _readme_keys("bench JSON: a result row")
        assert row["status"] == "ok", row
        assert row["median_ms"] > 0 and row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["peak_MiB"] is None  # CUDA only
        assert row["calls_per_sample"] == 1 and row["rel_err"] <= row["tol"]
        if row["impl"] == "eager":
            assert row["vs_eager"] == 1.0
    ups = [row for row in rows if row["case"].startswith("upsample_add")]
    assert ups and all(row["GBps"] > 0 and row["rel_err"] == row["tol"] == 0.0 for row in ups)
    convs = [row for row in rows if row["case"].startswith("conv_bn_act")]
    assert convs and all(row["tol"] == 1e-4 for row in convs)  # float32: no rule from eager's error
    for row in rows:  # setup figures: the module cases only
        has_setup = row["suite"] == "fpn"
        assert (row["first_call_ms"] is not None) == has_setup
        assert (row["setup_ms"] is not None) == (has_setup and row["impl"] != "eager")
        assert (row["breakeven_calls"] is not None) == (has_setup and row["impl"] == "compile")
    fpn = {row["impl"]: row for row in rows if row["suite"] == "fpn"}
    assert all(row["first_call_ms"] > 0 for row in fpn.values()) and fpn["fpnops"]["setup_ms"] > 0
    # compile's first call compiles from an empty cache: far longer than its steady-state call
    assert fpn["compile"]["first_call_ms"] > 10 * fpn["compile"]["median_ms"]
    assert fpn["compile"]["breakeven_calls"] == bench.breakeven_calls(fpn["compile"], fpn["fpnops"])
    assert re.search(r"FPN neck fwd .* compile .* (never|\d+)  ok", r.stdout)
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_backbone_quick_without_compile(tmp_path):
    r = run("bench", *CPU, "--suite", "backbone", "--quick", "--size", "64", "--rounds", "2",
            "--compile-mode", "none", "--out", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [(row["case"], row["impl"]) for row in rows] == [("resnet50_fpn 1x3x64x64", "eager"),
                                                          ("resnet50_fpn 1x3x64x64", "fpnops")]
    assert all(row["status"] == "ok" and row["rel_err"] < 1e-4 and row["vs_compile"] is None for row in rows)
    assert rows[1]["setup_ms"] > 0 and rows[1]["first_call_ms"] > 0  # fuse(), then prepacking
    assert rows[0]["setup_ms"] is None and rows[0]["first_call_ms"] > 0
    assert all(row["breakeven_calls"] is None for row in rows)  # no compile to pay back
    assert json.loads((tmp_path / "b.json").read_text())["compile_startup_ms"] is None


def test_bench_bfloat16_tolerance_from_eager_s_error(tmp_path):
    r = run("bench", *CPU, "--suite", "ops", "--quick", "--size", "64", "--rounds", "2", "--dtype", "bfloat16",
            "--compile-mode", "none", "--out", "b.json", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert all(row["status"] == "ok" for row in rows)
    assert [row["tol"] for row in rows if row["case"].startswith("upsample_add")] == [0.0] * 4  # bit-exact
    conv = {row["impl"]: row for row in rows if row["case"].startswith("conv_bn_act")}
    assert set(conv) == {"eager", "native"} and conv["eager"]["rel_err"] > 1e-3  # bf16: rounded
    assert conv["native"]["tol"] == pytest.approx(max(2e-2, 2 * conv["eager"]["rel_err"]))
    tol = re.escape(f"{conv['native']['tol']:.1e}")
    assert re.search(rf"conv_bn_act .* native .* {tol} +ok", r.stdout)  # the table shows it


def test_breakeven_calls():
    from fpnops.bench import breakeven_calls

    def row(setup, first, median):
        return {"setup_ms": setup, "first_call_ms": first, "median_ms": median}
    fused = row(60.0, 900.0, 450.0)
    # compile: 20 s to start, then 15 ms faster per call: 20001 - 960 = 19041 ms to win back,
    # 19041 / 15 = 1269.4, so 1270 calls after the first: the 1271st is the first where it is ahead.
    assert breakeven_calls(row(1.0, 20_000.0, 435.0), fused) == 1271
    assert breakeven_calls(row(None, 20_000.0, 450.0), fused) == "never"  # as fast: never
    assert breakeven_calls(row(None, 20_000.0, 460.0), fused) == "never"
    assert breakeven_calls(row(None, 500.0, 460.0), fused) == 1           # cheaper start


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


# --- where it runs from: the `fpnops` command, and `python -m fpnops` in a source tree ----------

def _declared_script():
    """[project.scripts] fpnops = "module:function", from pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^fpnops\s*=\s*"([\w.]+):(\w+)"', section, re.M).groups()


def _console_script(tmp_path):
    """The installed `fpnops` command if it runs the fpnops under test (CI: pip install .), else
    the launcher pip writes for the declared entry point (a checkout built in place)."""
    installed = shutil.which("fpnops", path=sysconfig.get_path("scripts"))
    if installed:
        r = subprocess.run([installed, "info"], capture_output=True, text=True, cwd=tmp_path)
        if f"({os.path.dirname(fpnops.__file__)})" in r.stdout:
            return installed, {}
    module, function = _declared_script()
    script = tmp_path / "bin" / "fpnops"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                      f"sys.exit({function}())\n")
    script.chmod(0o755)
    root = str(pathlib.Path(fpnops.__file__).resolve().parents[1])
    return str(script), {"PYTHONPATH": root}


def test_console_script_runs_from_the_source_root(tmp_path):
    script, env = _console_script(tmp_path)
    env = {**os.environ, **env}
    r = subprocess.run([script, "info"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert f"fpnops {fpnops.__version__} ({os.path.dirname(fpnops.__file__)})" in r.stdout
    r = subprocess.run([script], capture_output=True, text=True, cwd=ROOT, env=env)
    assert r.returncode == 2 and "usage: fpnops " in r.stderr  # named as the user called it


def _source_tree_without_C(tmp_path, setup_py=True):
    """A copy of the fpnops sources with no built extension (a clone after `pip install .`)."""
    src = pathlib.Path(fpnops.__file__).parent
    shutil.copytree(src, tmp_path / "fpnops", ignore=shutil.ignore_patterns("_C.*", "__pycache__"))
    if setup_py:
        (tmp_path / "setup.py").write_text("")
    return tmp_path


def _python_here(cwd, *args):
    """python *args in cwd, with the fpnops under test importable after cwd (as when installed)."""
    root = str(pathlib.Path(fpnops.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_python_m_in_a_source_tree_says_so_in_one_line(tmp_path):
    tree = _source_tree_without_C(tmp_path)
    r = _python_here(tree, "-m", "fpnops", "info")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr  # one line, no traceback
    assert "run it from another folder, or use the `fpnops` command" in r.stderr
    assert "Rebuild" not in r.stderr and "Traceback" not in r.stderr


def test_import_from_a_source_tree_names_the_tree_not_a_rebuild(tmp_path):
    tree = _source_tree_without_C(tmp_path)
    r = _python_here(tree, "-c", "import fpnops")
    assert r.returncode == 1 and "ImportError: fpnops: Python imported fpnops from its source tree" in r.stderr
    assert "The installed fpnops (" in r.stderr and "is shadowed" in r.stderr
    assert "Run from another folder" in r.stderr and "Rebuild" not in r.stderr


def test_install_without_extension_says_reinstall(tmp_path):
    tree = _source_tree_without_C(tmp_path, setup_py=False)  # site-packages/fpnops without _C
    r = _python_here(tree, "-m", "fpnops", "info")
    assert r.returncode == 1 and "has no compiled extension fpnops._C" in r.stderr
    assert "pip install --force-reinstall" in r.stderr and "source tree" in r.stderr
