"""The Triton launchers' host side (fpnops/triton/upsample_add.py, conv_bn_act.py, _launch.py):
their decisions come from ints and tensor metadata only, since under torch.compile they run on
fake tensors (a triton_op's fake kernel is the launcher itself); the backward's window tables are
copied to a device once; a launch runs on its tensors' device; sizes do not recompile a kernel.

Two tests run in a child Python without TRITON_INTERPRET, where the ops are triton_ops and the
kernels compile (for sm_90, with fpnops/bench/triton_targets.py's stand-in driver): there
torch.compile traces the ops' kernels into its graph, as on a GPU."""
import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import fpnops
from fpnops import _backend
from fpnops.ops import _nearest

pytestmark = pytest.mark.skipif(not _backend.TRITON_IMPORTABLE, reason="needs triton")

# Where the fpnops this test imported lives (site-packages after `pip install .`, as in CI; the
# checkout where it is built in place): the child must import that one, not the source tree,
# which has no built extension after an install.
FPNOPS_HOME = pathlib.Path(fpnops.__file__).resolve().parents[1]


def run_compiled(code):
    """Run `code` in a Python without TRITON_INTERPRET; the last line of its stdout, as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(FPNOPS_HOME), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=FPNOPS_HOME,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def case_sizes():
    """(in, out, scale) of the kinds the launchers meet: 2x, odd, shrinking, equal, scaled."""
    cases = [(5, 10, None), (25, 50, None), (25, 51, None), (9, 4, None), (6, 6, None),
             (10, 10, 1.05), (10, 20, 2.05), (4, 12, 3.0), (6, 9, 1.5), (7, 3, 0.5), (1, 61, 61.0),
             (100, 100, 1.0000001), (3, 1, 1 / 3), (2**24 + 1, 2**24 + 3, None)]
    gen = torch.Generator().manual_seed(3)
    for _ in range(200):
        i, o = (int(x) for x in torch.randint(1, 400, (2,), generator=gen))
        cases.append((i, o, None))
        s = float(torch.empty(()).uniform_(0.2, 6, generator=gen))
        cases.append((i, max(1, math.floor(i * s)), s))
    return cases


def test_int_rules_equal_the_tensor_rules():
    """The launchers' Python twins of _nearest's tensor rules give the same numbers."""
    for in_size, out_size, sf in case_sizes():
        assert _nearest.nearest_scale_value(in_size, out_size, sf) == \
            float(_nearest.nearest_scale(in_size, out_size, sf)), (in_size, out_size, sf)
        assert _nearest.nearest_scale_value(in_size, out_size, sf, double=True) == \
            float(_nearest.nearest_scale(in_size, out_size, sf, torch.float64))
        if in_size > 4096:  # the tables' length is in_size + 1
            continue
        for rules in _nearest.RULES:
            want = _nearest.window_starts(in_size, out_size, sf, rules).tolist()
            got = _nearest.window_starts_ints(in_size, out_size, sf, rules)
            assert list(got) == want, (rules, in_size, out_size, sf)


# --- the launchers on fake tensors (issue: .max() and torch.equal on the window tables) ---------

# (top hw, grad hw, scale, layout, rules): uniform 2x windows, odd and uneven ones, windows too
# large to unroll (a loop), channels_last, the CPU rules.
BACKWARD_CASES = [((8, 16), (16, 32), None, "nchw", "cuda"),
                  ((25, 38), (50, 75), None, "nchw", "cuda"),
                  ((4, 8), (100, 152), None, "nchw", "cuda"),
                  ((5, 7), (11, 15), None, "nhwc", "cuda"),
                  ((4, 6), (12, 9), (3.0, 1.5), "nchw", "cpu"),
                  ((10, 10), (20, 20), 2.05, "nhwc", "cpu")]


def fake_like(t, device):
    """Inside a FakeTensorMode: a tensor of t's sizes, strides and dtype on `device`."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def same_launch(real, fake, device):
    """Both Launches of one kernel with the same grid, scalars and constexprs; the fake one's
    tensors fake tensors on `device`, of the real ones' sizes and dtypes."""
    assert real.kernel is fake.kernel and real.grid == fake.grid and real.kwargs == fake.kwargs
    for r, f in zip(real.args, fake.args, strict=True):
        if isinstance(r, torch.Tensor):
            assert isinstance(f, FakeTensor) and f.device.type == device
            assert (f.shape, f.dtype) == (r.shape, r.dtype)
        else:
            assert r == f


@pytest.mark.parametrize("device", ["cpu", "cuda"])  # fake CUDA tensors need no GPU
@pytest.mark.parametrize("top_hw,grad_hw,scale,layout,rules", BACKWARD_CASES)
def test_backward_launcher_runs_on_fake_tensors(device, top_hw, grad_hw, scale, layout, rules):
    """What torch.compile does with the triton op (its fake kernel is the launcher): the same
    launch as on real tensors, no data read (before: DataDependentOutputException from the
    window tables' .max())."""
    from fpnops.bench.triton_targets import _tensor
    from fpnops.triton import upsample_add as ua

    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    grad = _tensor((2, 16, *grad_hw), torch.float16, layout)
    real, fake = [], []
    ua.launch_backward_top(grad, *top_hw, sh, sw, rules, run=real.append)
    with FakeTensorMode():
        out = ua.launch_backward_top(fake_like(grad, device), *top_hw, sh, sw, rules,
                                     run=fake.append)
    assert isinstance(out, FakeTensor) and out.shape == (2, 16, *top_hw)
    same_launch(real[0], fake[0], device)
    hs, ws = real[0].args[2:4]
    assert hs.tolist() == _nearest.window_starts(top_hw[0], grad_hw[0], sh, rules).tolist()
    assert ws.tolist() == _nearest.window_starts(top_hw[1], grad_hw[1], sw, rules).tolist()


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_forward_launcher_runs_on_fake_tensors(layout):
    from fpnops.bench.triton_targets import _tensor
    from fpnops.triton import upsample_add as ua

    for rules in _nearest.RULES:
        top = _tensor((2, 16, 5, 7), torch.float64, layout)
        lat = _tensor((2, 16, 11, 15), torch.float64, layout)
        real, fake = [], []
        ua.launch_forward(top, lat, None, None, rules, run=real.append)
        with FakeTensorMode():
            ua.launch_forward(fake_like(top, "cuda"), fake_like(lat, "cuda"), None, None, rules,
                              run=fake.append)
        same_launch(real[0], fake[0], "cuda")


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile_traces_the_triton_ops_forward_and_backward(dynamic):
    """torch.compile with autograd through the triton ops, traced as on a GPU: the joint graph
    holds both kernels (the backward's window tables as its constants). Before: the backward's
    fake kernel read data, and tracing failed."""
    got = run_compiled(f"""
        import json
        import torch
        import fpnops
        from torch._dynamo.backends.common import aot_autograd
        from fpnops.bench.triton_targets import gpu_target

        class Captured(Exception):
            pass

        graphs = []

        def partition(joint, *args, **kwargs):
            graphs.append(joint)
            raise Captured

        def step(top, lat):
            return torch.ops.fpnops.upsample_add_triton(top, lat, None, None) * 2

        top = torch.randn(2, 3, 10, 14, requires_grad=True)
        lat = torch.randn(2, 3, 21, 29)
        backend = aot_autograd(fw_compiler=lambda gm, _: gm, partition_fn=partition)
        with gpu_target(90):
            try:
                torch.compile(step, backend=backend, fullgraph=True, dynamic={dynamic})(top, lat)
            except Exception as e:
                assert "Captured" in str(e), e
        (joint,) = graphs
        hops = [n for n in joint.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
        print(json.dumps(dict(kernels=len(hops),
                              bwd={{k: v for k, v in hops[1].kwargs["kwargs"].items()
                                   if k in ("TH", "TW", "max_wh", "max_ww", "UNIFORM_W")}},
                              tables=[joint._tensor_constant0.tolist(),
                                      joint._tensor_constant1.tolist()])))
    """)
    assert got["kernels"] == 2
    assert got["bwd"] == dict(TH=10, TW=14, max_wh=3, max_ww=3, UNIFORM_W=False)
    assert got["tables"] == [_nearest.window_starts(10, 21, None, "cpu").tolist(),
                             _nearest.window_starts(14, 29, None, "cpu").tolist()]


# --- the window tables' cache ----------------------------------------------------------------

def test_window_tables_are_built_once_per_sizes_scale_rules_and_device():
    """Before: two host-to-device copies a call. Fake tables (tracing) are never kept. The
    cached tables are read only."""
    from fpnops.triton import upsample_add as ua

    def tables(grad, top_hw, scale=None, rules="cuda"):
        spec = []
        ua.launch_backward_top(grad, *top_hw, scale, scale, rules, run=spec.append)
        return spec[0].args[2:4]

    def want(in_size, out_size, scale=None, rules="cuda"):
        return _nearest.window_starts(in_size, out_size, scale, rules).tolist()

    grad = torch.randn(2, 8, 22, 30)
    hs, ws = tables(grad, (11, 15))
    assert hs.dtype == torch.int32 and hs.tolist() == want(11, 22) and ws.tolist() == want(15, 30)
    again = tables(torch.randn(1, 4, 22, 30), (11, 15))  # other n, c: same tables
    assert again[0] is hs and again[1] is ws
    assert tables(grad, (11, 15), rules="cpu")[0] is not hs
    other = tables(grad, (11, 15), scale=2.0)
    assert other[0] is not hs and other[0].tolist() == want(11, 22, 2.0)
    with FakeTensorMode():
        fake = tables(torch.empty(2, 8, 26, 34), (13, 17))
    assert all(isinstance(t, FakeTensor) for t in fake)
    assert all(type(t) is torch.Tensor for t in tables(torch.randn(2, 8, 26, 34), (13, 17)))


# --- the device guard ------------------------------------------------------------------------

class DeviceRecorder:
    """Stands in for torch.cuda.device (no GPU here): records which device is current."""
    current = None

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        self.prev, DeviceRecorder.current = DeviceRecorder.current, self.device

    def __exit__(self, *exc):
        DeviceRecorder.current = self.prev


def test_launch_runs_under_its_tensors_device(monkeypatch):
    """A launch of tensors on cuda:1 makes cuda:1 current for the kernel (Triton launches on
    the current device). Before: no guard, the kernel ran on whatever device was current."""
    from fpnops.triton import _launch, upsample_add as ua

    with FakeTensorMode():
        top = torch.empty(1, 8, 4, 4, device="cuda:1")
        lat = torch.empty(1, 8, 8, 8, device="cuda:1")
        spec = []
        ua.launch_forward(top, lat, None, None, "cuda", run=spec.append)
    ran_on = []

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: ran_on.append(DeviceRecorder.current)

    monkeypatch.setattr(torch.cuda, "device", DeviceRecorder)
    monkeypatch.setattr(_launch, "traceable", lambda kernel: Kernel())
    _launch.launch(spec[0])  # fake tensors (tracing launches nothing): no guard, no GPU needed
    monkeypatch.setattr(_launch, "is_fake", lambda t: False, raising=False)  # taken for real
    _launch.launch(spec[0])
    assert ran_on == [None, torch.device("cuda:1")] and DeviceRecorder.current is None
    # CPU tensors (the interpreter): no guard
    assert isinstance(_launch.device_guard((torch.empty(1), 3)), contextlib.nullcontext)


# --- wrap_triton and the interpreter ----------------------------------------------------------

@pytest.mark.skipif(not _backend.triton_runs_on("cpu"), reason="needs Triton's interpreter")
def test_interpreted_kernels_launch_without_wrap_triton(monkeypatch):
    """Under TRITON_INTERPRET=1 @triton.jit gives an InterpretedFunction, which torch 2.11's
    wrap_triton refuses ("wrap_triton only works on functions annotated with triton.jit or
    triton.autotune"; later versions hand it back): the launch calls it itself. wrap_triton is
    2.11's here. Before: every interpreter launch raised on torch 2.11. A compiled kernel (a
    JITFunction) still goes through wrap_triton, so that torch.compile traces its launch."""
    import triton
    from triton.runtime.jit import JITFunction

    from fpnops.triton import _launch

    def wrap_triton_2_11(kernel):
        if not isinstance(kernel, JITFunction):
            raise RuntimeError("wrap_triton only works on functions annotated with triton.jit")
        return ("wrapped", kernel)

    monkeypatch.setattr(_launch, "wrap_triton", wrap_triton_2_11)
    top, lat = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 8, 10)
    out = fpnops.upsample_add(top, lat, backend="triton")
    assert torch.equal(out, lat + torch.nn.functional.interpolate(top, size=(8, 10)))
    def kernel(x):
        pass

    jit = JITFunction(kernel)
    assert _launch.traceable(jit) == ("wrapped", jit)
    assert not isinstance(triton.jit(kernel), JITFunction)  # what the interpreter gives


# --- size specialisation -----------------------------------------------------------------------

def test_new_sizes_reuse_the_compiled_kernels():
    """Two sizes in different classes of Triton's int specialisation (32 vs 33, 16 vs 17:
    divisible by 16 or not), all else alike, compile one kernel for sm_90. Before: every int
    was specialised, so each pair compiled twice. numel, the pointers and the strides stay
    specialised (tests/test_triton_codegen.py: their 16-byte accesses)."""
    got = run_compiled("""
        import json
        import torch
        from fpnops.bench.triton_targets import _tensor, gpu_target
        from fpnops.triton import conv_bn_act as cv, upsample_add as ua

        def compiled(launcher):
            spec = []
            launcher(spec.append)
            (s,) = spec
            return s.kernel.warmup(*s.args, grid=s.grid, **s.kwargs)

        h = torch.float16

        def fwd(lat_h):  # the lateral's H
            return lambda run: ua.launch_forward(_tensor((2, 32, 16, 32), h),
                                                 _tensor((2, 32, lat_h, 64), h), None, None,
                                                 "cuda", run=run)

        def bwd(top_h):  # TH, with 2x windows
            return lambda run: ua.launch_backward_top(_tensor((2, 32, 2 * top_h, 64), h),
                                                      top_h, 32, None, None, "cuda", run=run)

        def conv(x_h):  # stride 2: HO = 16, 17 (WO = 32)
            w = torch.empty(64, 32, 1, 1, dtype=h)
            return lambda run: cv.launch_conv1x1(_tensor((2, 32, x_h, 64), h, "nhwc"), w, None,
                                                 [2, 2], None, True, run=run)

        out = {}
        with gpu_target(90):
            for name, make, sizes in (("fwd", fwd, (32, 33)), ("bwd", bwd, (16, 17)),
                                      ("conv", conv, (31, 33))):
                a, b = (compiled(make(size)) for size in sizes)
                out[name] = a is b
        out["unspecialised"] = {
            k.fn.__name__: sorted(p.name for p in k.params if p.do_not_specialize)
            for k in (ua._upsample_add_kernel, ua._backward_top_kernel, cv._conv1x1_kernel)}
        print(json.dumps(out))
    """)
    assert got["fwd"] and got["bwd"] and got["conv"], got
    assert got["unspecialised"] == {
        "_upsample_add_kernel": ["C", "H", "TH", "TW", "W"],
        "_backward_top_kernel": ["C", "TH", "TW", "max_wh", "max_ww"],
        "_conv1x1_kernel": ["HO", "STRIDE_H", "STRIDE_W", "WO"]}
