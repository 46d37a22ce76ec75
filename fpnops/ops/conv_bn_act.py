"""fpnops.conv_bn_act: relu(conv2d(x, weight, bias) + residual) on already-folded weights, with
the bias, residual add and ReLU in the convolution's epilogue (one pass over the output).

Ops: fpnops::conv_bn_act (native: csrc/cpu/conv_bn_act.cpp, csrc/cuda/conv_bn_act.cu) and
fpnops::conv1x1_bn_act_triton (fpnops/triton/conv_bn_act.py, 1x1 convs only). This file holds
the Python face, the fake kernels and the autograd formulas; the checks, shared with the
Triton launcher and the fused modules, are in conv_bn_act_checks.py.
"""
import torch
import torch.nn.functional as F

from fpnops import _backend
from fpnops._errors import InputTypeError
from fpnops.ops.conv_bn_act_checks import check_inputs, output_memory_format, output_shape


def conv_bn_act_reference(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                          residual=None, relu=True):
    """The plain PyTorch composite."""
    y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def _triton_applies(weight, stride, padding, dilation, groups):
    """What the Triton kernel computes: a 1x1 conv (any stride; dilation has no effect on a 1x1
    kernel), no padding, no groups. Dtypes (the four floating ones) and layouts (any strides)
    it takes all."""
    return tuple(weight.shape[-2:]) == (1, 1) and groups == 1 and padding == (0, 0)


@torch.compiler.assume_constant_result
def _autocast_available(kind):
    """Whether autocast exists for a device type (not for meta: is_autocast_enabled raises).
    A constant per device type: so dynamo calls it at trace time (torch 2.11's dynamo cannot
    trace torch._C._is_autocast_available; is_autocast_enabled and get_autocast_dtype it can)."""
    return torch.amp.is_autocast_available(kind)


def _autocast_dtype(x):
    """The autocast dtype where autocast is on for x's device type, else None."""
    kind = x.device.type
    if _autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def conv_bn_act(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                residual=None, relu=True, backend="auto"):
    """`relu(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual)`, fused.

    Args:
        x: (N, Cin, H, W) input, NCHW or channels_last.
        weight, bias: the conv's (already BatchNorm-folded, see fold_conv_bn) parameters.
        stride, padding, dilation, groups: as F.conv2d (ints or pairs of ints; no padding
            strings).
        residual: optional tensor of the output's shape added before the ReLU.
        relu: apply the ReLU (False: conv + bias (+ residual) only). As eager's: NaN stays NaN,
            relu(+inf) = inf, relu(-inf) = 0, on every backend.
        backend: "auto" (native where compiled for the device, else triton on CUDA for 1x1
            convs, else "torch"), "native", "triton" (1x1 convs without padding or groups;
            others run on native, else torch) or "torch".

    Under autocast for x's device type, computes like F.conv2d does there: x, weight, bias and
    residual (those of a floating dtype other than float64) cast to the autocast dtype, the
    result in it.

    Returns:
        (N, Cout, Ho, Wo) tensor in x's memory format. Differentiable with respect to x,
        weight, bias and residual.
    """
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"conv_bn_act: x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(relu, bool):
        raise TypeError(f"conv_bn_act: relu must be a bool, got {relu!r}")
    _backend.check("conv_bn_act", backend)
    dtype = _autocast_dtype(x)
    if dtype is None:
        return _conv_bn_act(x, weight, bias, stride, padding, dilation, groups, residual, relu,
                            backend)
    kind = x.device.type

    def cast(t):  # autocast's rule: floating tensors of its device, float64 left alone
        eligible = (isinstance(t, torch.Tensor) and t.is_floating_point() and
                    t.dtype != torch.float64 and t.device.type == kind)
        return t.to(dtype) if eligible else t

    with torch.autocast(kind, enabled=False):
        return _conv_bn_act(cast(x), cast(weight), cast(bias), stride, padding, dilation, groups,
                            cast(residual), relu, backend)


def _conv_bn_act(x, weight, bias, stride, padding, dilation, groups, residual, relu, backend):
    stride, padding, dilation, groups = check_inputs(x, weight, bias, stride, padding, dilation,
                                                     groups, residual)
    backend = _backend.resolve("conv_bn_act", backend, x.device)
    if backend == "triton" and not _triton_applies(weight, stride, padding, dilation, groups):
        backend = "native" if _backend.native_runs_on(x.device.type) else "torch"
    if backend == "torch":
        return conv_bn_act_reference(x, weight, bias, stride, padding, dilation, groups, residual, relu)
    if backend == "triton":
        return torch.ops.fpnops.conv1x1_bn_act_triton(x, weight, bias, stride, residual, relu)
    return torch.ops.fpnops.conv_bn_act(x, weight, bias, stride, padding, dilation, groups,
                                        residual, relu)


# --- fake kernels and autograd -----------------------------------------------------------------

def _empty_output(x, weight, stride, padding, dilation, groups=1):
    return torch.empty(output_shape(x, weight, stride, padding, dilation), dtype=x.dtype, device=x.device,
                       memory_format=output_memory_format(x, weight, stride, padding, dilation, groups))


@torch.library.register_fake("fpnops::conv_bn_act")
def _conv_bn_act_fake(x, weight, bias, stride, padding, dilation, groups, residual, relu):
    check_inputs(x, weight, bias, stride, padding, dilation, groups, residual)  # as the kernels
    return _empty_output(x, weight, stride, padding, dilation, groups)


def _conv_act_grads(ctx, grad, needs):
    """(d x, d w, d b, d residual) of relu?(conv(x, w, b) + r) from ctx (saved x, weight and the
    output where relu; conv, relu, has_bias, has_residual); needs: whether x, w, b want theirs."""
    x, weight, out = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conv
    g = grad * (out > 0) if ctx.relu else grad
    gx, gw, gb = torch.ops.aten.convolution_backward(
        g, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(stride), list(padding),
        list(dilation), False, [0, 0], groups, [needs[0], needs[1], needs[2] and ctx.has_bias])
    return gx, gw, gb, (g if ctx.has_residual else None)


def _register_autograd(op, unpack, pack_grads):
    """relu(conv(x, w, b) + r): d pre = grad * (out > 0); d r = d pre; d x, d w, d b from
    aten.convolution_backward of d pre."""

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups, residual, relu = unpack(inputs)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.relu, ctx.has_bias, ctx.has_residual = relu, bias is not None, residual is not None
        saved_out = output if relu else None
        ctx.save_for_backward(x, weight, saved_out)

    def backward(ctx, grad):
        return pack_grads(*_conv_act_grads(ctx, grad, ctx.needs_input_grad[:3]))

    torch.library.register_autograd(op, backward, setup_context=setup_context)


class _WithConvGradients(torch.autograd.Function):
    """run()'s output, with the gradients of relu?(conv2d(x, weight, bias) + residual)."""

    @staticmethod
    def forward(ctx, run, x, weight, bias, residual, relu, conv):
        y = run()
        ctx.conv, ctx.relu = conv, relu
        ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
        ctx.save_for_backward(x, weight, y if relu else None)
        return y

    @staticmethod
    def backward(ctx, grad):
        gx, gw, gb, gr = _conv_act_grads(ctx, grad, ctx.needs_input_grad[1:4])
        return None, gx, gw, gb, gr, None, None


def with_conv_gradients(run, x, weight, bias, residual, relu, conv):
    """run() (a kernel computing relu?(conv2d(x, weight, bias, *conv) + residual) its own way:
    on a prepacked or Winograd-transformed weight) made differentiable with that expression's
    gradients. conv: (stride, padding, dilation, groups)."""
    return _WithConvGradients.apply(run, x, weight, bias, residual, relu, tuple(conv))


_register_autograd("fpnops::conv_bn_act", lambda inputs: inputs,
                   lambda gx, gw, gb, gr: (gx, gw, gb, None, None, None, None, gr, None))

if _backend.TRITON_IMPORTABLE:
    from fpnops.triton import conv_bn_act as _triton_kernels  # defines fpnops::conv1x1_bn_act_triton

    def _triton_unpack(inputs):  # as the native op's inputs: a 1x1 conv, no padding
        x, weight, bias, stride, residual, relu = inputs
        return x, weight, bias, stride, [0, 0], [1, 1], 1, residual, relu

    _register_autograd("fpnops::conv1x1_bn_act_triton", _triton_unpack,
                       lambda gx, gw, gb, gr: (gx, gw, gb, None, gr, None))

    if _triton_kernels.INTERPRETING:
        @torch.library.register_fake("fpnops::conv1x1_bn_act_triton")
        def _conv1x1_fake(x, weight, bias, stride, residual, relu):
            _triton_kernels.check_args(x, weight, bias, stride, residual)
            return _empty_output(x, weight, stride, [0, 0], [1, 1])
