"""fpnops' CUDA kernels on the CPU (emulation.cpp): built from the kernel headers in the source
tree's csrc/ (CI tests a pip-installed fpnops from its source tree: the headers are not
installed) into build/cuda_emulation there, or a temporary folder where that is not writable;
ninja rebuilds it only when a source changed; loaded once per session.

FPNOPS_REQUIRE_EMULATION=1 (CI sets it) turns "cannot build it here" from a skip into a failure,
so the emulated kernels cannot drop out of CI unnoticed."""
import functools
import os
import pathlib
import shutil
import tempfile

import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
REQUIRED = os.environ.get("FPNOPS_REQUIRE_EMULATION") == "1"


def unavailable():
    """Why the emulation cannot be built here (None if it can): no C++ compiler, or no ninja."""
    from torch.utils import cpp_extension
    cxx = os.environ.get("CXX", "c++")  # what cpp_extension compiles with
    if shutil.which(cxx) is None:
        return f"cannot build the CUDA emulation: no C++ compiler ({cxx!r} is not on PATH)"
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as e:
        return f"cannot build the CUDA emulation: {e}"
    return None


def build_dir():
    """build/cuda_emulation in the source tree (git-ignored), else a per-user temporary folder."""
    for path in (ROOT / "build" / "cuda_emulation",
                 pathlib.Path(tempfile.gettempdir()) / f"fpnops_cuda_emulation_{os.getuid()}"):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path, os.W_OK):
            return path
    raise RuntimeError("cannot build the CUDA emulation: no writable build folder")


@functools.lru_cache(maxsize=None)
def load():
    """torch.ops.fpnops_emu, built from emulation.cpp and the kernel headers it includes."""
    from torch.utils import cpp_extension
    cpp_extension.load(
        name="fpnops_cuda_emulation", sources=[str(HERE / "emulation.cpp")],
        # Each session runs ninja, which rebuilds when emulation.cpp or a header it includes
        # (the kernels) changed.
        extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O1"],
        build_directory=str(build_dir()), is_python_module=False, verbose=False)
    return torch.ops.fpnops_emu
