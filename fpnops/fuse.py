"""fpnops.fuse(model): replace every pattern fpnops recognises by its fused module, and only
where the replacement computes exactly what the original's own forward computes.

A pattern (PATTERNS, tried in order) names the exact class it replaces (subclasses may change
forward or anything the replacement relies on, so they stay as they are), whether it folds
BatchNorm (that changes rounding, so fold_bn=False skips it), why a module of that class must
still be left alone (a conv or norm fpnops cannot fold exactly), and how to convert it. The walk
is top-down; a converted module's children are searched too (a fused stem's model still holds
blocks and FPNs); a module met twice (tied) is fused once. The module's own hooks move to its
replacement; a child with hooks or a forward of its own is called by the fused parent through
its own forward, at eager's position, while they are there (fpnops/nn/_exact.py: inlinable).
"""
import copy
import dataclasses
from typing import Callable, List, Optional

import torch
import torch.nn as nn

from fpnops import _backend
from fpnops.nn import _exact, stem
from fpnops.nn._cache import CacheOwner
from fpnops.nn.fpn import FusedFPN, FusedReferenceFPN
from fpnops.nn.resnet import FusedBasicBlock, FusedBottleneck, FusedConvBNAct
from fpnops.ops.fold import fold_conv_bn_if_it_fits
from fpnops.reference import resnet as ref_resnet
from fpnops.reference.fpn import FPN as ReferenceFPN


def _torchvision(name):
    """A torchvision class by dotted name, or None (torchvision is optional)."""
    try:
        import importlib
        mod, _, attr = name.rpartition(".")
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError):
        return None


def _why_not_pairs(m, pairs, relu="relu"):
    """None where every (conv, norm) attribute pair of `m` folds exactly and its ReLU is plain."""
    for conv, norm in pairs:
        c, n = getattr(m, conv, None), getattr(m, norm, None)
        why = _exact.why_not_conv(c) or _exact.why_not_bn(n) or _why_not_fits(c, n)
        if why:
            return f"{conv}/{norm}: {why}"
    if relu is not None and not _exact.is_plain_relu(getattr(m, relu, None)):
        return f"{relu}: {type(getattr(m, relu, None)).__name__} is not a plain nn.ReLU"
    return None


def _looks_like_norm(m):
    """For the report only: a module that sits where a BatchNorm would."""
    return "Norm" in type(m).__name__ or isinstance(m, nn.Identity)


def _why_not_run(m):
    """None where the Sequential holds at least one conv -> BN pair that folds exactly."""
    mods = list(m)
    pairs = [(a, b) for a, b in zip(mods, mods[1:]) if isinstance(a, nn.Conv2d) and _looks_like_norm(b)]
    whys = [_exact.why_not_conv(a) or _exact.why_not_bn(b) or _why_not_fits(a, b) for a, b in pairs]
    if not pairs:
        return _NO_RUN
    return None if None in whys else whys[0]


def _why_not_fits(conv, bn):
    """Why the BN cannot fold into the conv's dtype now (fold_conv_bn_if_it_fits), or None.
    Checked again at every fold: weights and statistics change after fuse()."""
    if _exact.uses_batch_stats(bn) and (bn.running_mean is None or bn.running_var is None):
        return None  # batch statistics only: nothing folds, the module's own math runs
    if conv.weight.device.type == "meta" or fold_conv_bn_if_it_fits(conv, bn) is not None:
        return None
    return (f"folding gives values that {conv.weight.dtype} cannot hold (beyond "
            f"{torch.finfo(conv.weight.dtype).max:.4g}); eager normalises after the conv")


_NO_RUN = "no Conv2d followed by a norm layer"
_BLOCK = (("conv1", "bn1"), ("conv2", "bn2"))
_BOTTLENECK = _BLOCK + (("conv3", "bn3"),)
_STEM = (("conv1", "bn1"),)


@dataclasses.dataclass(frozen=True)
class Pattern:
    name: str
    cls: Callable[[], Optional[type]]  # the exact class replaced (None: not installed)
    folds_bn: bool
    why_not: Callable[[nn.Module], Optional[str]]  # None: fuse it; else why it stays
    convert: Callable[[nn.Module, str, bool], nn.Module]  # (module, backend, winograd)


def _tv(name):
    return lambda: _torchvision(name)


def _fixed(cls):
    return lambda: cls


def _ok(m):
    return None


PATTERNS = [
    Pattern("torchvision FeaturePyramidNetwork", _tv("torchvision.ops.FeaturePyramidNetwork"), False,
            _ok, lambda m, backend, wino: FusedFPN.from_module(m, backend=backend, winograd=wino)),
    Pattern("fpnops.reference.FPN", _fixed(ReferenceFPN), False, _ok,
            lambda m, backend, wino: FusedReferenceFPN._from_reference(m, backend)),
    Pattern("torchvision Bottleneck", _tv("torchvision.models.resnet.Bottleneck"), True,
            lambda m: _why_not_pairs(m, _BOTTLENECK),
            lambda m, backend, wino: FusedBottleneck.from_module(m, backend=backend, winograd=wino)),
    Pattern("torchvision BasicBlock", _tv("torchvision.models.resnet.BasicBlock"), True,
            lambda m: _why_not_pairs(m, _BLOCK),
            lambda m, backend, wino: FusedBasicBlock.from_module(m, backend=backend, winograd=wino)),
    Pattern("fpnops.reference.Bottleneck", _fixed(ref_resnet.Bottleneck), True,
            lambda m: _why_not_pairs(m, _BOTTLENECK),
            lambda m, backend, wino: FusedBottleneck.from_module(m, backend=backend, winograd=wino)),
    Pattern("fpnops.reference.BasicBlock", _fixed(ref_resnet.BasicBlock), True,
            lambda m: _why_not_pairs(m, _BLOCK),
            lambda m, backend, wino: FusedBasicBlock.from_module(m, backend=backend, winograd=wino)),
    Pattern("nn.Sequential with conv -> BN (-> ReLU) runs", _fixed(nn.Sequential), True, _why_not_run,
            lambda m, backend, wino: FusedConvBNAct.from_module(m, backend=backend, winograd=wino)),
    Pattern("torchvision Conv2dNormActivation", _tv("torchvision.ops.misc.Conv2dNormActivation"), True,
            _why_not_run,
            lambda m, backend, wino: FusedConvBNAct.from_module(m, backend=backend, winograd=wino)),
    Pattern("torchvision ResNet (blocks run as one)", _tv("torchvision.models.resnet.ResNet"), True,
            lambda m: _why_not_pairs(m, _STEM),
            lambda m, backend, wino: stem.with_fused_stem(m, stem._FusedTorchvisionResNet, backend, wino)),
    Pattern("torchvision IntermediateLayerGetter stem", _tv("torchvision.models._utils.IntermediateLayerGetter"),
            True, lambda m: _why_not_pairs(m, _STEM) if "conv1" in m._modules else "no conv1/bn1/relu stem",
            lambda m, backend, wino: stem.with_fused_stem(m, stem._FusedLayerGetter, backend, wino)),
    Pattern("fpnops.reference.ResNet34 stem", _fixed(ref_resnet.ResNet34), True,
            lambda m: _why_not_pairs(m, _STEM),
            lambda m, backend, wino: stem.with_fused_stem(m, stem._FusedReferenceResNet34, backend, wino)),
]

# Every hook dict a module call or its state_dict consults: a replacement shares them with the
# module it replaces, so the hooks keep firing and their handles keep removing them.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
               "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _carry_hooks(old, new):
    if new is old:
        return
    for name in _HOOK_DICTS:
        if hasattr(old, name):
            setattr(new, name, getattr(old, name))
    if getattr(old, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = old._is_full_backward_hook


@dataclasses.dataclass
class FuseEntry:
    """One line of fuse()'s report: a module fused, or one that looks like a pattern left alone."""
    path: str
    original: str
    replacement: Optional[str]  # None: left alone
    reason: str

    def __str__(self):
        where = self.path or "(the model itself)"
        if self.replacement is None:
            return f"left alone  {where} ({self.original}): {self.reason}"
        return f"fused       {where} ({self.original} -> {self.replacement})"


def _looks_like(module):
    """The pattern a module of a subclass of a pattern's class would have matched."""
    for p in PATTERNS:
        cls = p.cls()
        if cls is not None and cls is not nn.Sequential and isinstance(module, cls):
            return p
    return None


def _fuse_in_place(module, path, options, report: List[FuseEntry], done):
    """Fuse `module` and what is under it; returns its replacement (or itself). options:
    (backend, fold_bn, winograd). done: id -> (replacement, path) of every module walked, so
    that a module used at several places (tied) is fused once and the same replacement stands
    at each of them."""
    if id(module) in done:
        new, first = done[id(module)]
        report.append(FuseEntry(path, type(module).__name__, type(new).__name__,
                                f"the same module as {first or '(the model itself)'}"))
        return new
    backend, fold_bn, winograd = options
    original = type(module).__name__
    key = id(module)
    pattern = next((p for p in PATTERNS if p.cls() is not None and type(module) is p.cls()), None)
    if pattern is not None:
        why = "fold_bn=False" if pattern.folds_bn and not fold_bn else (
            _OWN_FORWARD if "forward" in module.__dict__ else pattern.why_not(module))
        if why is None:
            new = pattern.convert(module, backend, winograd)
            if isinstance(new, FusedFPN) and fold_bn:
                new.exact = False  # rounding may change (as folding does): Winograd output convs
            _carry_hooks(module, new)
            module = new
            report.append(FuseEntry(path, original, type(new).__name__, pattern.name))
        elif why is not _NO_RUN:  # a Sequential without conv -> norm is not worth a line
            report.append(FuseEntry(path, original, None, why))
    elif _looks_like(module) is not None and not _is_fused(module):
        base = _looks_like(module).cls().__name__
        report.append(FuseEntry(path, original, None, f"a subclass of {base}: fpnops replaces "
                                f"{base} itself only (a subclass may compute something else)"))
    done[key] = (module, path)
    for name, child in list(module._modules.items()):  # named_children() skips a repeat
        if child is None:
            continue
        new = _fuse_in_place(child, f"{path}.{name}" if path else name, options, report, done)
        if new is not child:
            setattr(module, name, new)
    return module


def _is_fused(module):
    """fpnops' own fused module (fusing a fused model again leaves it, without a report line)."""
    return isinstance(module, (CacheOwner, FusedReferenceFPN))


_OWN_FORWARD = ("its forward is set on the instance (m.forward = ...): fpnops cannot know what "
                "it computes")


def fuse(model: nn.Module, *, backend: str = "auto", inplace: bool = False,
         fold_bn: bool = True, winograd: bool = True, verbose: bool = False) -> nn.Module:
    """Return `model` with every recognised pattern replaced by its fused equivalent.

    Recognised (exact classes, anywhere in the module tree): torchvision's FeaturePyramidNetwork
    (-> FusedFPN) and the seeds' reference FPN (-> FusedReferenceFPN); torchvision's and the
    reference Bottleneck and BasicBlock (-> FusedBottleneck, FusedBasicBlock); nn.Sequential and
    Conv2dNormActivation holding conv -> BN (-> ReLU) runs (a ResNet50 stem; -> FusedConvBNAct);
    the conv1 -> bn1 -> relu stems of torchvision's ResNet, IntermediateLayerGetter
    (resnet_fpn_backbone, the detection models) and the reference ResNet34.

    Left alone, and listed with the reason when verbose=True: subclasses of those classes (they
    may compute something else), blocks and stems whose convs or norms fpnops cannot fold
    exactly (a Conv2d subclass with its own forward, padding_mode other than zeros, asymmetric
    padding="same", GroupNorm or any norm other than nn.BatchNorm2d / FrozenBatchNorm2d), and
    everything else. A replaced module's hooks move to its replacement. Parameters, buffers and
    their names are kept: state_dict() keys do not change.

    Args:
        model: any nn.Module.
        backend: the fpnops backend the fused modules use ("auto", "native", "triton", "torch").
        inplace: modify `model` itself; by default a deep copy is fused and `model` is untouched.
        fold_bn: also fuse conv-BatchNorm(-ReLU) (ResNet blocks and stems), and let the fused
            modules round differently: folding, and (CPU float32 inference) Winograd 3x3 convs
            in the blocks and the FPN's output convs (a float32 ResNet50-FPN moves ~2e-6
            relative). fold_bn=False fuses only the FPN top-down steps, whose outputs are
            bit-identical to the original model's.
        winograd: False: no Winograd 3x3 convs anywhere, every other fusion kept. Winograd's
            error per output is bounded relative to its input tile's largest value, not to the
            output itself (fpnops/ops/winograd.py): outputs much smaller than their
            neighbourhood (one bright pixel beside dim ones) can be off by a few percent of
            their own value while the whole map is within ~2e-6. Set it False where each
            output must agree with eager to float32 rounding.
        verbose: print what was fused and what was left alone, and why.

    A module used at several places (tied) is fused once: the same replacement stands at each.
    A module whose forward is set on the instance, and a block whose BatchNorm folds to values
    its dtype cannot hold (float16: beyond 65504), stay as they are.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    _backend.check("fuse", backend)
    for name, flag in (("inplace", inplace), ("fold_bn", fold_bn), ("winograd", winograd),
                       ("verbose", verbose)):
        if not isinstance(flag, bool):
            raise TypeError(f"fuse: {name} must be True or False, got {flag!r}")
    if not inplace:
        # Outside inference mode, so that a model fused under torch.inference_mode() gets normal
        # tensors (with version counters) rather than inference tensors.
        with torch.inference_mode(False):
            model = copy.deepcopy(model)
    report: List[FuseEntry] = []
    model = _fuse_in_place(model, "", (backend, fold_bn, winograd), report, {})
    if verbose:
        fused = sum(e.replacement is not None for e in report)
        print(f"fpnops.fuse: {fused} module(s) fused, {len(report) - fused} left alone")
        for entry in report:
            print(f"  {entry}")
    return model
