"""Loads fpnops._C (the compiled kernels and op registrations) and refuses a missing or stale one.

Three ways to fail, three different fixes:
- a source tree without a built _C, imported because Python puts the current folder first on
  sys.path (`python -m fpnops` or `python` in a clone after `pip install .`): run from another
  folder, or build in place. Under `python -m fpnops` that is said in one line, no traceback;
- a _C that does not load (linked against another torch: undefined symbols) or was built against
  another torch version: rebuild against the torch you run;
- an install without its _C: reinstall.
"""
import importlib.machinery
import os
import sys

import torch

REBUILD = ("Rebuild it against the torch you run: `pip install --no-build-isolation --force-reinstall "
           "--no-deps .` in the fpnops source tree (or `pip install .` on a fresh machine).")


def _installed_elsewhere(root):
    """The fpnops package on sys.path outside the source tree `root`, or None."""
    paths = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec("fpnops", paths)
    return os.path.dirname(spec.origin) if spec and spec.origin else None


def _source_tree_message(here, error):
    """What to do when Python imported fpnops from a source tree that holds no built _C."""
    root = os.path.realpath(os.path.join(here, os.pardir))
    other = _installed_elsewhere(root)
    if sys.argv[:1] == ["-m"] and os.path.realpath(os.getcwd()) == root:
        # `python -m fpnops` run in the clone: the one line a user needs, then exit(1).
        return True, ("fpnops: `python -m` runs the fpnops sources in this folder, which hold no "
                      "built extension; " + ("run it from another folder, or use the `fpnops` command"
                                             if other else
                                             "install it first (`pip install .`), then run it from another "
                                             "folder or use the `fpnops` command"))
    where = (f" The installed fpnops ({other}) is shadowed: the current folder comes first on sys.path."
             if other else "")
    return False, (f"fpnops: Python imported fpnops from its source tree ({root}), which holds no built "
                   f"extension fpnops._C ({error}).{where} Run from another folder (the `fpnops` command "
                   "works from anywhere), or build in place: `pip install --no-build-isolation -e .`.")


def _load():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        from fpnops import _C
    except ImportError as e:  # no _C at all, or one linked against another torch (undefined symbol)
        built = any(f.startswith("_C.") for f in os.listdir(here))
        if not built and os.path.exists(os.path.join(here, os.pardir, "setup.py")):
            one_line, message = _source_tree_message(here, e)
            if one_line:
                raise SystemExit(message) from None
            raise ImportError(message) from e
        if not built:
            raise ImportError(f"fpnops: this install ({here}) has no compiled extension fpnops._C ({e}). "
                              "Reinstall it: `pip install --force-reinstall --no-deps .` in the fpnops "
                              "source tree (`pip install -v` shows the build).") from e
        raise ImportError(f"fpnops: the compiled extension fpnops._C could not be loaded ({e}). "
                          f"{REBUILD}") from e
    if _C.torch_version != torch.__version__:
        raise ImportError(f"fpnops: fpnops._C was built against torch {_C.torch_version}, but torch "
                          f"{torch.__version__} is imported; a stale extension can crash or compute "
                          f"garbage. {REBUILD}")
    return _C


_C = _load()
WITH_CUDA = bool(_C.with_cuda)
CUDA_ARCHS = _C.cuda_archs
