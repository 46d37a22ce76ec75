"""python -m fpnops demo: pictures, demo.json, agreement of fused and reference, usage errors."""
import argparse
import json
import os
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import fpnops
from fpnops import demo
from helpers import run_cli

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LEVELS = ["P2", "P3", "P4", "P5", "P6"]
JSON_KEYS = {"command", "image", "image_size", "size", "device", "dtype", "seed", "bn_randomized",
             "fused_modules", "parameters", "levels", "tolerance", "ok", "timing", "versions", "date",
             "machine"}


def run_demo(*args, cwd, pythonpath=()):
    return run_cli("demo", *args, cwd=cwd, pythonpath=pythonpath)


def expected_shapes(h, w):
    """[1, 256, h, w] of P2..P6: the stem's stride-2 conv and max-pool, then one stride-2 3x3
    conv per stage ("same" padding: ceil(n / 2)); P6 by the notebook's max_pool2d(P5, 1, 2)."""
    half = lambda n: (n - 1) // 2 + 1  # noqa: E731
    sizes = [(half(half(h)), half(half(w)))]
    for _ in range(3):
        sizes.append(tuple(map(half, sizes[-1])))
    sizes.append(tuple(F.max_pool2d(torch.zeros(1, 1, *sizes[-1]), kernel_size=1, stride=2).shape[-2:]))
    return [[1, 256, *s] for s in sizes]


def check_outputs(r, cwd, out, size):
    """A successful run's stdout, pictures and demo.json (written to `out`, relative to `cwd`)."""
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Total backbone+FPN parameters: 26,852,416 (fused model: 26,852,416)" in r.stdout
    assert "16 FusedBottleneck" in r.stdout and "1 FusedReferenceFPN" in r.stdout
    assert "all levels agree within 1e-04" in r.stdout and "MISMATCH" not in r.stdout
    for name, shape in zip(LEVELS, expected_shapes(*size)):
        assert f"\n{name:<6} {'x'.join(map(str, shape))} " in r.stdout  # the per-level line
    for name in ["fpn_features.png", "activation_histograms.png", "demo.json"]:
        assert f"wrote {os.path.join(out, name)}" in r.stdout
    out_dir = pathlib.Path(cwd, out)
    for name in ["fpn_features.png", "activation_histograms.png"]:
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE
    data = json.loads((out_dir / "demo.json").read_text())
    assert set(data) == JSON_KEYS
    assert data["size"] == list(size) and data["ok"] is True and data["bn_randomized"] is True
    assert data["parameters"] == {"reference": 26_852_416, "fused": 26_852_416}
    assert list(data["levels"]) == LEVELS
    assert [lv["shape"] for lv in data["levels"].values()] == expected_shapes(*size)
    assert all(0 < lv["rel_err"] < 1e-4 for lv in data["levels"].values())  # 0: BN really folded
    t = data["timing"]
    assert t["rounds"] == 1 and t["reference"]["speedup"] == 1.0 and t["fused"]["median_ms"] > 0
    assert data["versions"]["torch"] == torch.__version__ and data["versions"]["fpnops"] == fpnops.__version__
    assert data["date"].endswith("+00:00") and data["machine"]["cpu_count"] == os.cpu_count()  # provenance
    return data


def test_default_photograph(tmp_path):
    pytest.importorskip("skimage")
    r = run_demo("--size", "128", "--rounds", "1", cwd=tmp_path)
    data = check_outputs(r, tmp_path, "fpnops-demo", (128, 128))  # the default --out, in the cwd
    assert data["image"] == "skimage.data.astronaut()" and data["image_size"] == [512, 512]
    assert expected_shapes(128, 128)[-1] == [1, 256, 2, 2]
    assert expected_shapes(800, 800)[-1] == [1, 256, 13, 13]  # the seed's notebook


def test_image_file_non_square(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "in.png")
    r = run_demo("--image", "in.png", "--size", "96x160", "--rounds", "1", "--out", "out", cwd=tmp_path)
    data = check_outputs(r, tmp_path, "out", (96, 160))
    assert data["image"] == "in.png" and data["image_size"] == [100, 150]
    assert expected_shapes(96, 160) == [[1, 256, 24, 40], [1, 256, 12, 20], [1, 256, 6, 10],
                                        [1, 256, 3, 5], [1, 256, 2, 3]]


@pytest.mark.parametrize("args, names", [
    (["--image", "/nonexistent.png"], ["--image /nonexistent.png: No such file or directory"]),
    (["--image", "not_an_image.txt"], ["--image not_an_image.txt: not an image PIL can read"]),
    (["--size", "0"], ["argument --size", ">= 64"]),
    (["--size", "abc"], ["argument --size", "'abc'"]),
    (["--size", "32x800"], ["argument --size", "P6 must exist"]),
    (["--rounds", "0"], ["argument --rounds"]),
    (["--out", "a_file/sub"], ["--out a_file/sub"]),
])
def test_usage_errors(tmp_path, args, names):
    (tmp_path / "not_an_image.txt").write_text("hello")
    (tmp_path / "a_file").write_text("")
    r = run_demo(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "usage: python -m fpnops demo" in r.stderr and "Traceback" not in r.stderr
    for name in names:
        assert name in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")
def test_cuda_without_gpu(tmp_path):
    r = run_demo("--device", "cuda", cwd=tmp_path)
    assert r.returncode == 2 and "--device cuda: no CUDA device" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("package, args, names", [
    ("skimage", [], ["pass --image PATH", "pip install scikit-image"]),
    ("matplotlib", ["--image", "x.png"], ["pip install matplotlib"]),
])
def test_missing_optional_packages(tmp_path, package, args, names):
    """A package that fails to import (stub first on the path): a usage error saying what to install."""
    (tmp_path / "stubs" / package).mkdir(parents=True)
    (tmp_path / "stubs" / package / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    r = run_demo(*args, cwd=tmp_path, pythonpath=[tmp_path / "stubs"])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "fpnops-demo").exists()
    for name in names:
        assert name in r.stderr


def test_mismatch_exits_1_and_still_writes(tmp_path, monkeypatch, capsys):
    """A fused model that disagrees (P2's output conv bias shifted): MISMATCH, exit status 1."""
    real_fuse = fpnops.fuse

    def bad_fuse(model):
        fused = real_fuse(model)
        with torch.no_grad():
            dict(fused.named_parameters())["fpn.out2.bias"].add_(1.0)
        return fused

    monkeypatch.setattr(fpnops, "fuse", bad_fuse)
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(tmp_path / "in.png")
    parser = argparse.ArgumentParser(prog="python -m fpnops demo")
    demo.add_arguments(parser)
    args = parser.parse_args(["--image", str(tmp_path / "in.png"), "--size", "64", "--rounds", "1",
                              "--out", str(tmp_path / "out")])
    assert demo.run(args, parser) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "all levels agree" not in out
    data = json.loads((tmp_path / "out" / "demo.json").read_text())
    assert data["ok"] is False and data["levels"]["P2"]["rel_err"] > 1e-4
    assert data["levels"]["P3"]["rel_err"] < 1e-4
    assert (tmp_path / "out" / "fpn_features.png").read_bytes()[:8] == PNG_SIGNATURE
