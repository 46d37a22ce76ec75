"""upsample_add: bit-identical to eager on every backend, dtype, layout and shape; autograd;
opcheck; torch.compile; empty inputs; regressions; the CUDA rules (through Triton)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import devices
from helpers import DTYPES, LAYOUTS, backends_for, make, run_generic_cpu

import fpnops
from fpnops.ops.upsample_add import upsample_add_reference

# (top h, w) -> (lateral H, W): 2x, odd 2x (25x38 -> 50x75), non-2x ratios, equal sizes,
# top larger than lateral, 1-pixel maps.
SHAPES = [((5, 7), (10, 14)), ((25, 38), (50, 75)), ((4, 6), (11, 13)), ((6, 5), (6, 5)),
          ((9, 8), (4, 5)), ((1, 1), (3, 2)), ((3, 4), (7, 17))]
SCALED = [((5, 7), 2.0, (10, 14)), ((4, 6), (3.0, 1.5), (12, 9)), ((10, 10), 2.05, (20, 20)),
          ((10, 9), 1.05, (10, 9)), ((7, 7), 0.5, (3, 3)),
          ((10, 10), 2.55, (25, 25))]


def each_backend():
    return [(d, b) for d in ["cpu", "cuda"] for b in backends_for(d)
            if d == "cpu" or torch.cuda.is_available()]


def check_exact(out, ref, same_strides=True):
    """Same values bit for bit; same strides as eager where the lateral has a memory format
    (for an arbitrary strided view eager keeps its odd dim order, we write NCHW)."""
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.equal(out, ref), f"max abs diff {(out.double() - ref.double()).abs().max()}"
    if same_strides:
        assert out.stride() == ref.stride(), f"strides {out.stride()} != eager {ref.stride()}"


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("top_hw,lat_hw", SHAPES)
def test_bit_identical_every_backend(device, dtype, top_hw, lat_hw):
    top = make((2, 5, *top_hw), dtype, device, "contiguous")
    for layout in LAYOUTS:
        lat = make((2, 5, *lat_hw), dtype, device, layout)
        ref = upsample_add_reference(top, lat)
        for backend in backends_for(device):
            check_exact(fpnops.upsample_add(top, lat, backend=backend), ref, layout != "strided")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("top_layout", LAYOUTS)
@pytest.mark.parametrize("lat_layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_mixed_layouts(device, top_layout, lat_layout, dtype):
    top = make((2, 16, 5, 6), dtype, device, top_layout)
    lat = make((2, 16, 11, 12), dtype, device, lat_layout)
    ref = upsample_add_reference(top, lat)
    for backend in backends_for(device):
        check_exact(fpnops.upsample_add(top, lat, backend=backend), ref, lat_layout != "strided")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("top_hw,scale,lat_hw", SCALED)
def test_scale_factor(device, dtype, top_hw, scale, lat_hw):
    """With scale_factor the index scale is 1/scale_factor (not in/out): 2.05 and 1.05 differ."""
    top = make((1, 3, *top_hw), dtype, device, "contiguous")
    lat = make((1, 3, *lat_hw), dtype, device, "channels_last")
    ref = upsample_add_reference(top, lat, scale)
    for backend in backends_for(device):
        check_exact(fpnops.upsample_add(top, lat, scale_factor=scale, backend=backend), ref)


def test_scale_factor_rule_is_not_size_rule():
    """Guards the test above: index scale 1/2.55 gives other values than 10/25."""
    top, lat = torch.randn(1, 1, 10, 10), torch.randn(1, 1, 25, 25)
    by_scale = fpnops.upsample_add(top, lat, scale_factor=2.55)
    assert torch.equal(by_scale, upsample_add_reference(top, lat, 2.55))
    assert not torch.equal(by_scale, fpnops.upsample_add(top, lat))


def test_wide_channels_vector_paths():
    """C and W long enough to go through the vectorised loops and their tails."""
    for dtype in DTYPES:
        for layout in ["contiguous", "channels_last"]:
            top = make((2, 67, 9, 33), dtype, "cpu", layout)
            lat = make((2, 67, 18, 67), dtype, "cpu", layout)
            check_exact(fpnops.upsample_add(top, lat), upsample_add_reference(top, lat))


def test_tall_narrow_maps_span_several_tiles():
    """The CPU kernel works in tiles of whole rows (~4096 elements): planes of several tiles,
    tile edges inside runs of repeated top rows."""
    for dtype in (torch.float32, torch.bfloat16):
        for layout in LAYOUTS:
            top = make((2, 3, 700, 2), dtype, "cpu", "contiguous")
            lat = make((2, 3, 1501, 3), dtype, "cpu", layout)
            check_exact(fpnops.upsample_add(top, lat), upsample_add_reference(top, lat),
                        layout != "strided")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("top_shape,lat_shape", [
    ((0, 4, 5, 6), (0, 4, 10, 12)), ((2, 0, 5, 6), (2, 0, 10, 12)), ((2, 4, 5, 6), (2, 4, 0, 12)),
    ((2, 4, 0, 0), (2, 4, 0, 0)), ((2, 4, 5, 6), (2, 4, 10, 0))])
def test_empty(device, top_shape, lat_shape):
    top = torch.randn(top_shape, device=device, requires_grad=True)
    lat = torch.randn(lat_shape, device=device, requires_grad=True)
    for backend in backends_for(device):
        out = fpnops.upsample_add(top, lat, backend=backend)
        assert out.shape == lat.shape and out.numel() == 0
        out.sum().backward()
        if top.grad is not None:
            assert top.grad.shape == top.shape and (top.grad == 0).all()
        top.grad = None


# --- autograd ------------------------------------------------------------------------------

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("top_hw,lat_hw,scale", [((3, 4), (7, 9), None), ((3, 4), (6, 8), 2.0),
                                                 ((5, 4), (3, 7), None)])
def test_gradcheck(device, top_hw, lat_hw, scale):
    for backend in backends_for(device):
        top = make((2, 3, *top_hw), torch.float64, device, "contiguous", requires_grad=True)
        lat = make((2, 3, *lat_hw), torch.float64, device, "channels_last", requires_grad=True)

        def fn(t, l):
            return fpnops.upsample_add(t, l, scale_factor=scale, backend=backend)

        # Triton's CPU interpreter takes ~30 ms a launch: the full Jacobians (one launch per
        # input element) cost a minute per case there, so it checks random projections of them.
        fast = backend == "triton" and device == "cpu"
        assert torch.autograd.gradcheck(fn, (top, lat), fast_mode=fast), backend
        assert torch.autograd.gradgradcheck(fn, (top, lat), fast_mode=fast), backend


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grads_match_eager(device, dtype, layout):
    top = make((2, 6, 7, 5), dtype, device, layout, requires_grad=True)
    lat = make((2, 6, 15, 16), dtype, device, layout, requires_grad=True)
    grad = make((2, 6, 15, 16), dtype, device, layout)
    ref_top, ref_lat = torch.autograd.grad(upsample_add_reference(top, lat), (top, lat), grad)
    for backend in backends_for(device):
        g_top, g_lat = torch.autograd.grad(fpnops.upsample_add(top, lat, backend=backend),
                                           (top, lat), grad)
        # Sums in eager's order, in opmath from 0, rounded once: bit for bit (was a 1-ulp
        # tolerance for float16/bfloat16 before the backward matched eager exactly).
        assert torch.equal(g_lat, ref_lat), backend
        assert torch.equal(g_top, ref_top), backend


@pytest.mark.parametrize("device", devices())
def test_backward_deterministic(device):
    top = make((2, 8, 13, 11), torch.float32, device, "contiguous", requires_grad=True)
    lat = make((2, 8, 40, 35), torch.float32, device, "channels_last")
    grad = torch.randn_like(lat)
    for backend in backends_for(device):
        runs = [torch.autograd.grad(fpnops.upsample_add(top, lat, backend=backend), top, grad)[0]
                for _ in range(3)]
        assert all(torch.equal(runs[0], r) for r in runs[1:]), backend


def test_grad_of_top_larger_than_lateral_is_zero_where_unread():
    top = torch.randn(1, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    lat = torch.randn(1, 1, 4, 4, dtype=torch.float64)
    fpnops.upsample_add(top, lat).sum().backward()
    ref = torch.autograd.grad(upsample_add_reference(top, lat).sum(), top)[0]
    assert torch.equal(top.grad, ref) and (ref == 0).any() and (ref == 1).any()


# --- registration: opcheck and torch.compile ------------------------------------------------

def sample_inputs(device, requires_grad):
    mk = lambda shape, layout: make(shape, torch.float32, device, layout, requires_grad)  # noqa: E731
    return [
        (mk((2, 3, 5, 7), "contiguous"), mk((2, 3, 10, 14), "contiguous"), None, None),
        (mk((2, 3, 5, 7), "channels_last"), mk((2, 3, 11, 15), "channels_last"), None, None),
        (mk((1, 4, 4, 6), "strided"), mk((1, 4, 12, 9), "contiguous"), 3.0, 1.5),
    ]


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    ops = {"native": (torch.ops.fpnops.upsample_add, torch.ops.fpnops.upsample_add_backward_top),
           "triton": (torch.ops.fpnops.upsample_add_triton,
                      torch.ops.fpnops.upsample_add_backward_top_triton)}
    for backend in backends_for(device):
        if backend == "torch":
            continue
        fwd, bwd = ops[backend]
        for requires_grad in (False, True):
            for args in sample_inputs(device, requires_grad):
                torch.library.opcheck(fwd, args)
        torch.library.opcheck(bwd, (torch.randn(2, 3, 11, 15, device=device), 5, 7, None, None))
        torch.library.opcheck(bwd, (torch.randn(2, 3, 12, 9, device=device), 4, 6, 3.0, 1.5))


@pytest.mark.parametrize("device", devices())
def test_torch_compile_fullgraph(device):
    def fpn_step(p5, c4, c3):
        p4 = fpnops.upsample_add(p5, c4)
        return fpnops.upsample_add(p4, c3) * 2

    args = [make((1, 8, 5, 6), torch.float32, device, "contiguous"),
            make((1, 8, 10, 12), torch.float32, device, "contiguous"),
            make((1, 8, 19, 23), torch.float32, device, "channels_last")]
    ref = fpn_step(*args)
    torch._dynamo.reset()
    out = torch.compile(fpn_step, fullgraph=True)(*args)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("device", devices())
def test_int64_indexing_past_2_pow_31(device):
    """A lateral of more than 2**31 elements (4.3 GB in float16): the last rows must be right."""
    def grid(n):  # distinct rows and columns, built by one broadcast add (fast)
        col = torch.rand(n, 1, dtype=torch.float16, device=device)
        row = torch.rand(1, n, dtype=torch.float16, device=device)
        return (col + row + 1)[None, None]

    top, lat = grid(23171), grid(46342)
    assert lat.numel() > 2**31
    out = fpnops.upsample_add(top, lat)
    # For an exact 2x upsample, output rows 2k, 2k+1 read top row k: check the tail by slices.
    ref_tail = upsample_add_reference(top[:, :, -3:], lat[:, :, -6:])
    assert torch.equal(out[:, :, -6:], ref_tail)
    assert torch.equal(out[:, :, :4], upsample_add_reference(top[:, :, :2], lat[:, :, :4]))


def test_generic_cpu_kernels_without_avx2(tmp_path):
    """The CPU kernels are compiled twice (generic at::vec and AVX2) and picked at run time by
    ATen's CPU capability: run the generic copy in a fresh process and check it bit for bit."""
    import textwrap

    code = textwrap.dedent("""
        import torch, fpnops
        from fpnops.ops.upsample_add import upsample_add_reference as ref
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        torch.manual_seed(0)
        for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            for fmt in (torch.contiguous_format, torch.channels_last):
                top = torch.randn(2, 37, 9, 20, dtype=dtype).contiguous(memory_format=fmt)
                lat = torch.randn(2, 37, 19, 41, dtype=dtype).contiguous(memory_format=fmt)
                assert torch.equal(fpnops.upsample_add(top, lat), ref(top, lat)), (dtype, fmt)
                g = torch.randn_like(lat)
                t = top.detach().requires_grad_()
                a = torch.autograd.grad(fpnops.upsample_add(t, lat), t, g)[0]
                b = torch.autograd.grad(ref(t, lat), t, g)[0]
                assert torch.equal(a, b), (dtype, fmt)
                # NaNs in the vector loops and the scalar tails: eager's bits
                bits = {torch.float64: torch.int64, torch.float32: torch.int32}.get(dtype, torch.int16)
                top[:, ::2, :, ::3] = float("nan")
                lat[..., -1] = float("nan")
                out, want = fpnops.upsample_add(top, lat), ref(top, lat)
                assert torch.equal(out.contiguous().view(bits), want.contiguous().view(bits)), (dtype, fmt)
        print("generic ok")
    """)
    run_generic_cpu(code, tmp_path)


# --- regressions: each failed before upsample_add followed eager's rules per kernel ----------

BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(BITS[a.dtype]),
                                              b.contiguous().view(BITS[b.dtype]))


def test_float64_generic_rule_takes_the_product_in_double():
    """out_h + out_w > 128, 1 channel: eager's generic CPU kernel, whose float64 scale and
    product are doubles (2/122 * 61 rounds to 1.0; in float32 it floors to 0)."""
    top = torch.arange(2.0, dtype=torch.float64).view(1, 1, 2, 1)
    lat = torch.zeros(1, 1, 122, 8, dtype=torch.float64)
    assert upsample_add_reference(top, lat)[0, 0, 61, 0] == 1.0
    for backend in backends_for("cpu"):
        out = fpnops.upsample_add(top, lat, backend=backend)
        assert out[0, 0, 61, 0] == 1.0 and torch.equal(out, upsample_add_reference(top, lat)), backend


@pytest.mark.parametrize("scale", [1.0000001, 2.001])
def test_scale_factor_next_to_one_and_two(scale):
    """The generic CPU kernel has no out == in / out == 2 * in shortcuts: with these scale
    factors almost every element read the wrong top cell."""
    top = torch.randn(1, 1, 100, 100)
    size = math.floor(100 * scale)
    lat = torch.randn(1, 1, size, size)
    ref = upsample_add_reference(top, lat, scale)
    for backend in backends_for("cpu"):
        assert torch.equal(fpnops.upsample_add(top, lat, scale_factor=scale, backend=backend), ref), backend


NAN_SHAPES = [((1, 1, 2, 2), (1, 1, 4, 4)),        # eager: all in its scalar loop
              ((1, 1, 5, 10), (1, 1, 10, 20)),     # vector body + a scalar tail of 8
              ((2, 8, 64, 64), (2, 8, 128, 129)),  # past 32768 elements: split across threads
              ((1, 20, 6, 7), (1, 20, 12, 14))]    # channels_last below


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("top_shape,lat_shape", NAN_SHAPES)
def test_nan_bits_match_eager(dtype, top_shape, lat_shape):
    """Which NaN eager writes depends on the loop that wrote it (bfloat16: 0xffff from at::vec,
    0x7fc0 from the scalar conversion; two NaN operands: different payloads kept). NaNs with
    payloads in top, lateral and the gradient, both formats."""
    bits = BITS[dtype]
    gen = torch.Generator().manual_seed(3)
    for fmt in (torch.contiguous_format, torch.channels_last):
        top = torch.randn(top_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
        lat = torch.randn(lat_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
        grad = torch.randn(lat_shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
        nan = int(torch.tensor(float("nan"), dtype=dtype).view(bits))
        for t, step, payload in ((top, 3, 1), (lat, 5, 2), (grad, 4, 3)):
            in_memory_order = t.as_strided((t.numel(),), (1,)).view(bits)
            in_memory_order[::step] = nan | payload
            in_memory_order[-1] = nan | payload  # the last scalar tail
        t_ref = top.detach().requires_grad_()
        ref = upsample_add_reference(t_ref, lat)
        ref_grad = torch.autograd.grad(ref, t_ref, grad)[0]
        for backend in ("native", "torch"):
            t = top.detach().requires_grad_()
            out = fpnops.upsample_add(t, lat, backend=backend)
            assert same_bits(out, ref.detach()), (backend, fmt)
            assert same_bits(torch.autograd.grad(out, t, grad)[0], ref_grad), (backend, fmt)


@pytest.mark.parametrize("lat_layout", ["strided", "degenerate"])
def test_torch_backend_output_in_laterals_memory_format(lat_layout):
    """Eager's add keeps a strided view's order of strides (and picks its own strides for size-1
    dims); backend="torch" returns the lateral's memory format, as the others do."""
    top = torch.randn(2, 4, 3, 4).contiguous(memory_format=torch.channels_last)
    if lat_layout == "strided":
        lat = make((2, 4, 7, 9), torch.float32, "cpu", "strided")
    else:
        lat = torch.randn(2, 4, 1, 9)
    ref = upsample_add_reference(top, lat)
    native = fpnops.upsample_add(top, lat, backend="native")
    out = fpnops.upsample_add(top, lat, backend="torch")
    assert torch.equal(out, ref) and ref.stride() != native.stride()
    assert out.stride() == native.stride() == torch.empty(lat.shape).stride()


# --- the CUDA rules, run on CPU tensors through the Triton kernels ----------------------------
# No GPU here: the Triton launchers take the rules as an argument, and these tests hold their
# CUDA rules against a plain-Python model written from ATen's CUDA source (UpSampleNearest2d.cu,
# UpSample.cuh). They check our implementation of that rule, not eager (which needs a GPU).

def cuda_model_source(in_size, out_size, sf):
    """upsample_nearest2d_out_frame: h1 = in == out ? h2 : min(floor(float(h2) * s), in - 1),
    s = float(1 / sf) or float(in) / float(out)."""
    s = np.float32(1.0 / sf) if sf else np.float32(in_size) / np.float32(out_size)
    return [i if in_size == out_size else min(int(np.floor(np.float32(i) * s)), in_size - 1)
            for i in range(out_size)]


def cuda_model_windows(in_size, out_size, sf):
    """upsample_nearest2d_backward_out_frame: cell i sums rows [start(i), start(i + 1)),
    start(i) = min(ceil(float(i) * s), out), s = float(sf) or float(out) / float(in)."""
    s = np.float32(sf) if sf else np.float32(out_size) / np.float32(in_size)
    return [min(int(np.ceil(np.float32(i) * s)), out_size) for i in range(in_size + 1)]


def cuda_model(top, lat, grad, sh, sw):
    """(forward, grad of top) as eager's CUDA kernels compute them, in plain loops."""
    opmath = torch.float64 if top.dtype == torch.float64 else torch.float32
    (n, c, th, tw), (_, _, h, w) = top.shape, lat.shape
    rows, cols = cuda_model_source(th, h, sh), cuda_model_source(tw, w, sw)
    up = top[:, :, rows][:, :, :, cols]
    out = (lat.to(opmath) + up.to(opmath)).to(top.dtype)
    if (th, tw) == (h, w):  # eager copies
        return out, grad.clone()
    h0, w0 = cuda_model_windows(th, h, sh), cuda_model_windows(tw, w, sw)
    gtop = torch.empty(n, c, th, tw, dtype=opmath)
    for i in range(th):
        for j in range(tw):
            acc = torch.zeros(n, c, dtype=opmath)
            for oh in range(h0[i], h0[i + 1]):
                for ow in range(w0[j], w0[j + 1]):
                    acc = acc + grad[:, :, oh, ow].to(opmath)
            gtop[:, :, i, j] = acc
    return out, gtop.to(top.dtype)


CUDA_RULE_CASES = [  # (top hw, lateral hw, scale): shortcuts CUDA lacks, windows that skip
    ((5, 7), (10, 14), 2.0), ((10, 9), (10, 9), 1.05), ((10, 10), (20, 20), 2.05),
    ((3, 4), (7, 9), None), ((9, 8), (4, 5), None), ((7, 7), (3, 3), 0.5), ((6, 5), (6, 5), None),
    ((2, 3), (122, 9), None), ((11, 13), (33, 13), 3.0), ((4, 6), (12, 9), (3.0, 1.5)),
    ((5, 4), (5, 9), None), ((8, 12), (2, 3), 1 / 3)]


@pytest.mark.skipif("triton" not in backends_for("cpu"), reason="Triton (interpreter) not available")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("top_hw,lat_hw,scale", CUDA_RULE_CASES)
def test_triton_cuda_rules_match_the_model_of_atens_cuda_source(dtype, top_hw, lat_hw, scale):
    from fpnops.triton.upsample_add import launch_backward_top, launch_forward

    sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
    top = make((2, 3, *top_hw), dtype, "cpu", "contiguous")
    lat = make((2, 3, *lat_hw), dtype, "cpu", "channels_last")
    grad = make((2, 3, *lat_hw), dtype, "cpu", "strided")
    grad[0, 0, 0, 0] = -0.0
    want_out, want_gtop = cuda_model(top, lat, grad, sh, sw)
    out = launch_forward(top, lat, sh, sw, rules="cuda")
    gtop = launch_backward_top(grad, *top_hw, sh, sw, rules="cuda")
    assert same_bits(out, want_out)
    assert same_bits(gtop, want_gtop)


@pytest.mark.skipif("triton" not in backends_for("cpu"), reason="Triton (interpreter) not available")
def test_cuda_and_cpu_rules_differ_where_eager_does():
    """Guards the test above: the rules argument changes the answer where ATen's CPU and CUDA
    kernels disagree (forward with a shortcut the CUDA kernel lacks; the CUDA backward is not
    the transpose of its forward)."""
    from fpnops.triton.upsample_add import launch_backward_top, launch_forward

    top, lat = torch.randn(1, 1, 10, 10), torch.randn(1, 1, 20, 20)
    assert not torch.equal(launch_forward(top, lat, 2.05, 2.05, rules="cuda"),
                           launch_forward(top, lat, 2.05, 2.05, rules="cpu"))
    grad = torch.randn(1, 1, 10, 10)  # rows: 10 -> 10 at 1.05 (all sizes equal would copy)
    assert not torch.equal(launch_backward_top(grad, 10, 5, 1.05, 2.0, rules="cuda"),
                           launch_backward_top(grad, 10, 5, 1.05, 2.0, rules="cpu"))


def test_cpp_rules_match_the_python_twin_and_the_cuda_model():
    """csrc/nearest_index.h (tabulated by fpnops::_nearest_rule_table) and fpnops/ops/_nearest.py
    agree on every rule; their CUDA rules also agree with the model of ATen's CUDA source above,
    which is how the C++ CUDA rules get run without a GPU."""
    from fpnops.ops import _nearest

    table = torch.ops.fpnops._nearest_rule_table
    kinds = {"nearest_idx": _nearest.NEAREST_IDX, "generic_float": _nearest.GENERIC_FLOAT,
             "generic_double": _nearest.GENERIC_DOUBLE, "cuda": _nearest.CUDA}
    rng = np.random.default_rng(5)
    cases = [(2, 122, None), (10, 10, 1.05), (10, 20, 2.05), (100, 100, 1.0000001), (100, 200, 2.001),
             (3, 1, 1 / 3), (7, 3, 0.5), (1, 61, 61.0), (5, 10, None), (9, 4, None)]
    cases += [(int(rng.integers(1, 80)), int(rng.integers(1, 200)), None) for _ in range(150)]
    cases += [(i, max(1, math.floor(i * s)), s) for i, s in
              ((int(rng.integers(1, 60)), float(rng.choice([rng.uniform(0.2, 5), rng.integers(2, 70)])))
               for _ in range(150))]
    for in_size, out_size, sf in cases:
        for rule, kind in kinds.items():
            twin = _nearest.nearest_source(in_size, out_size, sf, kind)
            assert torch.equal(table(in_size, out_size, sf, rule), twin), (rule, in_size, out_size, sf)
        assert table(in_size, out_size, sf, "cuda").tolist() == cuda_model_source(in_size, out_size, sf)
        back = table(in_size, out_size, sf, "cuda_backward")
        assert back.tolist() == cuda_model_windows(in_size, out_size, sf)
        assert torch.equal(back, _nearest.cuda_window_starts(in_size, out_size, sf))
