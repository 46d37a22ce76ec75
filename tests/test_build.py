"""The build and the extension loader: backends(), a stale or missing _C, the CUDA toolkit search."""
import importlib.util
import os
import pathlib
import re
import shutil
import sys

import pytest
import torch

import fpnops
from fpnops import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_backends_report_what_is_compiled_and_what_is_visible():
    b = fpnops.backends()
    assert list(b) == ["cpu", "cuda_compiled", "cuda_archs", "cuda_available", "triton", "triton_interpret"]
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    assert b["cpu"] and has("fpnops::upsample_add", "CPU")
    assert b["cuda_compiled"] == has("fpnops::upsample_add", "CUDA")  # what was built ...
    assert b["cuda_compiled"] == bool(b["cuda_archs"])
    assert b["cuda_available"] == torch.cuda.is_available()            # ... and what is visible now
    assert b["triton"] == (importlib.util.find_spec("triton") is not None)
    assert b["triton_interpret"] == (os.environ.get("TRITON_INTERPRET") == "1")


def test_backends_old_cuda_key_reads_with_a_warning():
    b = fpnops.backends()
    with pytest.warns(FutureWarning, match='"cuda_compiled".*"cuda_available"'):
        assert b["cuda"] == b["cuda_compiled"]
    with pytest.warns(FutureWarning, match='"cuda_compiled"'):  # not a silent None
        assert b.get("cuda") == b["cuda_compiled"]
    assert b.get("nope") is None and b.get("nope", 3) == 3
    with pytest.raises(KeyError):
        b["nope"]


def test_extension_matches_running_torch():
    assert _extension._C.torch_version == torch.__version__


def test_stale_extension_is_refused(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "1.0.0+other")
    with pytest.raises(ImportError, match=r"built against torch .* but torch 1.0.0\+other.*pip install"):
        _extension._load()


def test_missing_extension_says_how_to_rebuild(monkeypatch):
    monkeypatch.setitem(sys.modules, "fpnops._C", None)  # makes `from fpnops import _C` fail
    monkeypatch.delattr(fpnops, "_C", raising=False)
    with pytest.raises(ImportError, match=r"fpnops._C could not be loaded.*pip install"):
        _extension._load()


def _setup_module():
    spec = importlib.util.spec_from_file_location("fpnops_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # not __main__: defines the helpers, builds nothing
    return mod


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"),
                    reason="no CUDA toolkit on this machine")
def test_setup_finds_the_real_cuda_toolkit(monkeypatch):
    """nvcc may be a wrapper script (here /usr/local/bin/nvcc): the toolkit is where it execs."""
    setup = _setup_module()
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    home = setup.find_cuda_home()
    assert home is not None
    assert os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))
    assert os.path.isfile(os.path.join(home, "bin", "nvcc"))


def test_setup_honours_cuda_home(monkeypatch, tmp_path):
    setup = _setup_module()
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))  # not a toolkit: no guessing past it
    assert setup.find_cuda_home() is None
    os.makedirs(tmp_path / "bin")
    os.makedirs(tmp_path / "include")
    (tmp_path / "bin" / "nvcc").write_text("")
    (tmp_path / "include" / "cuda_runtime.h").write_text("")
    assert setup.find_cuda_home() == str(tmp_path)


def test_setup_force_cuda_without_toolkit_fails(monkeypatch):
    setup = _setup_module()
    monkeypatch.setenv("FPNOPS_BUILD_CUDA", "1")
    with pytest.raises(RuntimeError, match="FPNOPS_BUILD_CUDA=1 but no CUDA build is possible"):
        setup.want_cuda(torch, None)
    monkeypatch.setenv("FPNOPS_BUILD_CUDA", "0")
    assert setup.want_cuda(torch, "/usr/local/cuda") is False


@pytest.mark.parametrize("force, says", [("0", "the C++ CPU kernels only (no CUDA)"),
                                         ("1", "the C++ CPU kernels and the CUDA kernels for archs 9.0 (toolkit ")])
def test_build_says_what_it_compiles(monkeypatch, capfd, force, says):
    """setup.py's build_ext prints what it compiles when compiling starts (pip -v shows it)."""
    setup = _setup_module()
    if force == "1" and (setup.find_cuda_home() is None or torch.version.cuda is None):
        pytest.skip("no CUDA toolkit or a CPU torch: no CUDA build to announce")
    captured = {}
    monkeypatch.setattr(setup, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("FPNOPS_BUILD_CUDA", force)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    if "CUDA_HOME" in os.environ:  # main() sets it: monkeypatch puts back what was there
        monkeypatch.setenv("CUDA_HOME", os.environ["CUDA_HOME"])
    else:
        monkeypatch.delenv("CUDA_HOME", raising=False)
    setup.main()
    build = captured["cmdclass"]["build_ext"]
    compiled = []
    monkeypatch.setattr(build.__mro__[1], "run", lambda self: compiled.append(True))  # compile nothing
    build.run(object.__new__(build))
    line = capfd.readouterr().out.strip()
    assert compiled and line.startswith(f"fpnops: building {says}")
    assert line.endswith(f" against torch {torch.__version__}; `pip install -v` shows the compiler's log")


def test_setup_refuses_a_torch_outside_the_tested_range(monkeypatch, capfd):
    setup = _setup_module()
    monkeypatch.delenv("FPNOPS_ALLOW_UNTESTED_TORCH", raising=False)
    for ok in ("2.11.0+cu130", "2.12.1", "2.14.1+cpu", torch.__version__):
        assert setup.check_torch_version(ok) is True
    for bad in ("2.10.0", "2.15.0.dev20270101", "3.0.0", "unknown"):
        with pytest.raises(RuntimeError, match=f"torch {re.escape(bad)} is outside the range fpnops is tested "
                                               r"with \(2.11 to 2.14.*FPNOPS_ALLOW_UNTESTED_TORCH=1"):
            setup.check_torch_version(bad)
    monkeypatch.setenv("FPNOPS_ALLOW_UNTESTED_TORCH", "1")
    assert setup.check_torch_version("2.15.0") is False
    assert "warning: torch 2.15.0 is outside the range" in capfd.readouterr().out


def test_pyproject_readme_and_setup_state_one_torch_range():
    setup = _setup_module()
    (lo, lo_minor), (hi, hi_minor) = setup.TORCH_RANGE
    spec = f"torch>={lo}.{lo_minor},<{hi}.{hi_minor + 1}"
    root = pathlib.Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert f'dependencies = ["{spec}"]' in pyproject and f'"{spec}", "ninja"' in pyproject
    assert f"torch {lo}.{lo_minor} to {hi}.{hi_minor} (`{spec}` in `pyproject.toml`" in (root / "README.md").read_text()
