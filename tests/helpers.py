"""Shared test helpers: inputs in every layout, and the backends to try per device."""
import torch

from fpnops import _backend

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def backends_for(device):
    """The backends this install can run on `device` ("torch" always)."""
    return ["torch"] + [name for name, runs in (("native", _backend.native_runs_on),
                                                 ("triton", _backend.triton_runs_on)) if runs(device)]


def make(shape, dtype, device, layout, requires_grad=False):
    """Random (never zero) input of `shape` in the given layout; 'strided' is a non-contiguous
    view (every other column of a wider tensor, channels permuted)."""
    if layout == "strided":
        n, c, h, w = shape
        base = torch.randn(n, h, c, 2 * w + 1, dtype=dtype, device=device)
        t = base.permute(0, 2, 1, 3)[..., 1::2]
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    else:
        t = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_(requires_grad)


def run_cli(*args, cwd, pythonpath=()):
    """`python -m fpnops *args` in a fresh interpreter, running the fpnops these tests import
    (a source checkout may sit next to an older installed copy); `pythonpath` entries first."""
    import os
    import pathlib
    import subprocess
    import sys

    import fpnops
    root = str(pathlib.Path(fpnops.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), root, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "fpnops", *args], capture_output=True, text=True,
                          cwd=cwd, env=env)
