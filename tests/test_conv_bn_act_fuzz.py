"""conv_bn_act fuzzed against eager: random shapes, strides, paddings, dilations, groups, dtypes,
layouts and backends, with NaN and +-inf injected into every input.

Values: within a per-element bound of a float64 reference (the convolution's rounding error is at
most ~u * sum |x||w| + |bias| + |residual|, whatever the output's cancellation). NaN/+inf/-inf:
exactly where eager puts them (eager in the same dtype; for half types eager in float32 on the
same values, as the exact answer's masks). One exception, eager's own: where a non-finite weight
tap lies over the zero padding, eager gives NaN (0 * inf) or not depending on its algorithm
(im2col or oneDNN's direct convolution, chosen by batch size among others), so those outputs
are not compared.
"""
import random

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, LAYOUTS, make, run_generic_cpu

import fpnops
from fpnops import _backend
from fpnops.ops.conv_bn_act import conv_bn_act_reference

# Per-element tolerance, as a multiple of sum |x||w| + |bias| + |residual| (float32: accumulation
# over up to ~200 terms; half types: two roundings at most, eager rounds the conv before the add).
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
BAD = (float("nan"), float("inf"), -float("inf"))


def make_in(shape, dtype, layout):
    """helpers.make, but tiny shapes (a 1x1 kernel) may turn out contiguous in 'strided'."""
    if layout != "strided":
        return make(shape, dtype, "cpu", layout)
    n, c, h, w = shape
    return torch.randn(n, h, c, 2 * w + 1, dtype=dtype).permute(0, 2, 1, 3)[..., 1::2]


def random_case(rng, triton_sized=False):
    g = rng.choice((1, 1, 2, 3))
    k = 1 if triton_sized else rng.choice((1, 3, 5, 7))
    d = 1 if k == 1 else rng.choice((1, 1, 2))
    s = rng.choice((1, 1, 2, 3))
    p = rng.choice((0, 1)) if triton_sized else rng.randint(0, k // 2 + 1)
    span = d * (k - 1) + 1
    lo = max(1, span - 2 * p)
    hw = [rng.randrange(lo, lo + (8 if triton_sized else 12)) | 1 for _ in range(2)]  # odd
    hw = [v if v + 2 * p >= span else v + 2 for v in hw]
    return dict(
        n=rng.choice((1, 2)), g=g, cin=g * rng.randint(1, 3 if triton_sized else 4),
        cout=g * rng.randint(1, 3 if triton_sized else 5), hw=hw, k=k, s=s, p=p, d=d,
        bias=rng.random() < 0.7, residual=rng.random() < 0.5, relu=rng.random() < 0.7,
        dtype=rng.choice(DTYPES), layout=rng.choice(LAYOUTS), w_layout=rng.choice(LAYOUTS),
        r_layout=rng.choice(LAYOUTS), strided_bias=rng.random() < 0.2,
        inject=rng.random() < 0.5)


def build(c, rng):
    dtype = c["dtype"]
    x = make_in((c["n"], c["cin"], *c["hw"]), dtype, c["layout"])
    w = make_in((c["cout"], c["cin"] // c["g"], c["k"], c["k"]), dtype, c["w_layout"])
    with torch.no_grad():
        w /= (c["cin"] // c["g"] * c["k"] ** 2) ** 0.5
    b = None
    if c["bias"]:
        b = torch.randn(2 * c["cout"], dtype=dtype)[::2] if c["strided_bias"] else torch.randn(c["cout"], dtype=dtype)
    out_shape = F.conv2d(x.float(), w.float(), None, c["s"], c["p"], c["d"], c["g"]).shape
    r = make_in(tuple(out_shape), dtype, c["r_layout"]) if c["residual"] else None
    if c["inject"]:
        for t in (x, w, b, r):
            if t is not None and rng.random() < 0.5:
                flat_idx = [rng.randrange(n) for n in t.shape]
                t[tuple(flat_idx)] = rng.choice(BAD)
    return x, w, b, r


def padded_taps(c, out_shape):
    """Outputs whose receptive field reaches into the zero padding."""
    ones = torch.ones(1, 1, *c["hw"], dtype=torch.float64)
    k = torch.ones(1, 1, c["k"], c["k"], dtype=torch.float64)
    full = F.conv2d(ones, k, None, c["s"], c["p"], c["d"])
    return (full < c["k"] ** 2).expand(out_shape)


def check(c, x, w, b, r, backend):
    s, p, d, g, relu = c["s"], c["p"], c["d"], c["g"], c["relu"]
    out = fpnops.conv_bn_act(x, w, b, stride=s, padding=p, dilation=d, groups=g, residual=r,
                             relu=relu, backend=backend)
    dbl = [t.double() if t is not None else None for t in (x, w, b, r)]
    ref = conv_bn_act_reference(*dbl[:3], s, p, d, g, dbl[3], relu)
    mag = conv_bn_act_reference(*[t.abs() if t is not None else None for t in dbl[:3]], s, p, d, g,
                                dbl[3].abs() if r is not None else None, relu=False)
    mask_dtype = c["dtype"] if c["dtype"] in (torch.float32, torch.float64) else torch.float32
    eager = conv_bn_act_reference(*[t.to(mask_dtype) if t is not None else None for t in (x, w, b)],
                                  s, p, d, g, r.to(mask_dtype) if r is not None else None, relu)
    assert out.shape == eager.shape and out.dtype == c["dtype"], (out.shape, out.dtype)
    compared = torch.ones(out.shape, dtype=torch.bool)
    if p > 0 and not w.isfinite().all():
        compared &= ~padded_taps(c, out.shape)
    for name, fn in (("nan", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = fn(out) & compared, fn(eager) & compared
        assert torch.equal(got, want), (name, got.sum().item(), want.sum().item())
    finite = compared & eager.isfinite()
    assert ref[finite].isfinite().all()
    err = (out.double() - ref)[finite].abs()
    bound = TOL[c["dtype"]] * mag[finite] + 1e-30
    assert (err <= bound).all(), ((err / bound).max().item(), TOL[c["dtype"]])
    if relu:
        assert not (out < 0).any()


def run_fuzz(seed, count, backends, triton_sized=False):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    # Tiny tensors: one thread (on a loaded 2-core machine OpenMP's barriers cost ~20x).
    torch.set_num_threads(1)
    try:
        for i in range(count):
            c = random_case(rng, triton_sized)
            x, w, b, r = build(c, rng)
            for backend in backends:
                try:
                    check(c, x, w, b, r, backend)
                except AssertionError as e:
                    raise AssertionError(f"case {i} backend={backend} {c}: {e}") from None
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_native_and_torch(seed):
    run_fuzz(seed, 500, ["native", "torch"])


@pytest.mark.skipif(not _backend.triton_runs_on("cpu"), reason="needs Triton's interpreter")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy on NaN
def test_fuzz_triton_small():
    # 1x1 convs; padded and grouped ones must reach native, not the Triton kernel.
    run_fuzz(100, 200, ["triton"], triton_sized=True)


def test_fuzz_generic_cpu_kernels(tmp_path):
    """The same on the generic (non-AVX2) copies of our CPU kernels (epilogue, weight bound)."""
    run_generic_cpu("from test_conv_bn_act_fuzz import run_fuzz\nrun_fuzz(7, 200, ['native'])\n"
                    "print('generic ok')\n", tmp_path)
