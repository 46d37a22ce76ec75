"""Build of fpnops._C: the C++ CPU kernels always, the CUDA kernels when a toolkit is found.

Environment:
  FPNOPS_BUILD_CUDA=0/1   force the CUDA kernels off / on (on fails if no toolkit is found)
  CUDA_HOME               the CUDA toolkit to use (else found from nvcc, /usr/local/cuda, ...)
  TORCH_CUDA_ARCH_LIST    GPU architectures; default when no GPU is visible: DEFAULT_ARCHS
  MAX_JOBS                parallel compile jobs (ninja)
  FPNOPS_ALLOW_UNTESTED_TORCH=1  build against a torch outside TORCH_RANGE
"""
import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import setup

# The torch releases fpnops is tested with, [first, last] by (major, minor): pyproject.toml's
# "torch>=2.11,<2.15" and README "Supported versions" say the same.
TORCH_RANGE = ((2, 11), (2, 14))

# A100 (sm_80) and H100/H200 (sm_90) machine code, plus sm_90 PTX so newer GPUs can JIT it.
DEFAULT_ARCHS = "8.0;9.0+PTX"


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The CUDA toolkit root, or None.

    torch guesses dirname(dirname(which nvcc)), which is wrong when nvcc is a wrapper script
    (here /usr/local/bin/nvcc -> /usr/local), so ask nvcc where it really lives.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var] if _is_toolkit(os.environ[var]) else None
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            dry = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True, text=True,
                                 timeout=60)
            m = re.search(r"TOP=(\S+)", dry.stdout + dry.stderr)
            if m and _is_toolkit(os.path.realpath(m.group(1))):
                return os.path.realpath(m.group(1))
        except (OSError, subprocess.SubprocessError):
            pass
        guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if _is_toolkit(guess):
            return guess
    for cand in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if _is_toolkit(cand):
            return os.path.realpath(cand)
    return None


def announce(line):
    """Print `line` to the build log, and to the terminal when pip hides that log.

    pip runs this build in a subprocess whose output it shows only with -v (or on failure):
    without -v, a user waiting minutes for a CUDA compile would not know what is compiling.
    So when stdout is not a terminal, the line also goes straight to the controlling terminal,
    if there is one (none in CI or under nohup: then only the log has it).
    """
    print(line, flush=True)
    if sys.stdout.isatty():
        return
    try:
        with open("/dev/tty", "w") as tty:
            tty.write("\n" + line + "\n")
    except OSError:
        pass


def check_torch_version(version, allow=None):
    """Refuse, with the way out, a torch outside TORCH_RANGE: its kernels' rules (nearest index,
    oneDNN, cuDNN layouts) are what fpnops reproduces bit for bit, and they change between
    releases."""
    allow = os.environ.get("FPNOPS_ALLOW_UNTESTED_TORCH") == "1" if allow is None else allow
    m = re.match(r"(\d+)\.(\d+)", version)
    got = (int(m.group(1)), int(m.group(2))) if m else None
    (lo_major, lo_minor), (hi_major, hi_minor) = TORCH_RANGE
    if got is not None and TORCH_RANGE[0] <= got <= TORCH_RANGE[1]:
        return True
    what = (f"torch {version} is outside the range fpnops is tested with "
            f"({lo_major}.{lo_minor} to {hi_major}.{hi_minor}, README \"Supported versions\")")
    if not allow:
        raise RuntimeError(what + "; install a torch in that range, or set FPNOPS_ALLOW_UNTESTED_TORCH=1 "
                           "to build anyway")
    announce(f"fpnops: warning: {what}; building anyway (FPNOPS_ALLOW_UNTESTED_TORCH=1)")
    return False


def want_cuda(torch, cuda_home):
    force = os.environ.get("FPNOPS_BUILD_CUDA")
    if force == "0":
        return False
    found = cuda_home is not None and torch.version.cuda is not None
    if force == "1" and not found:
        raise RuntimeError(
            "FPNOPS_BUILD_CUDA=1 but no CUDA build is possible: "
            f"CUDA toolkit={cuda_home!r}, torch.version.cuda={torch.version.cuda!r} "
            "(set CUDA_HOME to the toolkit and use a CUDA build of torch)")
    return found


def main():
    cuda_home = find_cuda_home()
    if cuda_home:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    check_torch_version(torch.__version__)
    with_cuda = want_cuda(torch, cuda_home)
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPU") if with_cuda else ""

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # The build's torch version is compiled in, so a stale _C is refused at import.
    macros = [("FPNOPS_TORCH_VERSION", f'"{torch.__version__}"'),
              ("FPNOPS_CUDA_ARCHS", f'"{archs}"'),
              ("FPNOPS_WITH_CUDA", "1" if with_cuda else "0"),
              # AVX2 copies of the CPU kernels (GCC's target pragma), picked at run time.
              ("FPNOPS_HAVE_AVX2", "1" if platform.machine() in ("x86_64", "AMD64")
               and sys.platform.startswith("linux") else "0")]
    # torch adds the C++ standard it needs. -fopenmp makes at::parallel_for (inline, OpenMP in
    # torch builds) run in parallel; not linked: GOMP_* resolve to the libgomp torch loaded.
    cxx = ["-O3", "-fopenmp"]
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension("fpnops._C", sources, define_macros=macros,
                            extra_compile_args={"cxx": cxx, "nvcc": ["-O3",
                                                                     "--expt-relaxed-constexpr"]})
    else:
        ext = CppExtension("fpnops._C", sources, define_macros=macros,
                           extra_compile_args={"cxx": cxx})
    what = (f"the C++ CPU kernels and the CUDA kernels for archs {archs} (toolkit {cuda_home})"
            if with_cuda else "the C++ CPU kernels only (no CUDA)")

    class Build(BuildExtension.with_options(use_ninja=True)):
        def run(self):  # when compiling starts (pip also runs this file for metadata, not to build)
            announce(f"fpnops: building {what} against torch {torch.__version__}; "
                     "`pip install -v` shows the compiler's log")
            super().run()

    setup(ext_modules=[ext], cmdclass={"build_ext": Build})


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    main()
