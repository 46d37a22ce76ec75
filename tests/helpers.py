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


def _run_child(code, cwd, env, check, marker):
    """Run `check` then `code` in a fresh interpreter, with `env` added to the environment;
    fpnops is the one these tests import, and tests/ is on the path (its modules can be
    imported). cwd: away from the source tree (`python -c` imports from the working directory
    first). Fails unless it exits 0 and prints `marker`."""
    import os
    import pathlib
    import subprocess
    import sys

    import fpnops
    root = str(pathlib.Path(fpnops.__file__).resolve().parents[1])
    tests = str(pathlib.Path(__file__).resolve().parent)
    env = {**os.environ, **env,
           "PYTHONPATH": os.pathsep.join([root, tests, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", check + code], env=env, capture_output=True,
                       text=True, cwd=cwd)
    assert r.returncode == 0 and marker in r.stdout, r.stderr[-3000:]


def run_generic_cpu(code, cwd):
    """Run `code` in a fresh interpreter with ATEN_CPU_CAPABILITY=default, so that our CPU ops
    take their generic (non-AVX2) kernels; fpnops is the one these tests import, and tests/ is on
    the path (its modules can be imported). cwd: away from the source tree (`python -c` imports
    from the working directory first). Fails unless it exits 0 after checking that capability
    and printing "generic ok"."""
    check = 'import torch\nassert torch.backends.cpu.get_cpu_capability() == "DEFAULT"\n'
    _run_child(code, cwd, {"ATEN_CPU_CAPABILITY": "default"}, check, "generic ok")


def run_fresh(code, cwd):
    """Run `code` in a fresh interpreter (nothing compiled or cached by earlier tests: TorchScript
    keeps compiled classes per process), tests/ on the path; fails unless it exits 0 and prints
    "fresh ok"."""
    _run_child(code, cwd, {}, "", "fresh ok")


# The instruction set of an AVX2 CPU (an AMD EPYC, say), for ATen and for oneDNN.
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def onednn_isa():
    """The ISA oneDNN runs with, as its verbose header names it ("Intel AVX2", ...). oneDNN prints
    that header once per process, with its first verbose line: call this before anything turns
    oneDNN's verbose mode on."""
    import ctypes
    import os
    import re
    import sys
    import tempfile

    import torch
    one = torch.ones(1, 1, 1, 1)
    sys.stdout.flush()
    with tempfile.TemporaryFile() as f:
        saved = os.dup(1)
        os.dup2(f.fileno(), 1)  # oneDNN prints with C's stdio, to file descriptor 1
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                torch.ops.mkldnn._convolution_pointwise(one, one, None, [0, 0], [1, 1], [1, 1], 1,
                                                        "none", [], None)
        finally:
            ctypes.CDLL(None).fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        found = re.search(r"^onednn_verbose,.*,cpu,isa:(.*)$", f.read().decode(), re.M)
    return found.group(1).strip() if found else None


_AVX2_CHECK = """import torch
from helpers import onednn_isa
assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
isa = onednn_isa()
assert isa == "Intel AVX2", isa
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
assert not torch.ops.mkldnn._is_mkldnn_fp16_supported()
"""


def run_avx2_cpu(code, cwd):
    """Run `code` in a fresh interpreter at AVX2 level (AVX2_ENV: ATen's kernels and oneDNN's
    capped at AVX2), as on an AVX2-only CPU whatever this one has: eager's own half-precision
    convolutions, NaN spread and oneDNN's kernel choice are then an AVX2 machine's, and fpnops
    takes its paths for CPUs without bf16/fp16 instructions. On an AVX2 CPU that is this
    machine's own level again (it runs, never skips). As run_generic_cpu otherwise: fails unless
    the child sees that level (ATen's capability, oneDNN's ISA, no oneDNN bf16/fp16) and exits 0
    after printing "avx2 ok". torch.compile's on-disk cache is the child's own (in cwd):
    Inductor's cache keys leave out the ISA, and a graph compiled at one level and loaded at the
    other gives NaN or crashes (torch 2.14)."""
    import os
    env = {**AVX2_ENV, "TORCHINDUCTOR_CACHE_DIR": os.path.join(str(cwd), "inductor_cache")}
    _run_child(code, cwd, env, _AVX2_CHECK, "avx2 ok")


# The child side of run_bad_inputs: runs each case, reporting before (so a crash names the case
# that was running) and after (the exception's class hierarchy and message).
_BAD_INPUT_CHILD = r"""
import json, sys
cases, setup = json.load(sys.stdin)
env = {}
exec(setup, env)
for case_id, code in cases:
    print("START " + json.dumps(case_id), flush=True)
    try:
        exec(code, dict(env))
        result = {"id": case_id, "mro": None, "msg": ""}
    except BaseException as e:  # report every kind, KeyboardInterrupt included
        result = {"id": case_id, "mro": [c.__name__ for c in type(e).__mro__], "msg": str(e)}
    print("RESULT " + json.dumps(result), flush=True)
"""


def run_bad_inputs(cases, setup="import torch, fpnops", timeout=300):
    """Run bad-input cases in one child interpreter, so that a crash (a signal, an abort) or a
    hang fails the test that owns the case instead of killing the whole run.

    cases: (id, code, exception class name(s), regex the message must match); `code` runs with
    the names `setup` defined. Returns {id: failure text} for the cases that did not raise the
    expected error (an empty dict when all did)."""
    import json
    import os
    import re
    import subprocess
    import sys

    import fpnops
    import pathlib
    root = str(pathlib.Path(fpnops.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    payload = json.dumps([[[c[0], c[1]] for c in cases], setup])
    # cwd: `python -c` puts it first on sys.path; the folder holding the fpnops under test (an
    # installed one, or a source tree built in place) rather than a source tree without _C.
    proc = subprocess.Popen([sys.executable, "-c", _BAD_INPUT_CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=root)
    try:
        stdout, stderr = proc.communicate(payload, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        rc = f"hung: killed after {timeout} s"
    started, results = None, {}
    for line in stdout.splitlines():
        if line.startswith("START "):
            started = json.loads(line[6:])
        elif line.startswith("RESULT "):
            r = json.loads(line[7:])
            results[r["id"]] = r
            started = None
    failures = {}
    for case_id, _, expected, pattern in cases:
        expected = (expected,) if isinstance(expected, str) else tuple(expected)
        r = results.get(case_id)
        if r is None:
            why = "crashed or hung the interpreter" if case_id == started else "never ran (an earlier case crashed)"
            failures[case_id] = f"{why} (exit: {rc}; stderr tail: {stderr[-400:]!r})"
        elif r["mro"] is None:
            failures[case_id] = f"raised nothing, expected {'/'.join(expected)}"
        elif not any(name in r["mro"] for name in expected):
            failures[case_id] = f"raised {r['mro'][0]}({r['msg']!r}), expected {'/'.join(expected)}"
        elif not re.search(pattern, r["msg"], re.S):
            failures[case_id] = f"{r['mro'][0]} message {r['msg']!r} does not match {pattern!r}"
    return failures


def assert_bad_inputs(cases, setup="import torch, fpnops", timeout=300):
    """run_bad_inputs, failing with every case that did not raise its expected, named error."""
    failures = run_bad_inputs(cases, setup, timeout)
    assert not failures, "\n".join(f"{k}: {v}" for k, v in failures.items())


def run_threads(work, n, switch_interval=1e-6):
    """work(k) for k in range(n), in n threads at once, with a tiny switch interval so that they
    interleave inside what they share. Returns the repr of every exception a thread raised."""
    import sys
    import threading
    errors = []

    def run(k):
        try:
            work(k)
        except Exception as e:  # noqa: BLE001 - returned to the test, which asserts on it
            errors.append(repr(e))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(switch_interval)
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    return errors
