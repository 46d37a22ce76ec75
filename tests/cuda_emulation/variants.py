"""Every variant of fpnops' CUDA kernels (csrc/cuda/*_kernel.cuh), with one small input each that
makes the launcher pick it, run through fpnops' public ops.

A variant is a template instantiation that launch.cuh's with_variant can pick: the kernel, the
dtype, the item width (upsample_add: every power of two up to 16 bytes; the epilogue: 16 bytes
or 1), NCHW or NHWC, 32- or 64-bit index math. Cases also split upsample_add's packed variants
by their runtime branch, top (forward) or grad (backward) read as Packs or gathered.

- all_variants(): what the launchers can pick (tests/test_cuda_sass.py checks that fpnops._C
  compiles exactly these); UNREACHABLE: those no public call reaches;
- CASES: one Case per reachable variant and branch; tests/test_cuda_emulation.py checks with
  the emulation's launch plans (emulated_variant) that each takes its variant and branch;
- sanitizer_cases(): [(description, callable(device))] for benchmarks/sanitize_kernels.py
  (compute-sanitizer): each calls the public op on `device` and checks it against eager.

The 64-bit variants come from the launchers' lowered limits (fpnops::_set_cuda_launch_limits),
as in the tests. Loaded by file path too (benchmarks/sanitize_kernels.py): imports torch and
fpnops only."""
import collections
import contextlib
import dataclasses

import torch
import torch.nn.functional as F

import fpnops
from fpnops.ops.upsample_add import upsample_add_reference

FORWARD, BACKWARD, EPILOGUE = "UpsampleAddKernel", "UpsampleAddBackwardTopKernel", "ConvEpilogueKernel"
KERNELS = (FORWARD, BACKWARD, EPILOGUE)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

Variant = collections.namedtuple("Variant", "kernel dtype vec channels_last index_bits")


def full_width(dtype):
    return 16 // dtype.itemsize


def widths(kernel, dtype):
    """The item widths with_variant compiles for the kernel (widest first)."""
    v = full_width(dtype)
    if kernel == EPILOGUE:
        return (v, 1)
    out = []
    while v >= 1:
        out.append(v)
        v //= 2
    return tuple(out)


def all_variants():
    return {Variant(k, d, v, cl, bits) for k in KERNELS for d in DTYPES for v in widths(k, d)
            for cl in (False, True) for bits in (32, 64)}


# Compiled (the epilogue stands on its own: the emulation runs these), never picked through
# conv_bn_act: eager's cuDNN rule gives float64 convolutions NCHW outputs.
UNREACHABLE = {Variant(EPILOGUE, torch.float64, v, True, bits) for v in (2, 1) for bits in (32, 64)}


@dataclasses.dataclass(frozen=True)
class Case:
    variant: Variant
    operand_packed: bool  # forward: top read as Packs; backward: grad read as Packs

    def describe(self):
        v = self.variant
        packs = {FORWARD: ", top as packs", BACKWARD: ", grad as packs"}.get(v.kernel, "")
        shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in self.inputs("meta").items()
                           if isinstance(t, torch.Tensor))
        return (f"{v.kernel}<{str(v.dtype)[6:]}, {v.vec}, {'nhwc' if v.channels_last else 'nchw'}, "
                f"{v.index_bits}-bit>{packs if self.operand_packed else ''}: {shapes}")

    def inputs(self, device):
        """The op's tensors on `device`. Rows (W in NCHW, C in NHWC) of 3 * vec elements: vec
        is the widest power of two <= 16 bytes that divides them."""
        v = self.variant
        inner, dt = 3 * v.vec, v.dtype
        nhwc = "nhwc" if v.channels_last else "nchw"
        if v.kernel == FORWARD:
            if v.channels_last:  # top's channels as Packs only where top is channels_last too
                top = _tensor((2, inner, 2, 3), dt, "nhwc" if self.operand_packed else "nchw", device, 1)
                lat = _tensor((2, inner, 4, 6), dt, "nhwc", device, 2)
            else:
                top = _tensor((2, 2, 2, 3), dt, "nchw", device, 1)
                lat = _tensor((2, 2, 4, inner), dt, "nchw", device, 2)
            return {"top": top, "lateral": lat}
        if v.kernel == BACKWARD:
            if v.channels_last:  # grad's channels as Packs unless a pixel has a spare channel
                top_shape, grad_shape = (2, inner, 2, 3), (2, inner, 4, 6)
                grad_layout = "nhwc" if self.operand_packed else "nhwc_padded"
            else:  # grad as Packs where each top column is exactly 2 grad columns
                top_shape, grad_shape = (2, 2, 2, inner), (2, 2, 4, 2 * inner + (not self.operand_packed))
                grad_layout = "nchw"
            return {"top": _tensor(top_shape, dt, "nchw", device, 1),
                    "lateral": _tensor(grad_shape, dt, "nchw", device, 2),
                    "grad": _tensor(grad_shape, dt, grad_layout, device, 3)}
        # The output's layout follows x here (eager's rule: x or weight channels_last); packs:
        # NHWC, C a multiple of 16 bytes; NCHW, a whole tensor that is (and 3 x 5 planes: packs
        # cross planes). Scalar: 3 channels (NHWC); an odd number of elements (NCHW).
        if v.vec > 1:
            c, n = (24, 2) if v.channels_last else (8, 2)
        else:
            c, n = (3, 2) if v.channels_last else (3, 1)
        return {"x": _tensor((n, c, 3, 5), dt, nhwc, device, 1),
                "weight": _tensor((c, c, 1, 1), dt, "nchw", device, 2, low=-1, high=2),
                "bias": _tensor((c,), dt, None, device, 3),
                "residual": _tensor((n, c, 3, 5), dt, nhwc, device, 4)}

    def run(self, device):
        """The public op on `device` (backend="native": fpnops' own kernels), checked against
        eager bit for bit (small integers: every sum is exact, so any right answer is eager's)."""
        t = self.inputs(device)
        with _launch_limits(device, self.variant.index_bits):
            if self.variant.kernel == FORWARD:
                got = fpnops.upsample_add(t["top"], t["lateral"], backend="native")
                want = upsample_add_reference(t["top"], t["lateral"])
            elif self.variant.kernel == BACKWARD:
                top = t["top"].requires_grad_()
                got, = torch.autograd.grad(fpnops.upsample_add(top, t["lateral"], backend="native"),
                                           top, t["grad"])
                want, = torch.autograd.grad(upsample_add_reference(top, t["lateral"]), top, t["grad"])
            else:
                got = fpnops.conv_bn_act(t["x"], t["weight"], t["bias"], residual=t["residual"],
                                         backend="native")
                want = torch.relu(F.conv2d(t["x"], t["weight"], t["bias"]) + t["residual"])
        if not torch.equal(got, want):
            raise AssertionError(f"{self.describe()}: differs from eager on {device}")


def _tensor(shape, dtype, layout, device, seed, low=-4, high=5):
    """Small integers in [low, high) in `layout`: nchw, nhwc, or nhwc_padded (channels_last
    with one unused channel a pixel: channel Packs misaligned); layout None: 1-D."""
    if device == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    gen = torch.Generator().manual_seed(seed)
    values = torch.randint(low, high, shape, generator=gen).to(dtype)
    if layout in (None, "nchw"):
        return values.to(device)
    n, c, h, w = shape
    pad = layout == "nhwc_padded"
    out = torch.empty(n, h, w, c + pad, dtype=dtype, device=device)[..., :c].permute(0, 3, 1, 2)
    return out.copy_(values)


@contextlib.contextmanager
def _launch_limits(device, index_bits):
    """On the GPU, 64-bit index math forced by the launchers' test hook (as the tests do)."""
    lower = torch.device(device).type == "cuda" and index_bits == 64
    if lower:
        torch.ops.fpnops._set_cuda_launch_limits(-1, 0)
    try:
        yield
    finally:
        if lower:
            torch.ops.fpnops._set_cuda_launch_limits(-1, -1)


def _cases():
    for v in sorted(all_variants() - UNREACHABLE, key=lambda v: (KERNELS.index(v.kernel), str(v.dtype),
                                                                 -v.vec, v.channels_last, v.index_bits)):
        branches = (False, True) if v.vec > 1 and (v.kernel == BACKWARD or
                                                   (v.kernel == FORWARD and v.channels_last)) else (False,)
        for operand in branches:
            yield Case(v, operand)


CASES = tuple(_cases())


def emulated_variant(case, emu):
    """(Variant, operand_packed) the CUDA launcher picks for the case's inputs, from the CPU
    emulation's plan (emu: torch.ops.fpnops_emu; for the epilogue, the launcher's whole host
    code, the output's layout included)."""
    t = case.inputs("cpu")
    max_index32 = 0 if case.variant.index_bits == 64 else -1
    if case.variant.kernel == FORWARD:
        plan = emu.upsample_add(t["top"], t["lateral"], None, None, False, -1, max_index32)[1]
    elif case.variant.kernel == BACKWARD:
        plan = emu.upsample_add_backward_top(t["grad"], *t["top"].shape[2:], None, None, False, -1,
                                             max_index32)[1]
    else:
        plan = emu.conv_bn_act(t["x"], t["weight"], t["bias"], [1, 1], [0, 0], [1, 1], 1,
                               t["residual"], True, -1, max_index32)[1]
    vec, channels_last, operand_packed, index32, _work, _blocks = plan
    return (Variant(case.variant.kernel, case.variant.dtype, vec, bool(channels_last), 32 if index32 else 64),
            bool(operand_packed))


def sanitizer_cases():
    """[(description, callable(device))]: every reachable variant and branch once."""
    return [(case.describe(), case.run) for case in CASES]
