"""fpnops' own CUDA kernels (csrc/cuda/*_kernel.cuh) without a GPU: their code and launch plans,
compiled for the CPU (tests/cuda_emulation), run over every thread of every block of the grid
the GPU launch would use, bit for bit against eager arithmetic with eager's CUDA rules (and
against eager itself where its CPU rules are the same). Each case states the kernel variant it
must take (16-byte packs, narrower packs where a row is not a multiple of 16 bytes, or scalar;
top / grad read as packs; NCHW / NHWC), so every variant is shown to run; 64-bit index math
and the grid-stride loop are reached with small tensors by lowering the launch limits (and the
boundary of the 32-bit choice is checked). conv_bn_act's launcher runs whole too (its output
in eager's CUDA layout: ATen's cuDNN rule), and the compute-sanitizer list
(cuda_emulation/variants.py) is checked to reach every variant.

With a GPU, the same cases run through fpnops' CUDA kernels against eager on the GPU, with the
same lowered limits (fpnops::_set_cuda_launch_limits), their variant read from the same launch
plans. 64-bit index math there also comes from real offsets past 2**31: upsample_add's operand
with a sample 2**31 elements after the other, and an epilogue of more than 2**31 elements."""
import contextlib
import functools

import pytest
import torch
from conftest import CUDA_SKIP
from helpers import assert_bad_inputs

import cuda_emulation
from fpnops import _extension
from fpnops.ops import _nearest
from fpnops.ops.upsample_add import upsample_add_reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
VEC = {torch.float64: 2, torch.float32: 4, torch.float16: 8, torch.bfloat16: 8}  # 16 bytes
OPMATH = {torch.float64: torch.float64, torch.float32: torch.float32, torch.float16: torch.float32,
          torch.bfloat16: torch.float32}
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}
DEVICES = ["emulated", pytest.param("cuda", marks=CUDA_SKIP)]
HUGE = 2**31  # a sample stride that forces 64-bit index math on the GPU


@pytest.fixture(scope="session")
def emu():
    """torch.ops.fpnops_emu (built once per session; None where it cannot be built, a failure
    there with FPNOPS_REQUIRE_EMULATION=1)."""
    why = cuda_emulation.unavailable()
    if why and cuda_emulation.REQUIRED:
        pytest.fail(f"FPNOPS_REQUIRE_EMULATION=1 but {why}")
    return None if why else cuda_emulation.load()


def need(emu, device):
    if emu is None and device == "emulated":
        pytest.skip(cuda_emulation.unavailable())


# --- inputs --------------------------------------------------------------------------------

def values(shape, dtype, seed, special):
    """Random normal values (never zero); with `special`, NaN, +-inf and -0.0 at random places
    and at the last element (the end of the last pack or of a scalar tail)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if special and t.numel():
        flat = t.view(-1)
        idx = torch.randperm(flat.numel(), generator=gen)[:max(4, flat.numel() // 16)]
        for i, v in enumerate((float("nan"), float("inf"), float("-inf"), -0.0)):
            flat[idx[i::4]] = v
        flat[-1] = float("nan")
    return t


def lay_out(t, layout, device):
    """A copy of `t` (dense NCHW, on the CPU) on `device` in `layout`: nchw / nhwc dense;
    nchw+1 / nhwc+1 dense one element past a 16-byte boundary (storage offset 1), nchw+2 /
    nhwc+2 two elements past (aligned to 2 elements, not to 16 bytes but in float64); strided:
    channels before rows in memory and every other column; nhwc_padded: channels_last with 3
    unused channels a pixel."""
    n, c, h, w = t.shape
    new = functools.partial(torch.empty, dtype=t.dtype, device=device)
    if layout == "nchw":
        out = new(n, c, h, w)
    elif layout == "nhwc":
        out = new(n, h, w, c).permute(0, 3, 1, 2)
    elif layout in ("nchw+1", "nchw+2"):
        k = int(layout[-1])
        out = new(t.numel() + k)[k:].view(n, c, h, w)
    elif layout in ("nhwc+1", "nhwc+2"):
        k = int(layout[-1])
        out = new(t.numel() + k)[k:].view(n, h, w, c).permute(0, 3, 1, 2)
    elif layout == "strided":
        out = new(n, h, c, 2 * w + 1).permute(0, 2, 1, 3)[..., 1::2]
    elif layout == "nhwc_padded":
        out = new(n, h, w, c + 3)[..., :c].permute(0, 3, 1, 2)
    else:
        raise ValueError(layout)
    return out.copy_(t)


@functools.lru_cache(maxsize=1)
def _huge_storage(dtype):
    return torch.empty(HUGE + 2**22, dtype=dtype, device="cuda")


def far_apart(t):
    """`t` (N == 2, on the GPU) with its second sample HUGE elements after the first: the same
    layout within a sample, offsets past 2**31 (64-bit index math in fpnops' kernels)."""
    assert t.shape[0] == 2 and t.storage_offset() + t[0].numel() * 4 < 2**22
    view = _huge_storage(t.dtype).as_strided(t.shape, (HUGE, *t.stride()[1:]), t.storage_offset())
    return view.copy_(t)


def assert_same(out, ref, what):
    """Bit for bit, except the payload of NaNs (eager's CPU NaNs differ by which of its loops
    wrote them, the GPU's are canonical): NaN at the same places, every other bit equal."""
    assert out.shape == ref.shape and out.dtype == ref.dtype, what
    ref = ref.to(out.device)
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan), f"{what}: NaN at other places"
    a = out.masked_fill(nan, 0).contiguous().view(BITS[out.dtype])
    b = ref.masked_fill(nan, 0).contiguous().view(BITS[ref.dtype])
    bad = (a != b).nonzero()
    assert len(bad) == 0, (f"{what}: {len(bad)} elements differ, first at {bad[0].tolist()}: "
                           f"{out[tuple(bad[0])].item()} != {ref[tuple(bad[0])].item()}")


def describe(plan, full):
    """The launch plan (fpnops_emu's list) in words, `full` the dtype's 16-byte width: 'nhwc
    packed+operand' (16-byte packs, the operand read as packs too), 'nchw packed4' (packs of 4
    elements, narrower than 16 bytes), 'nchw scalar' etc.; 'none' when no kernel ran (empty,
    zero, or eager's copy), and the index width."""
    vec, channels_last, operand_packed, index32, _work, blocks = plan
    if blocks == 0:
        return "none", None
    path = "scalar"
    if vec > 1:
        path = "packed" + ("" if vec == full else str(vec)) + ("+operand" if operand_packed else "")
    return f"{'nhwc' if channels_last else 'nchw'} {path}", 32 if index32 else 64


def limits(case, index):
    """fpnops_emu's (max_blocks, max_index32): the case's grid cap, and 0 to force 64 bits."""
    return case.get("max_blocks", -1), (0 if index == 64 else -1)


@contextlib.contextmanager
def gpu_limits(max_blocks, max_index32):
    """fpnops' CUDA launchers under the emulation's lowered limits (-1: the real launch's)."""
    torch.ops.fpnops._set_cuda_launch_limits(max_blocks, max_index32)
    try:
        yield
    finally:
        torch.ops.fpnops._set_cuda_launch_limits(-1, -1)


def want_of(case, dtype):
    """The case's variant for `dtype`: one for all, or by the 16-byte width {8: ..., 4: ..., 2: ...}."""
    want = case["want"]
    return want[VEC[dtype]] if isinstance(want, dict) else want


# --- upsample_add forward --------------------------------------------------------------------

def rows_of(n, layout="nchw", operand=""):
    """The variant for rows of n elements (4 and 2 divide n, 8 does not): 8-element dtypes
    (16-bit) in packs of 4 (8 bytes), the others in 16-byte packs."""
    return {8: f"{layout} packed4{operand}", 4: f"{layout} packed{operand}", 2: f"{layout} packed{operand}"}


ROWS_OF_2 = {8: "nchw packed2", 4: "nchw packed2", 2: "nchw packed"}  # 2 divides, 4 does not


# (top shape, lateral (H, W), scale, top layout, lateral layout, the variant); "operand": top
# read as packs. N == 2 throughout (far_apart).
FORWARD = {
    "nchw_2x": dict(top=(2, 3, 5, 8), hw=(10, 16), lay=("nchw", "nchw"), want="nchw packed"),
    "nchw_odd": dict(top=(2, 3, 4, 7), hw=(9, 13), lay=("nchw", "nchw"), want="nchw scalar"),
    "nchw_lateral_misaligned": dict(top=(2, 3, 5, 8), hw=(10, 16), lay=("nchw", "nchw+1"),
                                    want="nchw scalar"),
    "nchw_top_strided": dict(top=(2, 3, 5, 8), hw=(11, 16), lay=("strided", "nchw"),
                             want="nchw packed"),
    "nchw_top_misaligned": dict(top=(2, 3, 5, 8), hw=(11, 24), lay=("nchw+1", "nchw"),
                                want="nchw packed"),
    "nchw_scale": dict(top=(2, 3, 5, 8), hw=(12, 16), scale=(2.55, 2.0), lay=("nchw", "nchw"),
                       want="nchw packed"),
    "nchw_scale_2.05": dict(top=(2, 2, 10, 10), hw=(20, 20), scale=(2.05, 2.05),
                            lay=("nhwc", "nchw"), want=rows_of(20)),
    "nchw_equal": dict(top=(2, 3, 6, 16), hw=(6, 16), lay=("nchw", "nchw"), want="nchw packed"),
    "nchw_lateral_strided": dict(top=(2, 3, 5, 8), hw=(10, 16), lay=("nchw", "strided"),
                                 want="nchw scalar"),
    "nchw_grid_stride": dict(top=(2, 8, 16, 20), hw=(32, 40), lay=("nchw", "nchw"),
                             want="nchw packed", max_blocks=2),
    "nhwc_top_packed": dict(top=(2, 16, 5, 7), hw=(10, 14), lay=("nhwc", "nhwc"),
                            want="nhwc packed+operand"),
    "nhwc_top_nchw": dict(top=(2, 16, 5, 7), hw=(11, 15), lay=("nchw", "nhwc"),
                          want="nhwc packed"),
    "nhwc_top_misaligned": dict(top=(2, 16, 5, 7), hw=(10, 14), lay=("nhwc+1", "nhwc"),
                                want="nhwc packed"),
    "nhwc_top_padded": dict(top=(2, 16, 5, 7), hw=(9, 13), lay=("nhwc_padded", "nhwc"),
                            want="nhwc packed"),
    "nhwc_odd_channels": dict(top=(2, 5, 5, 7), hw=(10, 14), lay=("nhwc", "nhwc"),
                              want="nhwc scalar"),
    "nhwc_lateral_misaligned": dict(top=(2, 16, 5, 7), hw=(10, 14), lay=("nhwc", "nhwc+1"),
                                    want="nhwc scalar"),
    "nhwc_downsample": dict(top=(2, 8, 9, 16), hw=(4, 7), lay=("nhwc", "nhwc"),
                            want="nhwc packed+operand"),
    "nhwc_one_pixel_top": dict(top=(2, 16, 1, 1), hw=(3, 2), lay=("nhwc", "nhwc"),
                               want="nhwc packed+operand"),
    "nhwc_grid_stride": dict(top=(2, 24, 7, 9), hw=(14, 17), lay=("nhwc", "nhwc"),
                             want="nhwc packed+operand", max_blocks=1),
    # Rows that are not a multiple of 16 bytes: packs of the widest power of two that divides
    # them (FPN at 800x800: P3's W = 100, P4's W = 50), the lateral aligned to it.
    "nchw_w100": dict(top=(2, 2, 3, 50), hw=(6, 100), lay=("nchw", "nchw"), want=rows_of(100)),
    "nchw_w50": dict(top=(2, 2, 3, 25), hw=(6, 50), lay=("nchw", "nchw"), want=ROWS_OF_2),
    "nchw_w12_scale": dict(top=(2, 3, 5, 5), hw=(11, 12), scale=(2.2, 2.4), lay=("nchw", "nchw"),
                           want=rows_of(12)),
    "nchw_w12_lateral_plus2": dict(top=(2, 3, 5, 6), hw=(10, 12), lay=("nchw", "nchw+2"),
                                   want=ROWS_OF_2),
    "nchw_w12_lateral_misaligned": dict(top=(2, 3, 5, 6), hw=(10, 12), lay=("nchw", "nchw+1"),
                                        want="nchw scalar"),
    "nchw_w12_grid_stride": dict(top=(2, 4, 8, 6), hw=(16, 12), lay=("nchw", "nchw"),
                                 want=rows_of(12), max_blocks=1),
    "nhwc_c12": dict(top=(2, 12, 5, 7), hw=(10, 14), lay=("nhwc", "nhwc"),
                     want=rows_of(12, "nhwc", "+operand")),
    "nhwc_c6_top_nchw": dict(top=(2, 6, 5, 7), hw=(10, 14), lay=("nchw", "nhwc"),
                             want={8: "nhwc packed2", 4: "nhwc packed2", 2: "nhwc packed"}),
    "nhwc_c12_top_plus2": dict(top=(2, 12, 5, 7), hw=(10, 14), lay=("nhwc+2", "nhwc"),
                               want={8: "nhwc packed4", 4: "nhwc packed", 2: "nhwc packed+operand"}),
    "nhwc_c12_lateral_plus2": dict(top=(2, 12, 5, 7), hw=(10, 14), lay=("nhwc", "nhwc+2"),
                                   want={8: "nhwc packed2+operand", 4: "nhwc packed2+operand",
                                         2: "nhwc packed+operand"}),
}


def forward_reference(top, lat, sh, sw):
    """lateral + top gathered by eager's CUDA forward rule, added in opmath, rounded once."""
    rows = _nearest.nearest_source(top.shape[2], lat.shape[2], sh, _nearest.CUDA).to(top.device)
    cols = _nearest.nearest_source(top.shape[3], lat.shape[3], sw, _nearest.CUDA).to(top.device)
    op = OPMATH[top.dtype]
    return (lat.to(op) + top.to(op)[:, :, rows][:, :, :, cols]).to(top.dtype)


def cuda_and_cpu_rules_agree(top, lat, sh, sw):
    kind = _nearest.cpu_forward_kind(top, *lat.shape[2:])
    return all(torch.equal(_nearest.nearest_source(i, o, s, _nearest.CUDA),
                           _nearest.nearest_source(i, o, s, kind))
               for i, o, s in ((top.shape[2], lat.shape[2], sh), (top.shape[3], lat.shape[3], sw)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", FORWARD)
def test_upsample_add_forward(emu, device, dtype, name):
    need(emu, device)
    case = FORWARD[name]
    sh, sw = case.get("scale", (None, None))
    lat_shape = (*case["top"][:2], *case["hw"])
    for special in (False, True):
        top_v = values(case["top"], dtype, 1, special)
        lat_v = values(lat_shape, dtype, 2, special)
        for index in (32, 64):
            what = f"{name} {dtype} special={special} index={index}"
            if device == "emulated":
                top, lat = lay_out(top_v, case["lay"][0], "cpu"), lay_out(lat_v, case["lay"][1], "cpu")
                out, plan = emu.upsample_add(top, lat, sh, sw, True, *limits(case, index))
                if cuda_and_cpu_rules_agree(top, lat, sh, sw):
                    scale = None if sh is None else (sh, sw)
                    assert_same(out, upsample_add_reference(top, lat, scale), what + " vs eager")
            else:
                top = lay_out(top_v, case["lay"][0], "cuda")
                lat = lay_out(lat_v, case["lay"][1], "cuda")
                if index == 64:
                    top = far_apart(top)  # real offsets past 2**31, the real limits decide
                max_blocks = limits(case, index)[0]
                with gpu_limits(max_blocks, -1):
                    out = torch.ops.fpnops.upsample_add(top, lat, sh, sw)
                scale = None if sh is None else (sh, sw)
                assert_same(out, upsample_add_reference(top, lat, scale), what + " vs eager")
                plan = None if emu is None else emu.upsample_add(top, lat, sh, sw, False, max_blocks, -1)[1]
            assert_same(out, forward_reference(top, lat, sh, sw), what)
            assert out.stride() == _nearest.output_strides(lat.shape, _nearest.output_memory_format(lat))
            if plan is not None:
                assert describe(plan, VEC[dtype]) == (want_of(case, dtype), index), what


# --- upsample_add backward (the gradient of top) ---------------------------------------------

# (grad shape, top (h, w), scale, grad layout, the variant); "operand": grad read as packs
# (NHWC: V channels; NCHW: a 2x upsample along W, two packs a row).
BACKWARD = {
    "nchw_2x": dict(grad=(2, 3, 10, 16), top=(5, 8), lay="nchw", want="nchw packed+operand"),
    "nchw_2x_columns_only": dict(grad=(2, 3, 11, 16), top=(5, 8), lay="nchw",
                                 want="nchw packed+operand"),
    "nchw_2x_scale": dict(grad=(2, 3, 12, 16), top=(5, 8), scale=(2.55, 2.0), lay="nchw",
                          want="nchw packed+operand"),
    "nchw_2.5x": dict(grad=(2, 3, 9, 20), top=(4, 8), lay="nchw", want="nchw packed"),
    "nchw_scale_2.05": dict(grad=(2, 3, 20, 16), top=(10, 8), scale=(2.05, 2.05), lay="nchw",
                            want="nchw packed"),
    "nchw_grad_misaligned": dict(grad=(2, 3, 10, 16), top=(5, 8), lay="nchw+1",
                                 want="nchw packed"),
    "nchw_grad_strided": dict(grad=(2, 3, 10, 16), top=(5, 8), lay="strided", want="nchw packed"),
    "nchw_downsample": dict(grad=(2, 3, 4, 8), top=(9, 16), lay="nchw", want="nchw packed"),
    "nchw_odd": dict(grad=(2, 3, 10, 14), top=(5, 7), lay="nchw", want="nchw scalar"),
    "nchw_grid_stride": dict(grad=(2, 8, 32, 48), top=(16, 24), lay="nchw",
                             want="nchw packed+operand", max_blocks=1),
    "nhwc_2x": dict(grad=(2, 16, 10, 14), top=(5, 7), lay="nhwc", want="nhwc packed+operand"),
    "nhwc_odd_sizes": dict(grad=(2, 16, 11, 13), top=(4, 6), lay="nhwc", want="nhwc packed+operand"),
    "nhwc_grad_misaligned": dict(grad=(2, 16, 10, 14), top=(5, 7), lay="nhwc+1",
                                 want="nhwc packed"),
    "nhwc_grad_padded": dict(grad=(2, 16, 10, 14), top=(5, 7), lay="nhwc_padded",
                             want="nhwc packed"),
    "nhwc_odd_channels": dict(grad=(2, 5, 10, 14), top=(5, 7), lay="nhwc", want="nhwc scalar"),
    "nhwc_grid_stride": dict(grad=(2, 24, 14, 18), top=(7, 9), lay="nhwc",
                             want="nhwc packed+operand", max_blocks=1),
    "equal_sizes_copy": dict(grad=(2, 3, 6, 16), top=(6, 16), lay="nchw", want="none"),
    # top rows that are not a multiple of 16 bytes (P4 at 800x800: W = 50, from P3's 100)
    "nchw_2x_w50": dict(grad=(2, 2, 6, 100), top=(3, 50), lay="nchw",
                        want={8: "nchw packed2+operand", 4: "nchw packed2+operand",
                              2: "nchw packed+operand"}),
    "nchw_2x_w12": dict(grad=(2, 3, 10, 24), top=(5, 12), lay="nchw", want=rows_of(12, "nchw", "+operand")),
    "nchw_2.5x_w12": dict(grad=(2, 3, 9, 30), top=(4, 12), lay="nchw", want=rows_of(12)),
    "nchw_w12_grad_plus2": dict(grad=(2, 3, 10, 24), top=(5, 12), lay="nchw+2",
                                want={8: "nchw packed4", 4: "nchw packed", 2: "nchw packed+operand"}),
    "nchw_w12_grid_stride": dict(grad=(2, 4, 16, 24), top=(8, 12), lay="nchw",
                                 want=rows_of(12, "nchw", "+operand"), max_blocks=1),
    "nchw_odd_top_w25": dict(grad=(2, 2, 6, 50), top=(3, 25), lay="nchw", want="nchw scalar"),
    "nhwc_c12": dict(grad=(2, 12, 10, 14), top=(5, 7), lay="nhwc", want=rows_of(12, "nhwc", "+operand")),
    "nhwc_c6_grad_padded": dict(grad=(2, 6, 10, 14), top=(5, 7), lay="nhwc_padded",
                                want={8: "nhwc packed2", 4: "nhwc packed2", 2: "nhwc packed"}),
}


def backward_reference(grad, top_h, top_w, sh, sw):
    """Eager's CUDA backward: top cell (i, j) sums grad over rows [hs[i], hs[i + 1]) and columns
    [ws[j], ws[j + 1]) in opmath from 0, row by row, column by column, rounded once; a copy when
    the sizes are equal."""
    N, C, H, W = grad.shape
    if (H, W) == (top_h, top_w):
        return grad.clone()
    hs = _nearest.cuda_window_starts(top_h, H, sh).tolist()
    ws = _nearest.cuda_window_starts(top_w, W, sw).to(grad.device)
    width = ws[1:] - ws[:-1]
    g = grad.to(OPMATH[grad.dtype])
    acc = torch.zeros(N, C, top_h, top_w, dtype=g.dtype, device=grad.device)
    for i in range(top_h):
        for oh in range(hs[i], hs[i + 1]):
            for d in range(int(width.max()) if W else 0):  # the d-th column of every window
                cols = (ws[:-1] + d).clamp(max=W - 1)
                # + 0.0 where a window is narrower: exact (the sum from +0 is never -0.0)
                acc[:, :, i] += torch.where(d < width, g[:, :, oh, cols], 0)
    return acc.to(grad.dtype)


def eager_backward(grad, top_h, top_w, sh, sw):
    top = torch.zeros(grad.shape[0], grad.shape[1], top_h, top_w, dtype=grad.dtype,
                      device=grad.device, requires_grad=True)
    lat = torch.zeros(grad.shape, dtype=grad.dtype, device=grad.device)
    scale = None if sh is None else (sh, sw)
    return torch.autograd.grad(upsample_add_reference(top, lat, scale), top, grad)[0]


def cuda_and_cpu_windows_agree(grad, top_h, top_w, sh, sw):
    """Same windows, and not all sizes equal (there eager's CUDA backward copies, its CPU one
    sums from +0: -0.0 becomes +0.0)."""
    if grad.shape[2:] == (top_h, top_w):
        return False
    return all(torch.equal(_nearest.cuda_window_starts(i, o, s), _nearest.cpu_window_starts(i, o, s))
               for i, o, s in ((top_h, grad.shape[2], sh), (top_w, grad.shape[3], sw)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", BACKWARD)
def test_upsample_add_backward_top(emu, device, dtype, name):
    need(emu, device)
    case = BACKWARD[name]
    sh, sw = case.get("scale", (None, None))
    th, tw = case["top"]
    for special in (False, True):
        grad_v = values(case["grad"], dtype, 3, special)
        for index in (32, 64):
            what = f"{name} {dtype} special={special} index={index}"
            want = want_of(case, dtype)
            if device == "emulated":
                grad = lay_out(grad_v, case["lay"], "cpu")
                gtop, plan = emu.upsample_add_backward_top(grad, th, tw, sh, sw, True, *limits(case, index))
                if cuda_and_cpu_windows_agree(grad, th, tw, sh, sw):
                    assert_same(gtop, eager_backward(grad, th, tw, sh, sw), what + " vs eager")
            else:
                grad = lay_out(grad_v, case["lay"], "cuda")
                if index == 64 and want != "none":
                    grad = far_apart(grad)  # real offsets past 2**31, the real limits decide
                max_blocks = limits(case, index)[0]
                with gpu_limits(max_blocks, -1):
                    gtop = torch.ops.fpnops.upsample_add_backward_top(grad, th, tw, sh, sw)
                assert_same(gtop, eager_backward(grad, th, tw, sh, sw), what + " vs eager")
                plan = None if emu is None else emu.upsample_add_backward_top(
                    grad, th, tw, sh, sw, False, max_blocks, -1)[1]
            assert_same(gtop, backward_reference(grad, th, tw, sh, sw), what)
            if plan is not None:
                assert describe(plan, VEC[dtype]) == ((want, index) if want != "none" else ("none", None)), what


# --- conv_bn_act's epilogue ------------------------------------------------------------------

# (y shape, y layout, bias layout or None, residual layout or None, relu, the variant)
EPILOGUE = {
    "nchw": dict(y=(2, 3, 4, 8), lay="nchw", bias="dense", res="nchw", want="nchw packed"),
    # 210 elements: packs of 2 only (float64); planes of 35 elements, so packs cross planes
    "nchw_odd_plane": dict(y=(2, 3, 5, 7), lay="nchw", bias="dense", res="nchw",
                           want={8: "nchw scalar", 4: "nchw scalar", 2: "nchw packed"}),
    "nchw_odd_total": dict(y=(1, 3, 5, 7), lay="nchw", bias="dense", res="nchw", want="nchw scalar"),
    # Packs that cross channel planes (HW % V != 0; P4 at 800x800: HW = 2500), each element
    # with its own channel's bias; planes smaller than a pack (several channels a pack).
    "nchw_planes_crossed": dict(y=(2, 8, 5, 7), lay="nchw", bias="dense", res="nchw",
                                want="nchw packed"),
    "nchw_planes_of_50": dict(y=(2, 4, 5, 10), lay="nchw", bias="dense", res="nchw", want="nchw packed"),
    "nchw_planes_of_3": dict(y=(2, 8, 1, 3), lay="nchw", bias="dense", res="nchw", want="nchw packed"),
    "nchw_planes_of_1": dict(y=(2, 16, 1, 1), lay="nchw", bias="dense", res="nchw", want="nchw packed"),
    "nchw_planes_crossed_no_bias": dict(y=(2, 8, 5, 7), lay="nchw", bias=None, res="nchw",
                                        want="nchw packed"),
    "nchw_planes_crossed_bias_offset": dict(y=(2, 8, 5, 7), lay="nchw", bias="offset", res=None,
                                            want="nchw packed"),
    "nchw_planes_crossed_residual_misaligned": dict(y=(2, 8, 5, 7), lay="nchw", bias="dense",
                                                    res="nchw+1", want="nchw scalar"),
    "nchw_planes_crossed_grid_stride": dict(y=(2, 8, 9, 13), lay="nchw", bias="dense", res="nchw",
                                            want="nchw packed", max_blocks=1),
    "nhwc_residual_nchw": dict(y=(2, 16, 5, 7), lay="nhwc", bias="dense", res="nchw",
                               want="nhwc packed"),
    "nchw_residual_misaligned": dict(y=(2, 3, 4, 8), lay="nchw", bias="dense", res="nchw+1",
                                     want="nchw scalar"),
    "nchw_residual_nhwc": dict(y=(2, 3, 4, 8), lay="nchw", bias="dense", res="nhwc",
                               want="nchw packed"),
    "nchw_no_bias": dict(y=(2, 3, 4, 8), lay="nchw", bias=None, res="nchw", want="nchw packed"),
    "nchw_relu_only": dict(y=(2, 3, 4, 8), lay="nchw", bias=None, res=None, want="nchw packed"),
    "nchw_no_relu": dict(y=(2, 3, 4, 8), lay="nchw", bias="dense", res=None, relu=False,
                         want="nchw packed"),
    "nchw_grid_stride": dict(y=(2, 8, 16, 24), lay="nchw", bias="dense", res="nchw",
                             want="nchw packed", max_blocks=1),
    "nhwc": dict(y=(2, 16, 5, 7), lay="nhwc", bias="dense", res="nhwc", want="nhwc packed"),
    "nhwc_bias_misaligned": dict(y=(2, 16, 5, 7), lay="nhwc", bias="offset", res="nhwc",
                                 want="nhwc packed"),
    "nhwc_residual_strided": dict(y=(2, 16, 5, 7), lay="nhwc", bias="dense", res="strided",
                                  want="nhwc packed"),
    "nhwc_residual_misaligned": dict(y=(2, 16, 5, 7), lay="nhwc", bias="dense", res="nhwc+1",
                                     want="nhwc scalar"),
    "nhwc_odd_channels": dict(y=(2, 5, 5, 7), lay="nhwc", bias="dense", res="nhwc",
                              want="nhwc scalar"),
    "nhwc_no_relu": dict(y=(2, 16, 5, 7), lay="nhwc", bias="dense", res="nhwc", relu=False,
                         want="nhwc packed"),
    "nhwc_grid_stride": dict(y=(2, 24, 9, 13), lay="nhwc", bias="dense", res="nhwc",
                             want="nhwc packed", max_blocks=1),
}


def make_bias(c, dtype, kind, device, seed, special):
    if kind is None:
        return None
    b = values((c,), dtype, seed, special)
    if kind == "offset":  # a view one element into its storage: not 16-byte aligned
        return torch.empty(c + 1, dtype=dtype, device=device)[1:].copy_(b)
    return b.to(device)


def epilogue_reference(y, bias, res, relu):
    """Eager's relu(y + bias[c] + residual), in opmath, rounded once."""
    op = OPMATH[y.dtype]
    v = y.to(op)
    if bias is not None:
        v = v + bias.to(op).view(1, -1, 1, 1)
    if res is not None:
        v = v + res.to(op)
    return (torch.relu(v) if relu else v).to(y.dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", EPILOGUE)
def test_conv_epilogue(emu, device, dtype, name):
    need(emu, device)
    case = EPILOGUE[name]
    if device == "cuda" and dtype == torch.float64 and case["lay"].startswith("nhwc"):
        pytest.skip("eager's cuDNN rule gives float64 convolutions NCHW outputs: conv_bn_act "
                    "never runs the NHWC float64 epilogue (the emulated cases do)")
    relu = case.get("relu", True)
    c = case["y"][1]
    for special in (False, True):
        # On the GPU y comes out of a 1x1 convolution with the identity (y == x exactly for
        # finite x): special values there go into the bias and the residual only.
        y_v = values(case["y"], dtype, 4, special and device == "emulated")
        res_v = values(case["y"], dtype, 5, special) if case["res"] else None
        for index in (32, 64):
            what = f"{name} {dtype} special={special} index={index}"
            y = lay_out(y_v, case["lay"], "cpu" if device == "emulated" else "cuda")
            bias = make_bias(c, dtype, case["bias"], y.device, 6, special)
            res = lay_out(res_v, case["res"], y.device) if case["res"] else None
            if device == "emulated":
                out, plan = emu.conv_epilogue(y, bias, res, relu, True, *limits(case, index))
            else:
                # 64 bits by the lowered limit here; from real offsets: the test at the end
                eye = torch.eye(c, dtype=dtype, device="cuda").view(c, c, 1, 1)
                with gpu_limits(*limits(case, index)):
                    out = torch.ops.fpnops.conv_bn_act(y, eye, bias, [1, 1], [0, 0], [1, 1], 1, res, relu)
                plan = None if emu is None else emu.conv_epilogue(y, bias, res, relu, False, *limits(case, index))[1]
            assert_same(out, epilogue_reference(y, bias, res, relu), what)
            assert out.stride() == _nearest.output_strides(y.shape, _nearest.output_memory_format(y))
            if plan is not None:
                assert describe(plan, VEC[dtype]) == (want_of(case, dtype), index), what


# --- conv_bn_act's output layout: eager's CUDA (cuDNN) rule ---------------------------------

def _cl_strided(shape):
    """A tensor of `shape` with channels_last strides even where .contiguous(channels_last)
    would keep NCHW ones (C == 1, or a 1x1 kernel: both formats hold, NCHW strides kept)."""
    n, c, h, w = shape
    return torch.randn(n, h, w, c).permute(0, 3, 1, 2)


def _x(layout, shape=(2, 8, 5, 7)):
    t = torch.randn(shape)
    return {"nchw": t, "nhwc": t.contiguous(memory_format=torch.channels_last),
            "nhwc_strides": _cl_strided(shape)}[layout]


NCHW, CL = "contiguous_format", "channels_last"

# ATen's cudnn_conv_suggest_memory_format (aten/src/ATen/native/ConvUtils.h): channels_last when
# x or the weight suggests it (suggest_memory_format: strides, NCHW where ambiguous) and the
# weight is 4-D; never for float64; channels_last_3d likewise for 5-D weights; with cuDNN off,
# eager's CUDA convolutions return NCHW. (x, weight, dtype, the output's format)
CUDA_LAYOUT_RULE = {
    "both_nchw": (_x("nchw"), _x("nchw", (8, 8, 3, 3)), torch.float32, NCHW),
    "x_nchw_weight_cl": (_x("nchw"), _x("nhwc", (8, 8, 3, 3)), torch.float32, CL),
    "x_cl_weight_nchw": (_x("nhwc"), _x("nchw", (8, 8, 3, 3)), torch.float32, CL),
    "both_cl": (_x("nhwc"), _x("nhwc", (8, 8, 3, 3)), torch.float32, CL),
    "float16_weight_cl": (_x("nchw"), _x("nhwc", (8, 8, 3, 3)), torch.float16, CL),
    "bfloat16_x_cl": (_x("nhwc"), _x("nchw", (8, 8, 3, 3)), torch.bfloat16, CL),
    "float64_both_cl": (_x("nhwc"), _x("nhwc", (8, 8, 3, 3)), torch.float64, NCHW),
    "float64_weight_cl": (_x("nchw"), _x("nhwc", (8, 8, 3, 3)), torch.float64, NCHW),
    # ambiguous: .contiguous(channels_last) keeps NCHW strides, which suggest NCHW
    "one_channel_x_cl_contiguous": (_x("nhwc", (2, 1, 5, 7)), _x("nchw", (8, 1, 3, 3)), torch.float32, NCHW),
    "one_channel_x_cl_strides": (_x("nhwc_strides", (2, 1, 5, 7)), _x("nchw", (8, 1, 3, 3)),
                                 torch.float32, CL),
    "one_pixel_x_cl_contiguous": (_x("nhwc", (2, 8, 1, 1)), _x("nchw", (8, 8, 1, 1)), torch.float32, NCHW),
    "one_pixel_x_cl_strides": (_x("nhwc_strides", (2, 8, 1, 1)), _x("nchw", (8, 8, 1, 1)), torch.float32, CL),
    "1x1_weight_cl_contiguous": (_x("nchw"), _x("nhwc", (8, 8, 1, 1)), torch.float32, NCHW),
    # as Module.to(memory_format=torch.channels_last) lays out a 1x1 conv's weight
    "1x1_weight_cl_strides": (_x("nchw"), _x("nhwc_strides", (8, 8, 1, 1)), torch.float32, CL),
    "conv1d": (torch.randn(2, 8, 7), torch.randn(8, 8, 3), torch.float32, NCHW),
    "conv3d_cl3d": (torch.randn(2, 8, 3, 5, 7).contiguous(memory_format=torch.channels_last_3d),
                    torch.randn(8, 8, 3, 3, 3), torch.float32, "channels_last_3d"),
    "conv3d_weight_cl3d": (torch.randn(2, 8, 3, 5, 7),
                           torch.randn(8, 8, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d),
                           torch.float32, "channels_last_3d"),
    "x_cl_weight_3d": (_x("nhwc"), torch.randn(8, 8, 3), torch.float32, NCHW),  # the weight's rank decides
}


def cuda_layout(name):
    x, w, dtype, want = CUDA_LAYOUT_RULE[name]
    if not torch.backends.cudnn.is_available():
        want = NCHW  # a torch built without cuDNN: its CUDA convolutions return NCHW
    return x.to(dtype), w.to(dtype), want


@pytest.mark.parametrize("name", CUDA_LAYOUT_RULE)
def test_conv_output_layout_is_eager_cuda_rule(emu, name):
    """conv_bn_act's CUDA layout rule (conv_bn_act.h: conv_output_format_cuda, ATen's own
    function) against the table of eager's CUDA rule; NCHW with cuDNN off. Before issue 20
    fix 3 the launcher took x's format (x NCHW, weight channels_last gave NCHW)."""
    need(emu, "emulated")
    x, w, want = cuda_layout(name)
    assert emu.conv_output_format(x, w) == want
    with torch.backends.cudnn.flags(enabled=False):
        assert emu.conv_output_format(x, w) == NCHW


# conv_bn_act's launcher (conv_bn_act_launch) run whole in the emulation: (rule case, residual
# layout, the epilogue's variant). ATen's CPU convolution stands in for cuDNN; where its layout
# differs (float64: channels_last for a channels_last x or weight), the launcher's copy runs.
LAUNCHER = {
    "x_nchw_weight_cl": ("x_nchw_weight_cl", "nhwc", "nhwc packed"),
    "x_nchw_weight_cl_residual_nchw": ("x_nchw_weight_cl", "nchw", "nhwc packed"),
    "x_cl_weight_nchw": ("x_cl_weight_nchw", "nhwc", "nhwc packed"),
    "both_nchw_residual_cl": ("both_nchw", "nhwc", "nchw packed"),
    "float16_weight_cl": ("float16_weight_cl", "nhwc", "nhwc packed"),
    "float64_both_cl": ("float64_both_cl", "nhwc", "nchw packed"),
    # channels_last strides, read in NCHW order: for one pixel the same memory order
    "one_pixel_x_cl_strides": ("one_pixel_x_cl_strides", "nchw", "nchw packed"),
    "1x1_weight_cl_strides": ("1x1_weight_cl_strides", "nchw", "nhwc packed"),
}


@pytest.mark.parametrize("name", LAUNCHER)
def test_conv_bn_act_launcher_output_layout(emu, name):
    """The CUDA launcher's host code, emulated on CPU tensors: its output in eager's CUDA
    layout (the rule above), a residual in either layout, bit for bit the epilogue of ATen's
    convolution."""
    need(emu, "emulated")
    rule, res_layout, want = LAUNCHER[name]
    x, w, fmt = cuda_layout(rule)
    n, c, (h, wd) = x.shape[0], w.shape[0], x.shape[2:]
    h, wd = h - w.shape[2] + 1, wd - w.shape[3] + 1
    bias = values((c,), x.dtype, 6, True)
    res = lay_out(values((n, c, h, wd), x.dtype, 5, True), res_layout, "cpu")
    out, plan = emu.conv_bn_act(x, w, bias, [1, 1], [0, 0], [1, 1], 1, res, True, -1, -1)
    memory_format = torch.channels_last if fmt == CL else torch.contiguous_format
    assert out.stride() == _nearest.output_strides(out.shape, memory_format)
    y = torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1)
    assert_same(out, epilogue_reference(y, bias, res, True), name)
    assert describe(plan, VEC[x.dtype]) == (want, 32)


@CUDA_SKIP
@pytest.mark.parametrize("name", [n for n, (x, w, _, _) in CUDA_LAYOUT_RULE.items()
                                  if x.dim() == w.dim() == 4])
def test_gpu_conv_bn_act_layout_is_eagers(name):
    """On the GPU: conv_bn_act's output has the rule's format, and eager's (relu(F.conv2d))
    strides wherever a dimension has more than one element (eager's ReLU may give size-1
    dimensions other strides)."""
    x, w, want = cuda_layout(name)
    x, w = x.cuda(), w.cuda()
    b = torch.randn(w.shape[0], dtype=x.dtype, device="cuda")
    ref = torch.relu(torch.nn.functional.conv2d(x, w, b))
    out = torch.ops.fpnops.conv_bn_act(x, w, b, [1, 1], [0, 0], [1, 1], 1, None, True)
    memory_format = torch.channels_last if want == CL else torch.contiguous_format
    assert out.stride() == _nearest.output_strides(out.shape, memory_format)
    assert [s for s, n in zip(out.stride(), out.shape) if n > 1] == \
        [s for s, n in zip(ref.stride(), ref.shape) if n > 1]


# --- the launch plans' own rules -------------------------------------------------------------

def test_fpn_800_float16_nchw_takes_vector_paths(emu):
    """FPN at 800x800 in float16 NCHW (issue 20 fix 9): P3's rows of 100 and P4's of 50 are no
    multiple of 16 bytes; they take packs of 4 and 2 elements (were scalar), P4's epilogue
    (2500 elements a plane) 16-byte packs across planes (was scalar). P5's top rows of 25 stay
    scalar (no power of two divides 25)."""
    need(emu, "emulated")
    h = torch.float16
    p = {s: torch.empty(1, 256, s, s, dtype=h) for s in (100, 50, 25)}
    fwd = {s: emu.upsample_add(p[s // 2], p[s], None, None, False, -1, -1)[1] for s in (100, 50)}
    bwd = {s: emu.upsample_add_backward_top(p[s], s // 2, s // 2, None, None, False, -1, -1)[1]
           for s in (100, 50)}
    epi = {s: emu.conv_epilogue(p[s], p[s][0, :, 0, 0].clone(), p[s], True, False, -1, -1)[1]
           for s in (100, 50)}
    assert describe(fwd[100], 8) == ("nchw packed4", 32) and describe(fwd[50], 8) == ("nchw packed2", 32)
    assert describe(bwd[100], 8) == ("nchw packed2+operand", 32)  # gradient of P4 (top rows of 50)
    assert describe(bwd[50], 8) == ("nchw scalar", 32)
    assert describe(epi[100], 8) == describe(epi[50], 8) == ("nchw packed", 32)


def test_sanitizer_cases_cover_every_variant(emu):
    """tests/cuda_emulation/variants.py (compute-sanitizer's list): each case takes the variant
    and branch it names (by the launch plans), and together they reach every variant the
    launchers can pick but the unreachable ones, and both branches of each packed upsample_add
    variant."""
    need(emu, "emulated")
    from cuda_emulation import variants
    taken = [variants.emulated_variant(case, emu) for case in variants.CASES]
    assert taken == [(case.variant, case.operand_packed) for case in variants.CASES]
    reached = {v for v, _ in taken}
    assert reached == variants.all_variants() - variants.UNREACHABLE
    both = {v for v, operand in taken if operand}
    assert both == {v for v in reached if v.vec > 1 and v.kernel != variants.EPILOGUE
                    and (v.channels_last or v.kernel == variants.BACKWARD)}
    # unreachable: the rule never gives float64 a channels_last output
    x, w = _x("nhwc").double(), _x("nhwc", (8, 8, 3, 3)).double()
    assert emu.conv_output_format(x, w) == NCHW
    assert len(variants.sanitizer_cases()) == len(variants.CASES) == 186


def test_index_width_is_32_bit_exactly_while_every_offset_fits(emu):
    """The largest offset any operand can form decides: at the limit 32-bit, one past it 64."""
    need(emu, "emulated")
    top = torch.empty(20000).as_strided((2, 16, 5, 7), (10000, 35, 7, 1))  # samples far apart
    top.copy_(values((2, 16, 5, 7), torch.float32, 1, False))
    lat = values((2, 16, 10, 14), torch.float32, 2, False)
    largest = max(sum((s - 1) * st for s, st in zip(t.shape, t.stride())) for t in (top, lat))
    assert largest == 10000 + 15 * 35 + 4 * 7 + 6 > lat.numel() - 1  # top's, not the output's
    for limit, index in ((largest, 32), (largest - 1, 64)):
        out, plan = emu.upsample_add(top, lat, None, None, True, -1, limit)
        assert describe(plan, VEC[torch.float32])[1] == index
        assert_same(out, forward_reference(top, lat, None, None), f"limit {limit}")


def test_grid_is_the_real_launchs(emu):
    """Without a cap, one thread a work item in 256-thread blocks; capped, the grid-stride loop
    covers the rest (the cases above with max_blocks check the results)."""
    need(emu, "emulated")
    lat = values((2, 16, 10, 14), torch.float16, 2, False).contiguous(memory_format=torch.channels_last)
    top = values((2, 16, 5, 7), torch.float16, 1, False)
    _, plan = emu.upsample_add(top, lat, None, None, True, -1, -1)
    assert plan[4] == lat.numel() // 8 and plan[5] == -(-plan[4] // 256)
    _, plan = emu.upsample_add(top, lat, None, None, True, 1, -1)
    assert plan[5] == 1


def test_fixed_divisors_divide_exactly(emu):
    """The kernels' multiply-and-shift division (csrc/cuda/launch.cuh: Divider) against //, for
    divisors of every bit length and dividends up to the largest each width takes."""
    need(emu, "emulated")
    gen = torch.Generator().manual_seed(7)
    for wide, top in ((False, 2**31 - 1), (True, 2**63 - 1)):
        bits = 31 if not wide else 63
        divisors = {1, 2, 3, 7, 255, 256, 257, top, top - 1, (top + 1) // 2, (top + 1) // 2 + 1}
        divisors |= {(1 << b) + o for b in range(bits) for o in (-1, 0, 1) if 0 < (1 << b) + o <= top}
        for d in sorted(divisors):
            rand = torch.randint(0, top, (200,), generator=gen, dtype=torch.int64)
            edges = [e for e in (0, 1, d - 1, d, d + 1, 2 * d - 1, top - 1, top) if e <= top]
            n = torch.cat([rand, torch.tensor(edges, dtype=torch.int64)])
            q, r = emu.divide(n, d, wide)
            # exact integer reference (torch's int64 // and % are exact)
            assert torch.equal(q, n // d) and torch.equal(r, n % d), (wide, d)


def test_lowered_limits_are_checked(emu):
    """The limits the tests lower (here and on the GPU: launch.cuh, lowered_limits) refuse what
    the launch could not honour, naming the argument."""
    need(emu, "emulated")
    top, lat = values((2, 3, 5, 8), torch.float32, 1, False), values((2, 3, 10, 16), torch.float32, 2, False)
    for max_blocks, max_index32, message in ((0, -1, r"max_blocks must be -1 or in \[1, 524280\], got 0"),
                                              (-1, 2**31, r"max_index32 must be .*, got 2147483648")):
        with pytest.raises(RuntimeError, match=message):
            emu.upsample_add(top, lat, None, None, True, max_blocks, max_index32)


@pytest.mark.skipif(not _extension.WITH_CUDA, reason="fpnops._C was built without its CUDA kernels")
def test_gpu_launch_limits_are_checked():
    """The GPU launchers' test hook refuses the same (it needs no GPU to be called)."""
    f = "torch.ops.fpnops._set_cuda_launch_limits"
    assert_bad_inputs([
        ("no_blocks", f"{f}(0, -1)", "RuntimeError", r"max_blocks must be -1 or in \[1, 524280\], got 0"),
        ("too_many_blocks", f"{f}(524281, -1)", "RuntimeError", r"max_blocks .* got 524281"),
        ("index32_past_int32", f"{f}(-1, 2**31)", "RuntimeError", r"max_index32 .* got 2147483648"),
        ("index32_negative", f"{f}(-1, -2)", "RuntimeError", r"max_index32 .* got -2"),
    ])


def test_missing_compiler_is_named(monkeypatch):
    """Where the emulation cannot be built, the skip (or, in CI, the failure) says why."""
    monkeypatch.setenv("CXX", "no-such-compiler-fpnops")
    assert "no C++ compiler ('no-such-compiler-fpnops'" in cuda_emulation.unavailable()


def test_emulation_detects_a_wrong_answer(emu):
    """Guards the tests above: the emulated result is the kernel's, not eager's (a changed input
    changes it; the references reject it)."""
    need(emu, "emulated")
    top, lat = values((2, 3, 5, 8), torch.float32, 1, False), values((2, 3, 10, 16), torch.float32, 2, False)
    out, _ = emu.upsample_add(top, lat, None, None, True, -1, -1)
    shifted = torch.roll(top, 1, dims=3)
    with pytest.raises(AssertionError):
        assert_same(out, forward_reference(shifted, lat, None, None), "shifted")


# --- on the GPU only: an epilogue past 2**31 elements ----------------------------------------

@CUDA_SKIP
@pytest.mark.parametrize("layout,shape", [("nchw", (2, 1, 32768, 32776)), ("nhwc", (2, 8, 11585, 11592))])
def test_gpu_epilogue_past_2_pow_31_elements(emu, layout, shape):
    """conv_bn_act's output of more than 2**31 elements (4.3 GB in float16; cuDNN splits the
    batch, the epilogue runs over all of it): 64-bit index math, the grid-stride loop (more
    packs than the grid's threads); the first and last rows of each sample checked."""
    c = shape[1]
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(shape, dtype=torch.float16, device="cuda").contiguous(memory_format=fmt)
    r = torch.randn(shape, dtype=torch.float16, device="cuda").contiguous(memory_format=fmt)
    b = torch.randn(c, dtype=torch.float16, device="cuda")
    assert x.numel() > 2**31
    if emu is not None:
        plan = emu.conv_epilogue(x, b, r, True, False, -1, -1)[1]
        assert describe(plan, VEC[torch.float16]) == (f"{layout} packed", 64) and plan[4] > plan[5] * 256
    eye = torch.eye(c, dtype=torch.float16, device="cuda").view(c, c, 1, 1)
    out = torch.ops.fpnops.conv_bn_act(x, eye, b, [1, 1], [0, 0], [1, 1], 1, r, True)
    for rows in (slice(0, 2), slice(-2, None)):
        assert_same(out[:, :, rows], epilogue_reference(x[:, :, rows], b, r[:, :, rows], True), str(rows))
