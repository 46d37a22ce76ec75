"""fpnops' CUDA kernels on the CPU (emulation.cpp): built once per checkout into
build/cuda_emulation (ninja rebuilds it only when a source changed), loaded once per session."""
import functools
import pathlib

import torch

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def unavailable():
    """Why the emulation cannot be built here (None if it can): no compiler toolchain or ninja."""
    from torch.utils import cpp_extension
    try:
        cpp_extension.verify_ninja_availability()
    except RuntimeError as e:
        return f"cannot build the CUDA emulation: {e}"
    return None


@functools.lru_cache(maxsize=None)
def load():
    """torch.ops.fpnops_emu, built from emulation.cpp and the kernel headers it includes."""
    from torch.utils import cpp_extension
    build = ROOT / "build" / "cuda_emulation"
    build.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="fpnops_cuda_emulation", sources=[str(HERE / "emulation.cpp")],
        # Each session runs ninja, which rebuilds when emulation.cpp or a header it includes
        # (the kernels) changed.
        extra_include_paths=[str(ROOT / "csrc")], extra_cflags=["-O1"],
        build_directory=str(build), is_python_module=False, verbose=False)
    return torch.ops.fpnops_emu
