"""When a fused module computes exactly what the modules it stands in for compute.

fuse() and the fused modules (at every forward) ask these before they bypass a module's own
forward: a subclass that overrides forward (weight standardisation, a custom norm), a module
with hooks or a forward of its own, or a conv whose padding has no explicit symmetric form runs
as it is. `inlinable` is the one rule every fused parent (blocks, Sequential runs, stems, the
FPN) asks of a child before computing the child's part itself.
"""
import torch
import torch.fx
import torch.nn as nn
import torch.nn.modules.module as _module

_BN = nn.modules.batchnorm._BatchNorm

def overrides(obj, base, names=("forward",)):
    """True where type(obj) resolves any of `names` to something else than `base` does."""
    cls = type(obj)
    return any(getattr(cls, n, None) is not getattr(base, n, None) for n in names)


def _frozen_bn_class():
    try:
        from torchvision.ops.misc import FrozenBatchNorm2d
    except ImportError:
        return None
    return FrozenBatchNorm2d


def in_graph(x=None):
    """Whether this call is being recorded as a graph of ops: torch.jit.trace, or FX symbolic
    tracing (symbolic_trace, create_feature_extractor). The fused modules then record
    fpnops::fused_chain (fpnops/nn/_graph.py), one node per fused chain, so that the graph
    computes the fused model's numbers. Not under torch.compile / torch.export, whose graphs
    take the fused path itself (Inductor folds and packs). x: the call's input, where an FX
    Proxy may show it before the global flag does."""
    if torch.compiler.is_compiling():
        return False
    return (torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy)
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def recorded(x=None):
    """in_graph, or a torch.func transform (grad, vmap, jacrev) runs: there the fused modules run
    the original modules' own math, ops functorch has rules for (vmap has none for fpnops')."""
    if torch.compiler.is_compiling():
        return False
    return in_graph(x) or torch._C._functorch.peek_interpreter_stack() is not None


def global_hooks():
    """Hooks registered for every module (nn.modules.module.register_module_forward_hook and
    friends): bypassing a module's forward would skip them too."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks
                or _module._global_backward_hooks or getattr(_module, "_global_backward_pre_hooks", None))


def has_hooks(m):
    """Forward, pre-forward or backward hooks on `m` itself (a fused path would not call them)."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def inlinable(m):
    """Whether a fused parent may compute `m`'s part itself instead of calling `m`: calling it
    would run exactly its class's forward and nothing else. Not where m has hooks (or hooks for
    every module are registered), a forward set on the instance (`m.forward = wrapper`, as
    accelerate, adapters and debugging tools patch modules), or was compiled by m.compile().
    A child that fails this is called through its own forward, at eager's position."""
    return not (has_hooks(m) or "forward" in m.__dict__
                or getattr(m, "_compiled_call_impl", None) is not None or global_hooks())


def has_running_stats(bn):
    """Whether a BN has both running statistics (FrozenBatchNorm2d always has)."""
    return not isinstance(bn, _BN) or (bn.running_mean is not None and bn.running_var is not None)


def uses_batch_stats(bn):
    """True where BatchNorm normalises with batch statistics (or, missing one running statistic,
    raises in eager): it cannot be folded then."""
    return isinstance(bn, _BN) and (bn.training or bn.running_mean is None or bn.running_var is None)


def conv_padding(conv):
    """The conv's padding as explicit (ph, pw) ints, or None where it has none: a padding_mode
    other than zeros, or padding='same' that pads one side more than the other."""
    if conv.padding_mode != "zeros":
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(conv.padding)


def why_not_conv(m):
    """None where `m` is an nn.Conv2d a fused conv can stand in for; else the reason."""
    if not isinstance(m, nn.Conv2d):
        return f"{type(m).__name__} is not an nn.Conv2d"
    if overrides(m, nn.Conv2d, ("forward", "_conv_forward")):
        return f"{type(m).__name__} overrides nn.Conv2d's forward"
    if conv_padding(m) is None:
        return (f"padding={m.padding!r}, padding_mode={m.padding_mode!r} has no explicit "
                f"symmetric zero padding")
    return None


def why_not_bn(m):
    """None where `m` is a BatchNorm that folds into the conv before it; else the reason."""
    frozen = _frozen_bn_class()
    if isinstance(m, nn.BatchNorm2d):
        if overrides(m, nn.BatchNorm2d, ("forward", "_check_input_dim")):
            return f"{type(m).__name__} overrides nn.BatchNorm2d's forward"
        if isinstance(m.weight, nn.parameter.UninitializedParameter):
            return f"{type(m).__name__} is not initialised yet (lazy)"
        return None
    if frozen is not None and isinstance(m, frozen):
        if overrides(m, frozen, ("forward",)):
            return f"{type(m).__name__} overrides FrozenBatchNorm2d's forward"
        return None
    return f"{type(m).__name__} is not nn.BatchNorm2d or torchvision's FrozenBatchNorm2d"


def check_no_own_forward(who, m):
    """from_module's refusal of a module whose forward is set on the instance: what it computes
    is unknown (fpnops.fuse leaves such modules alone)."""
    if isinstance(m, nn.Module) and "forward" in m.__dict__:
        raise TypeError(f"{who}: {type(m).__name__}'s forward is set on the instance "
                        f"(m.forward = ...); fpnops cannot know what it computes")


def is_plain_relu(m):
    return isinstance(m, nn.ReLU) and not overrides(m, nn.ReLU)
