"""conv_bn_act fuzzed against eager: random shapes, strides, paddings, dilations, groups, dtypes,
layouts and backends, with NaN and +-inf injected into every input.

Values: within a per-element bound of a float64 reference (the convolution's rounding error is at
most ~u * sum |x||w| + |bias| + |residual|, whatever the output's cancellation). NaN/+inf/-inf:
exactly where eager puts them, eager in the case's own dtype on this machine. Eager's own masks
depend on the CPU (on AMX / AVX512-BF16 CPUs eager's bf16 convolution is oneDNN's AMX kernel,
which can give NaN where the exact answer is +-inf; on AVX2 ones it is another algorithm), and
fpnops is held to eager on the same machine, not to one CPU's. One exception, eager's own: where a
non-finite weight tap lies over the zero padding, eager gives NaN (0 * inf) or not depending on its
algorithm (im2col or oneDNN's direct convolution, chosen by batch size among others), so those
outputs are not compared. run_fuzz counts the non-finite outputs it compared, per dtype, and fails
if a dtype had none (a check that compares nothing proves nothing). The suite runs it again with
the ISA lowered to AVX2 (helpers.run_avx2_cpu), where fpnops takes its other half-precision path.
"""
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import DTYPES, LAYOUTS, make, run_avx2_cpu, run_generic_cpu

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


def random_case(rng, triton_sized=False, dtypes=DTYPES):
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
        dtype=rng.choice(dtypes), layout=rng.choice(LAYOUTS), w_layout=rng.choice(LAYOUTS),
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


def oracle(c, x, w, b, r):
    """What a case is judged by: eager in the case's dtype on this machine (the masks; its
    algorithm and NaN spread are this CPU's), the float64 reference and the per-element bound
    (the values), and the outputs compared. None where eager itself is off the float64 bound
    (eager's own bug, not ours to judge: see EAGER_OFF)."""
    s, p, d, g, relu = c["s"], c["p"], c["d"], c["g"], c["relu"]
    eager = conv_bn_act_reference(x, w, b, s, p, d, g, r, relu)
    dbl = [t.double() if t is not None else None for t in (x, w, b, r)]
    ref = conv_bn_act_reference(*dbl[:3], s, p, d, g, dbl[3], relu)
    mag = conv_bn_act_reference(*[t.abs() if t is not None else None for t in dbl[:3]], s, p, d, g,
                                dbl[3].abs() if r is not None else None, relu=False)
    bound = TOL[c["dtype"]] * mag + 1e-30
    compared = torch.ones(eager.shape, dtype=torch.bool)
    if p > 0 and not w.isfinite().all():
        compared &= ~padded_taps(c, eager.shape)
    finite = compared & eager.isfinite()
    if (not c["inject"] and not eager.isfinite().all()) or \
            not ((eager.double() - ref)[finite].abs() <= bound[finite]).all():
        return None
    return eager, ref, bound, compared


# Eager's own bug, seen on AMX CPUs (torch 2.14.1, oneDNN v3.12, brg_conv_fwd:avx10_1_512_amx):
# its bf16 convolution is wrong, and reads memory it should not (results change from call to
# call), where the output is one column wide and the stride is > 1. fpnops runs ATen's
# convolution there (as eager), so nothing can be said of its result; those cases are counted,
# warned about, and must stay few. Reproducer (with AMX; right with ONEDNN_MAX_CPU_ISA=AVX2):
EAGER_OFF = """
import torch, torch.nn.functional as F
x, w = torch.randn(1, 1, 15, 1), torch.randn(1, 1, 5, 5)
print(F.conv2d(x.bfloat16(), w.bfloat16(), None, 2, 2).flatten())
print(F.conv2d(x.double(), w.double(), None, 2, 2).flatten())
"""


def check(c, x, w, b, r, backend, judged):
    """Asserts on one case against its oracle (`judged`, from oracle()); returns the (NaN,
    +-inf) counts of the outputs whose masks it compared."""
    eager, ref, bound, compared = judged
    s, p, d, g, relu = c["s"], c["p"], c["d"], c["g"], c["relu"]
    out = fpnops.conv_bn_act(x, w, b, stride=s, padding=p, dilation=d, groups=g, residual=r,
                             relu=relu, backend=backend)
    assert out.shape == eager.shape and out.dtype == c["dtype"], (out.shape, out.dtype)
    for name, fn in (("nan", torch.isnan), ("+inf", torch.isposinf), ("-inf", torch.isneginf)):
        got, want = fn(out) & compared, fn(eager) & compared
        assert torch.equal(got, want), (name, got.sum().item(), want.sum().item())
    finite = compared & eager.isfinite()
    assert ref[finite].isfinite().all()
    err = (out.double() - ref)[finite].abs()
    assert (err <= bound[finite]).all(), ((err / bound[finite]).max().item(), TOL[c["dtype"]])
    if relu:
        assert not (out < 0).any()
    return [(fn(eager) & compared).sum().item() for fn in (torch.isnan, torch.isinf)]


def run_fuzz(seed, count, backends, triton_sized=False, dtypes=DTYPES):
    """`count` random cases (dtypes drawn from `dtypes`), each checked on every backend. Fails
    unless every dtype drawn had compared NaN and +-inf outputs, and if more than 1 case in 50
    could not be judged (EAGER_OFF). Returns {dtype: [NaN, +-inf outputs compared]}."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    seen, unjudged = {}, []
    # Tiny tensors: one thread (on a loaded 2-core machine OpenMP's barriers cost ~20x).
    torch.set_num_threads(1)
    try:
        for i in range(count):
            c = random_case(rng, triton_sized, dtypes)
            x, w, b, r = build(c, rng)
            judged = oracle(c, x, w, b, r)
            if judged is None:
                unjudged.append((i, c))
                continue
            tally = seen.setdefault(c["dtype"], [0, 0])
            for backend in backends:
                try:
                    counts = check(c, x, w, b, r, backend, judged)
                except AssertionError as e:
                    raise AssertionError(f"case {i} backend={backend} {c}: {e}") from None
            tally[0] += counts[0]
            tally[1] += counts[1]
    finally:
        torch.set_num_threads(threads)
    if unjudged:
        warnings.warn(f"eager's own convolution is off the float64 bound in {len(unjudged)} of "
                      f"{count} cases, not judged (EAGER_OFF); the first: {unjudged[0]}")
    assert len(unjudged) <= count // 50, unjudged
    empty = {str(t): v for t, v in seen.items() if min(v) == 0}
    assert not empty, f"no NaN or no inf output compared (dtype: [NaN, inf]): {empty}"
    return seen


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


def test_fuzz_avx2_level(tmp_path):
    """The same with ATen and oneDNN at AVX2 level (helpers.run_avx2_cpu), on any CPU: eager's
    bf16/fp16 convolutions and NaN spread are then an AVX2 machine's, and fpnops takes its float32
    path for the half types (oneDNN without bf16/fp16 instructions). ~5 s on an idle machine."""
    run_avx2_cpu("from test_conv_bn_act_fuzz import run_fuzz\n"
                 "run_fuzz(11, 400, ['native', 'torch'])\nprint('avx2 ok')\n", tmp_path)
