"""fpnops.fuse(model): replace every pattern fpnops recognises by its fused module.

A pattern is a (name, folds_bn, matches(module) -> bool, convert(module, backend) -> module)
entry in PATTERNS, tried in order; folds_bn marks the ones that fold BatchNorm (they change
rounding, so fuse(..., fold_bn=False) skips them and stays bit-exact); the walk is top-down and a converted module's children are then
searched too (a fused stem's model still holds blocks and FPNs to fuse).
"""
import copy

import torch.nn as nn

from fpnops.nn import stem
from fpnops.nn.fpn import FusedFPN, FusedReferenceFPN, _is_torchvision_fpn
from fpnops.nn.resnet import FusedBasicBlock, FusedBottleneck, FusedConvBNAct, is_bn
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


def _is(name):
    def matches(m):
        cls = _torchvision(name)
        return cls is not None and type(m) is cls
    return matches


def _has_conv_bn_run(m):
    """A plain Sequential holding Conv2d directly followed by a BatchNorm."""
    if type(m) not in (nn.Sequential, _torchvision("torchvision.ops.misc.Conv2dNormActivation")):
        return False
    mods = list(m)
    return any(isinstance(a, nn.Conv2d) and is_bn(b) for a, b in zip(mods, mods[1:]))


PATTERNS = [
    ("torchvision FeaturePyramidNetwork", False, _is_torchvision_fpn,
     lambda m, backend: FusedFPN.from_module(m, backend=backend)),
    ("fpnops.reference.FPN", False, lambda m: type(m) is ReferenceFPN,
     lambda m, backend: FusedReferenceFPN._from_reference(m, backend)),
    ("torchvision Bottleneck", True, _is("torchvision.models.resnet.Bottleneck"),
     lambda m, backend: FusedBottleneck.from_module(m, backend=backend)),
    ("torchvision BasicBlock", True, _is("torchvision.models.resnet.BasicBlock"),
     lambda m, backend: FusedBasicBlock.from_module(m, backend=backend)),
    ("fpnops.reference.Bottleneck", True, lambda m: type(m) is ref_resnet.Bottleneck,
     lambda m, backend: FusedBottleneck.from_module(m, backend=backend)),
    ("fpnops.reference.BasicBlock", True, lambda m: type(m) is ref_resnet.BasicBlock,
     lambda m, backend: FusedBasicBlock.from_module(m, backend=backend)),
    ("Sequential with conv -> BN (-> ReLU) runs", True, _has_conv_bn_run,
     lambda m, backend: FusedConvBNAct.from_module(m, backend=backend)),
    ("torchvision ResNet stem", True, _is("torchvision.models.resnet.ResNet"),
     lambda m, backend: stem.with_fused_stem(m, stem._FusedTorchvisionResNet, backend)),
    ("torchvision IntermediateLayerGetter stem", True, _is("torchvision.models._utils.IntermediateLayerGetter"),
     lambda m, backend: stem.with_fused_stem(m, stem._FusedLayerGetter, backend)),
    ("fpnops.reference.ResNet34 stem", True, lambda m: type(m) is ref_resnet.ResNet34,
     lambda m, backend: stem.with_fused_stem(m, stem._FusedReferenceResNet34, backend)),
]


def _fuse_in_place(module, backend, fold_bn):
    for _, folds_bn, matches, convert in PATTERNS:
        if (fold_bn or not folds_bn) and matches(module):
            module = convert(module, backend)
            break
    for name, child in list(module.named_children()):
        new = _fuse_in_place(child, backend, fold_bn)
        if new is not child:
            setattr(module, name, new)
    return module


def fuse(model: nn.Module, *, backend: str = "auto", inplace: bool = False,
         fold_bn: bool = True) -> nn.Module:
    """Return `model` with every recognised pattern replaced by its fused equivalent.

    Recognised: torchvision's FeaturePyramidNetwork (-> FusedFPN) and the seeds' reference FPN
    (-> FusedReferenceFPN); torchvision's and the reference Bottleneck and BasicBlock
    (-> FusedBottleneck, FusedBasicBlock); Sequentials holding conv -> BN (-> ReLU) runs (a
    ResNet50 stem, Conv2dNormActivation; -> FusedConvBNAct); the conv1 -> bn1 -> relu stems of
    torchvision's ResNet, IntermediateLayerGetter (resnet_fpn_backbone, the detection models)
    and the reference ResNet34. Anywhere in the module tree; everything else is left as is.
    Parameters, buffers and their names are kept: state_dict() keys do not change.

    Args:
        model: any nn.Module.
        backend: the fpnops backend the fused modules use ("auto", "native", "triton", "torch").
        inplace: modify `model` itself; by default a deep copy is fused and `model` is untouched.
        fold_bn: also fuse conv-BatchNorm(-ReLU) (ResNet blocks and stems). Folding changes
            rounding (a float32 ResNet50 moves ~1e-6 relative); fold_bn=False fuses only the FPN
            top-down steps, whose outputs are bit-identical to the original model's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    return _fuse_in_place(model, backend, fold_bn)
