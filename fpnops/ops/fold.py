"""fpnops.fold_conv_bn: BatchNorm (inference statistics) folded into the preceding conv."""
import torch
import torch.nn as nn


def _bn_tensors(bn):
    """(gamma, beta, mean, var, eps) of an nn.BatchNorm2d or torchvision FrozenBatchNorm2d."""
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("fold_conv_bn: bn has no running statistics (track_running_stats=False); "
                             "it normalises with batch statistics, which cannot be folded")
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    if type(bn).__name__ == "FrozenBatchNorm2d" and hasattr(bn, "running_var"):
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps
    raise TypeError(f"fold_conv_bn: bn must be nn.BatchNorm2d or torchvision's FrozenBatchNorm2d, "
                    f"got {type(bn).__name__}")


def fold_conv_bn(conv, bn):
    """(weight, bias) of one conv equal to bn(conv(x)) with bn's running statistics.

    w' = w * gamma / sqrt(var + eps),  b' = (b - mean) * gamma / sqrt(var + eps) + beta,
    with each module's own eps (torchvision's detection models use eps=0), computed in float64
    (float32 math loses ~1e-7 relative per fold) and cast to the conv's dtype. Differentiable:
    gradients reach the conv's weight and bias and the BN's affine parameters.
    """
    return _cast(*_fold64(conv, bn), conv.weight)


def fold_conv_bn_if_it_fits(conv, bn, traced=False):
    """fold_conv_bn's (weight, bias), or None where a folded value that is finite in float64
    does not fit the conv's dtype: float16 holds at most 65504, and a BN with running_var 1e-5
    and running_mean 300 folds a bias of -9.5e4, which would be -inf, while eager, which
    normalises the conv's output, stays finite. The fused modules then run the unfolded math.
    traced (torch.compile): no check on values can run there; float16 is taken as not fitting,
    the wider dtypes as fitting (a fold overflows them only past 3.4e38)."""
    dtype = conv.weight.dtype
    if traced and dtype == torch.float16:
        return None
    w64, b64 = _fold64(conv, bn)
    if dtype != torch.float64 and not traced:
        top = torch.finfo(dtype).max
        if any(bool(((t.abs() > top) & t.isfinite()).any()) for t in (w64, b64)):
            return None
    return _cast(w64, b64, conv.weight)


def _fold64(conv, bn):
    """The checks, then the folded (weight, bias) in float64."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fold_conv_bn: conv must be nn.Conv2d, got {type(conv).__name__}")
    gamma, beta, mean, var, eps = _bn_tensors(bn)
    for name, module, tensors in (("conv", conv, (conv.weight, conv.bias)),
                                  ("bn", bn, (gamma, beta, mean, var))):
        if any(isinstance(t, nn.parameter.UninitializedTensorMixin) for t in tensors):
            raise ValueError(f"fold_conv_bn: {name} ({type(module).__name__}) has uninitialized "
                             f"(lazy) parameters or buffers; run a forward pass first")
    devices = {t.device for t in (gamma, beta, mean, var) if t is not None}
    if devices - {conv.weight.device}:
        raise ValueError(f"fold_conv_bn: bn must be on conv's device {conv.weight.device}, got "
                         f"{', '.join(sorted(map(str, devices)))}")
    c = conv.out_channels
    if mean.numel() != c:
        raise ValueError(f"fold_conv_bn: bn has {mean.numel()} channels but conv has "
                         f"{c} output channels")
    acc = torch.float64
    inv_std = torch.rsqrt(var.to(acc) + eps)
    scale = inv_std if gamma is None else gamma.to(acc) * inv_std
    shift = -mean.to(acc) * scale if beta is None else beta.to(acc) - mean.to(acc) * scale
    weight = conv.weight.to(acc) * scale.reshape(-1, 1, 1, 1)
    bias = shift if conv.bias is None else conv.bias.to(acc) * scale + shift
    return weight, bias


def _cast(weight, bias, like):
    """The float64 fold in the conv weight's dtype and memory format."""
    weight = weight.to(like.dtype)
    if like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        weight = weight.contiguous(memory_format=torch.channels_last)
    return weight, bias.to(like.dtype)
