"""Codegen of fpnops' own CUDA kernels (csrc/cuda/*_kernel.cuh), read from the SASS in the CUDA
build of fpnops._C with fpnops.bench.sass: no GPU needed. Every variant the launchers can pick
is compiled (tests/cuda_emulation/variants.py: all_variants); the packed (dense) paths move 16
bytes per load and store (LDG.E.128/STG.E.128), the narrower packs of upsample_add (rows not a
multiple of 16 bytes) their own width, the scalar ones one element; no kernel spills to local
memory or calls a division subroutine; the 16-byte paths' main loop stays within
MEMORY_BOUND_BUDGET instructions per byte moved (an H100 issue-rate model,
fpnops/bench/sass.py), so they stay memory-bound, and the narrower ones cost less per byte than
the scalar path they replace.

Before issue 10 (measured on sm_90): the packed paths ran 7-31 instructions per byte and the
scalar ones up to 75, mostly 64-bit division and modulo; now 32-bit math where every offset
fits, one multiply-and-shift per divisor (launch.cuh: Divider) and one channel per pack."""
import functools
import re

import pytest
import torch

from cuda_emulation import variants as kernel_variants
from fpnops import _extension
from fpnops.bench import sass

pytestmark = [
    pytest.mark.skipif(not _extension.WITH_CUDA,
                       reason="fpnops._C was built without its CUDA kernels (FPNOPS_BUILD_CUDA=0 or "
                              "no CUDA toolkit): no SASS to read"),
    pytest.mark.skipif(sass.cuobjdump() is None, reason="no cuobjdump (Triton's wheel ships one)"),
]

CXX = {torch.float32: "float", torch.float64: "double", torch.float16: "c10::Half",
       torch.bfloat16: "c10::BFloat16"}
ELEMENT_BITS = {CXX[d]: d.itemsize * 8 for d in CXX}
FULL = {CXX[d]: kernel_variants.full_width(d) for d in CXX}  # 16 bytes' worth
NAME = re.compile(r"fpnops::(\w+Kernel)<([\w:]+), (\d+), (true|false), (unsigned int|unsigned long)>")


@functools.lru_cache(maxsize=None)
def variants(arch):
    """{(kind, dtype, V, channels_last, index bits): Kernel} of fpnops._C's `arch` SASS."""
    out = {}
    for name, kernel in sass.demangle(sass.kernels_of(_extension._C.__file__, arch)).items():
        m = NAME.search(name)
        if m:
            kind, dtype, vec, cl, index = m.groups()
            out[(kind, dtype, int(vec), cl == "true", 32 if index == "unsigned int" else 64)] = kernel
    return out


def built_for(arch):
    return _extension.WITH_CUDA and arch[3:] in _extension.CUDA_ARCHS.replace(".", "")


def archs():
    """sm_80 and sm_90 where fpnops._C holds their code (sm_90: the budget's H100)."""
    return [pytest.param(a, marks=pytest.mark.skipif(not built_for(a), reason=(
        f"fpnops._C has no {a} code (built for {_extension.CUDA_ARCHS!r})"))) for a in ("sm_80", "sm_90")]


@pytest.mark.parametrize("arch", archs())
def test_every_variant_is_compiled(arch):
    """What with_variant (launch.cuh) can pick: each kernel, dtype, width (16-byte packs, the
    narrower ones of upsample_add, scalar), NCHW and NHWC, 32- and 64-bit indices; the same
    list as compute-sanitizer's (variants.py)."""
    want = {(v.kernel, CXX[v.dtype], v.vec, v.channels_last, v.index_bits)
            for v in kernel_variants.all_variants()}
    assert set(variants(arch)) == want


@pytest.mark.parametrize("arch", archs())
def test_packed_paths_move_their_width_per_access(arch):
    """The widest global load and store of each kernel is its item: 128 bits for 16-byte packs,
    64 or 32 for the narrower ones, one element for the scalar kernels."""
    bad = []
    for (kind, dtype, vec, cl, bits), k in variants(arch).items():
        acc = sass.global_accesses(k.instrs)
        widest = {op: max((w for (o, w) in acc if o == op), default=0) for op in ("load", "store")}
        if widest != {"load": vec * ELEMENT_BITS[dtype], "store": vec * ELEMENT_BITS[dtype]}:
            bad.append(f"{kind}<{dtype}, {vec}, {cl}, {bits}>: {dict(acc)}")
    assert not bad, "\n".join(bad)


def subroutine_calls(kernel):
    """CALLs into code that returns (RET before EXIT): helpers such as 64-bit division, not the
    CALL.REL the compiler also uses to branch to an exit."""
    n = 0
    for call in (i for i in kernel.instrs if i.base == "CALL"):
        target = int(call.operands.split()[0], 16)
        end = next((i for i in kernel.instrs if i.addr >= target and i.base in ("RET", "EXIT")), None)
        n += end is not None and end.base == "RET"
    return n


@pytest.mark.parametrize("arch", archs())
def test_no_spills_and_no_division_calls(arch):
    """No local-memory traffic, and every division a multiply-high (a 64-bit division is a call
    to a ~70-instruction subroutine; the 64-bit kernels used to spill around it)."""
    bad = []
    for key, k in variants(arch).items():
        if sass.spills(k)["ldl_stl"] or k.local or subroutine_calls(k):
            bad.append(f"{key}: {sass.spills(k)}, {subroutine_calls(k)} subroutine calls")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", archs()[1:])
def test_packed_hot_paths_within_the_memory_bound_budget(arch):
    """sm_90 (H100): instructions per byte in each packed kernel's main loop (an upper bound:
    both sides of a branch count, e.g. top read as one pack or gathered). The 32-bit kernels,
    which every input with offsets below 2**31 takes, within MEMORY_BOUND_BUDGET (2x headroom);
    the 64-bit ones, for larger inputs, at least memory-bound (the balance point, ~10)."""
    rows, bad = [], []
    for (kind, dtype, vec, cl, bits), k in sorted(variants(arch).items()):
        if vec != FULL[dtype]:
            continue
        per_byte = sass.instructions_per_byte(k)
        limit = sass.MEMORY_BOUND_BUDGET if bits == 32 else sass.BALANCE_INSTR_PER_BYTE
        rows.append(f"{kind}<{dtype}, {vec}, {cl}, {bits}-bit>: {per_byte:.2f} (limit {limit:.2f})")
        if per_byte > limit:
            bad.append(rows[-1])
    assert len(rows) == 3 * 4 * 2 * 2
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", archs()[1:])
def test_narrower_packs_cost_less_than_scalar(arch):
    """sm_90: upsample_add's narrower packs (rows of W or C not a multiple of 16 bytes: FPN
    P3/P4 at 800x800 in float16 NCHW) cost fewer instructions per byte than the scalar kernels
    they replace, in the 32-bit kernels every input with offsets below 2**31 takes. (By this
    upper bound, where both branches of the grad read count, some 64-bit backward ones do not:
    inputs past 2**31 elements; they are held to no spills and no division calls above.)"""
    v = variants(arch)
    rows, bad = [], []
    for (kind, dtype, vec, cl, bits), k in sorted(v.items()):
        if vec in (1, FULL[dtype]) or bits != 32:
            continue
        narrow = sass.instructions_per_byte(k)
        scalar = sass.instructions_per_byte(v[(kind, dtype, 1, cl, bits)])
        rows.append(f"{kind}<{dtype}, {vec}, {cl}>: {narrow:.2f} vs scalar {scalar:.2f}")
        if narrow >= scalar:
            bad.append(rows[-1])
    # forward and backward; widths 4 and 2 of the two 16-bit dtypes, 2 of float32; NCHW, NHWC
    assert len(rows) == 2 * (2 + 2 + 1) * 2
    assert not bad, "\n".join(bad)
