"""python -m fpnops: the info command and argument errors."""
import subprocess
import sys

import torch

import fpnops


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fpnops", *args], capture_output=True, text=True, cwd=cwd)


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
