"""The tests whose results depend on the CPU's instruction set, run again at AVX2 level.

On a CPU with AVX512-BF16/FP16 or AMX, fpnops' bf16/fp16 convolutions are ATen's (oneDNN's
hardware kernels) and eager's are the same kernels; on an AVX2 CPU oneDNN has no half-precision
kernels worth running, and fpnops computes in float32, rounded once, while eager runs its own
AVX2 algorithm (another NaN spread, other roundings). oneDNN's float32 kernels (and the blocked
layouts of prepacked weights) differ by ISA too, and some tests hold fpnops' oneDNN calls to
eager's bit for bit. So each of those tests runs here a second time, in a child at AVX2 level
(helpers.run_avx2_cpu: ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2), whatever this CPU
is: the suite covers both paths on every machine (on an AVX2 CPU it is the same level twice).
The conv_bn_act fuzz has its own AVX2 child (test_conv_bn_act_fuzz.test_fuzz_avx2_level).

Found by running the whole suite with both variables set (it passes, given its own Inductor
cache) and by recording which tests run fpnops' CPU conv_bn_act in bf16/fp16 (the only branch
on the ISA in fpnops): those below, with the float32 ones that hold oneDNN calls on prepacked
weights to eager's bit for bit (the blocked layouts and kernels are the ISA's). Left out: the
1x1 and compiled cases (Triton's interpreter and Inductor's compiler, not the ISA, is their
cost), and the fuzz, which has its own child. ~15 s on an idle machine.
"""
import pathlib

from helpers import run_avx2_cpu

TESTS = pathlib.Path(__file__).resolve().parent

# (file, -k expression): the ISA-dependent tests of each file.
SELECTED = [
    ("test_conv_bn_act.py",
     "(bfloat16 or float16 or autocast or relu_of_a_negative)"
     " and not (fold_conv_bn or compile or k1s or -1-)"),
    ("test_fused_resnet.py",
     "resnet50_matches_float64_reference and ([nchw-torch.bfloat16] or [nhwc-torch.float16])"),
    ("test_fused_fpn.py",
     "bit_identical_every_dtype_and_layout or autocast or packed_convs_are_eager_bit_for_bit"),
    ("test_fused_exact.py", "autocast or prepacked_only_for_float32"),
    ("test_fused_fuzz.py", "fused_block_matches_float64_eager and ([3] or [11])"),  # bfloat16
    ("test_fold_range.py", "float16_range"),
]

# The child: pytest over SELECTED, its report on stderr (what a failure shows), and at least one
# test passed from every file (a renamed test must not drop out unseen).
_CHILD = r"""
import sys, pytest
files = {tests!r}
passed = dict.fromkeys(files, 0)

class Count:
    def pytest_runtest_logreport(self, report):
        name = report.nodeid.split("::")[0].rsplit("/", 1)[-1]
        if report.when == "call" and report.passed and name in passed:
            passed[name] += 1

rc = 0
sys.stdout = sys.stderr
for name, expr in files.items():
    rc = rc or pytest.main(["-q", "-p", "no:cacheprovider", {root!r} + "/" + name, "-k", expr],
                           plugins=[Count()])
assert rc == 0, rc
assert all(passed.values()), passed
print(passed, file=sys.__stdout__)
print("avx2 ok", file=sys.__stdout__)
"""


def test_isa_dependent_tests_at_avx2_level(tmp_path):
    """The half-precision paths of conv_bn_act, the fused ResNet50, FPN and blocks, CPU autocast,
    and the float32 prepacked (oneDNN) convolutions, at AVX2 level."""
    run_avx2_cpu(_CHILD.format(tests=dict(SELECTED), root=str(TESTS)), tmp_path)
