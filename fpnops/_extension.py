"""Loads fpnops._C (the compiled kernels and op registrations) and refuses a missing or stale one."""
import os

import torch

REBUILD = ("Rebuild it against the torch you run: `pip install --no-build-isolation --force-reinstall "
           "--no-deps .` in the fpnops source tree (or `pip install .` on a fresh machine).")


def _load():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from fpnops import _C
    except ImportError as e:  # no _C at all, or one linked against another torch (undefined symbol)
        hint = ""
        built = any(f.startswith("_C.") for f in os.listdir(here))
        if not built and os.path.exists(os.path.join(here, os.pardir, "setup.py")):
            hint = (f" Python imported fpnops from its source tree ({here}), which holds no built _C; "
                    "run from another directory after `pip install .`, or build in place with "
                    "`pip install --no-build-isolation -e .`.")
        raise ImportError(f"fpnops: the compiled extension fpnops._C could not be loaded ({e}).{hint} "
                          f"{REBUILD}") from e
    if _C.torch_version != torch.__version__:
        raise ImportError(f"fpnops: fpnops._C was built against torch {_C.torch_version}, but torch "
                          f"{torch.__version__} is imported; a stale extension can crash or compute "
                          f"garbage. {REBUILD}")
    return _C


_C = _load()
WITH_CUDA = bool(_C.with_cuda)
CUDA_ARCHS = _C.cuda_archs
