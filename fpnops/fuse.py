"""fpnops.fuse(model): replace every pattern fpnops recognises by its fused module.

A pattern is a (name, matches(module) -> bool, convert(module, backend) -> module) entry in
PATTERNS; later issues add the ResNet blocks here. The walk is top-down: a converted module is
not searched again.
"""
import copy

import torch.nn as nn

from fpnops.nn.fpn import FusedFPN, FusedReferenceFPN, _is_torchvision_fpn
from fpnops.reference.fpn import FPN as ReferenceFPN

PATTERNS = [
    ("torchvision FeaturePyramidNetwork", _is_torchvision_fpn,
     lambda m, backend: FusedFPN.from_module(m, backend=backend)),
    ("fpnops.reference.FPN", lambda m: type(m) is ReferenceFPN,
     lambda m, backend: FusedReferenceFPN._from_reference(m, backend)),
]


def _convert(module, backend):
    for _, matches, convert in PATTERNS:
        if matches(module):
            return convert(module, backend)
    return None


def _fuse_in_place(module, backend):
    fused = _convert(module, backend)
    if fused is not None:
        return fused
    for name, child in list(module.named_children()):
        new = _fuse_in_place(child, backend)
        if new is not child:
            setattr(module, name, new)
    return module


def fuse(model: nn.Module, *, backend: str = "auto", inplace: bool = False) -> nn.Module:
    """Return `model` with every recognised pattern replaced by its fused equivalent.

    Recognised now: torchvision's FeaturePyramidNetwork (-> FusedFPN) and the seeds'
    fpnops.reference.FPN (-> FusedReferenceFPN), anywhere in the module tree (BackboneWithFPN,
    Faster/Mask R-CNN, RetinaNet, the reference DetectionModel, ...). Everything else is left
    as it is. Fused modules share the (copied, unless inplace) model's parameters and buffers,
    under the same names: state_dict() keys do not change.

    Args:
        model: any nn.Module.
        backend: the fpnops backend the fused modules use ("auto", "native", "triton", "torch").
        inplace: modify `model` itself; by default a deep copy is fused and `model` is untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    return _fuse_in_place(model, backend)
