"""Seeded fuzz of upsample_add against eager PyTorch, forward and backward, bit for bit: the
outputs' bit patterns (NaN payloads, -0.0) and strides, for every backend that runs here.

Cases mix every dtype; top and lateral sizes on both sides of the out_h + out_w = 128 threshold
(where eager's CPU kernel changes rule), downsampling, equal and 2x sizes, integer ratios up to
70 (where float and double index arithmetic disagree); scale factors (1.0000001, 2.001, 0.5,
1/3, 2.0 next to other sizes, ratios near those sizes); 1..3 and more channels; contiguous,
channels_last and strided views, independently for top, lateral and the incoming gradient; and
in a third of the cases NaNs with random payloads (quiet and signalling), infinities and -0.0,
also at the ends of rows where the CPU kernels' scalar tails work.
Triton (interpreter) gets fewer, smaller cases; its NaN payloads are not compared (below).
"""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import backends_for

import fpnops
from fpnops.ops._nearest import output_memory_format, output_strides

SEED = 20261124
CHUNKS, CASES_PER_CHUNK = 19, 100          # native and torch: 1,900 cases
TRITON_CHUNKS, TRITON_CASES = 4, 30        # triton (interpreter): 120 smaller cases
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
        torch.bfloat16: torch.int16}
SCALES = [1.0000001, 2.001, 0.5, 1 / 3, 2.0, 1.05, 2.05, 2.55, 3.0, 0.3, 1.5, 7.0, 61.0, 0.999]
LAYOUTS = ["contiguous", "channels_last", "permuted", "sliced", "channels_last_sliced"]


def laid_out(t, layout, rng):
    """`t`'s values in `layout`: dense NCHW or NHWC, or a strided view (dims permuted in memory
    and every other column; a window of a larger NCHW or NHWC tensor)."""
    n, c, h, w = t.shape
    if layout == "contiguous":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "permuted":
        base = torch.empty(n, h, c, 2 * w + 1, dtype=t.dtype)
        view = base.permute(0, 2, 1, 3)[..., 1::2]
    else:
        big = torch.empty(n + 1, c + 2, h + 3, w + 2, dtype=t.dtype)
        if layout == "channels_last_sliced":
            big = big.contiguous(memory_format=torch.channels_last)
        view = big[1:, 1:c + 1, 2:h + 2, 1:w + 1]
    return view.copy_(t)


def random_values(shape, dtype, rng, special):
    """Random normal values; with `special`, NaNs with random payloads (quiet and signalling,
    either sign), +-inf and -0.0 at random places and at the end of the last rows."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    t = torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)
    if not special or t.numel() == 0:
        return t
    flat, numel, width = t.view(-1), t.numel(), 8 * t.element_size()
    mant = {torch.float64: 52, torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}[dtype]
    k = max(1, int(numel * rng.choice([0.002, 0.02, 0.2])))
    where = torch.cat([torch.randint(numel, (k,), generator=g),
                       numel - 1 - torch.randint(min(40, numel), (2,), generator=g)])
    kind = torch.rand(where.numel(), generator=g)
    # NaNs: all-ones exponent, a random nonzero mantissa (top bit clear: signalling), a random sign
    payload = torch.randint(1, 2**mant, (where.numel(),), generator=g)
    bits = ((1 << (width - 1 - mant)) - 1) << mant | payload
    negative = torch.rand(where.numel(), generator=g) < 0.5
    bits = torch.where(negative, bits | -(2 ** 63) if width == 64 else bits + 2 ** (width - 1), bits)
    if width < 64:  # to the signed integer of the same bits
        bits = torch.where(bits >= 2 ** (width - 1), bits - 2 ** width, bits)
    nan = kind < 0.6
    flat.view(BITS[dtype])[where[nan]] = bits[nan].to(BITS[dtype])
    inf = (kind >= 0.6) & (kind < 0.8)
    flat[where[inf]] = torch.where(torch.rand(int(inf.sum()), generator=g) < 0.5, math.inf, -math.inf).to(dtype)
    flat[where[kind >= 0.8]] = -0.0
    return t


def draw_sizes(rng, small):
    """(n, c, top hw, lateral hw, scale factor or None)."""
    n = rng.choice([1, 1, 2])
    c = rng.choice([1, 2, 3, 3, 4, 5, 8, 17] if not small else [1, 2, 3, 4, 5])
    cap = 40 if small else 100
    scale = None
    mode = rng.random()
    th, tw = rng.randint(1, 30), rng.randint(1, 30)
    if mode < 0.35:  # any sizes: up, down, equal, 2x, near 2x
        def out_of(x):
            return max(1, rng.choice([rng.randint(1, cap), x, 2 * x, 2 * x + rng.choice([-1, 1]),
                                      x // 2, x * rng.randint(1, 4) + rng.randint(0, 3)]))
        oh, ow = out_of(th), out_of(tw)
    elif mode < 0.55:  # integer ratios: float32 and float64 index arithmetic disagree here
        th, tw = rng.randint(1, 6), rng.randint(1, 30)
        oh = th * rng.randint(3, 70)
        ow = rng.choice([tw, rng.randint(1, cap), 2 * tw])
        if rng.random() < 0.5:
            th, tw, oh, ow = tw, th, ow, oh
    else:  # a scale factor (a number or a pair)
        def sf():
            return rng.choice(SCALES + [rng.uniform(0.2, 4.0), float(rng.randint(2, 9))])
        scale = sf() if rng.random() < 0.7 else (sf(), sf())
        sh, sw = scale if isinstance(scale, tuple) else (scale, scale)
        th = max(1, min(th, int(cap / sh)))
        tw = max(1, min(tw, int(cap / sw)))
        oh, ow = math.floor(th * sh), math.floor(tw * sw)
        if oh == 0 or ow == 0:
            scale = None
            oh, ow = max(oh, 1), max(ow, 1)
    # Keep each case small: at most ~40k output elements (~6k for Triton).
    limit = 6000 if small else 40000
    while n * c * oh * ow > limit and c > 1:
        c = max(1, c // 2)
    while n * c * oh * ow > limit and n > 1:
        n -= 1
    if n * c * oh * ow > limit:
        scale, oh, ow = None, min(oh, 60), min(ow, 60)
    return n, c, (th, tw), (oh, ow), scale


def make_case(i, small=False):
    """Case i of the fuzz, reproducible alone: a dict of the arguments and of what to build.
    Small cases (Triton's interpreter) also keep the backward windows small: the interpreter
    loops over a window's cells."""
    rng = random.Random(SEED * 1000003 + i * 7 + small)
    dtype = rng.choice(DTYPES)
    while True:
        n, c, (th, tw), (oh, ow), scale = draw_sizes(rng, small)
        if not small or (-(-oh // th)) * (-(-ow // tw)) <= 80:
            break
    return dict(i=i, dtype=dtype, top=(n, c, th, tw), lat=(n, c, oh, ow), scale=scale,
                top_layout=rng.choice(LAYOUTS), lat_layout=rng.choice(LAYOUTS),
                grad_layout=rng.choice(LAYOUTS), special=rng.random() < 0.33,
                backward=rng.random() < 0.6, seed=rng.randrange(2**31))


def build(case):
    rng = random.Random(case["seed"])
    top = laid_out(random_values(case["top"], case["dtype"], rng, case["special"]), case["top_layout"], rng)
    lat = laid_out(random_values(case["lat"], case["dtype"], rng, case["special"]), case["lat_layout"], rng)
    grad = laid_out(random_values(case["lat"], case["dtype"], rng, case["special"]), case["grad_layout"], rng)
    return top, lat, grad


def eager(top, lat, scale):
    if scale is None:
        return lat + F.interpolate(top, size=lat.shape[-2:], mode="nearest")
    return lat + F.interpolate(top, scale_factor=scale, mode="nearest")


def bits(t):
    return t.contiguous().view(BITS[t.dtype])


def mismatch(out, ref, payloads):
    """None if `out` is `ref` bit for bit (with payloads=False: NaN wherever ref is NaN, any
    NaN), else a description of the first difference."""
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return f"shape/dtype {tuple(out.shape)} {out.dtype} != eager {tuple(ref.shape)} {ref.dtype}"
    a, b = bits(out), bits(ref)
    differ = a != b
    if not payloads:
        differ &= ~(out.contiguous().isnan() & ref.contiguous().isnan())
    if not differ.any():
        return None
    k = differ.nonzero()[0].tolist()
    return (f"{int(differ.sum())} elements differ, first at {k}: ours {out.contiguous()[tuple(k)].item()} "
            f"(bits {a[tuple(k)].item() & (2 ** (8 * out.element_size()) - 1):#x}), eager "
            f"{ref.contiguous()[tuple(k)].item()} (bits {b[tuple(k)].item() & (2 ** (8 * out.element_size()) - 1):#x})")


def run_case(case, backends):
    """Failure descriptions (empty when every backend matched eager)."""
    top, lat, grad = build(case)
    payloads = {"native": True, "torch": True, "triton": False}
    fails = []
    need_grad = case["backward"]
    t_ref = top.detach().requires_grad_(need_grad)
    l_ref = lat.detach().requires_grad_(need_grad)
    ref = eager(t_ref, l_ref, case["scale"])
    if need_grad:
        ref_gt, ref_gl = torch.autograd.grad(ref, (t_ref, l_ref), grad)
    strides = output_strides(lat.shape, output_memory_format(lat))
    for backend in backends:
        t = top.detach().requires_grad_(need_grad)
        l = lat.detach().requires_grad_(need_grad)
        out = fpnops.upsample_add(t, l, scale_factor=case["scale"], backend=backend)
        why = mismatch(out, ref.detach(), payloads[backend])
        if why:
            fails.append(f"{backend} forward: {why}")
        if out.numel() and out.stride() != strides:
            fails.append(f"{backend} forward: strides {out.stride()}, lateral's format gives {strides}")
        if need_grad:
            gt, gl = torch.autograd.grad(out, (t, l), grad)
            for name, ours, theirs in (("grad top", gt, ref_gt), ("grad lateral", gl, ref_gl)):
                why = mismatch(ours, theirs, payloads[backend])
                if why:
                    fails.append(f"{backend} {name}: {why}")
    return fails


def check_chunk(indices, backends, small):
    failures = []
    for i in indices:
        case = make_case(i, small)
        for f in run_case(case, backends):
            failures.append(f"case {i} {case}: {f}")
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzz_native_and_torch_bit_identical_to_eager(chunk):
    backends = [b for b in backends_for("cpu") if b != "triton"]
    check_chunk(range(chunk * CASES_PER_CHUNK, (chunk + 1) * CASES_PER_CHUNK), backends, small=False)


@pytest.mark.skipif("triton" not in backends_for("cpu"), reason="Triton (interpreter) not available")
@pytest.mark.parametrize("chunk", range(TRITON_CHUNKS))
def test_fuzz_triton_bit_identical_to_eager(chunk):
    """Triton's interpreter computes with numpy: its NaNs are NaN where eager's are, but their
    payloads are numpy's (eager's depend on which of its CPU loops wrote them), so only they are
    not compared. Every other bit is."""
    check_chunk(range(chunk * TRITON_CASES, (chunk + 1) * TRITON_CASES), ["triton"], small=True)


def test_fuzz_covers_what_it_claims():
    """The generator reaches both CPU rules, downsampling, scale factors, every dtype and layout,
    and special values; guards the fuzz against drifting into easy cases."""
    from fpnops.ops._nearest import NEAREST_IDX, cpu_forward_kind

    cases = [make_case(i) for i in range(CHUNKS * CASES_PER_CHUNK)]
    assert len(cases) + TRITON_CHUNKS * TRITON_CASES >= 2000
    kinds = set()
    for case in cases[:400]:
        top, lat, _ = build(case)
        kinds.add((cpu_forward_kind(top, *lat.shape[2:]), top.dtype == torch.float64))
    assert {k for k, _ in kinds} >= {0, 1, 2} and NEAREST_IDX in {k for k, _ in kinds}
    assert any(c["lat"][2] < c["top"][2] for c in cases)                       # downsampling
    assert any(c["lat"][2] + c["lat"][3] > 128 for c in cases)
    assert any(c["lat"][2] + c["lat"][3] <= 128 for c in cases)
    assert {c["dtype"] for c in cases} == set(DTYPES)
    assert {c["top_layout"] for c in cases} == {c["lat_layout"] for c in cases} == set(LAYOUTS)
    scales = [c["scale"] for c in cases if c["scale"] is not None]
    assert len(scales) > 300 and any(isinstance(s, tuple) for s in scales)
    for s in (1.0000001, 2.001, 0.5, 1 / 3, 2.0):
        assert s in scales
    assert sum(c["special"] for c in cases) > 500 and sum(c["backward"] for c in cases) > 1000
    assert any(c["top"][1] <= 3 for c in cases) and any(c["top"][1] > 3 for c in cases)
