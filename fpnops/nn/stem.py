"""Fused stems for models whose stem is not a Sequential: torchvision's ResNet (conv1, bn1, relu
as attributes), torchvision's IntermediateLayerGetter (the body of resnet_fpn_backbone) and the
reference ResNet34. fuse() gives such a model a subclass of its own class (same attributes,
parameters, state_dict and isinstance) whose forward runs conv1 -> bn1 -> relu as one
conv_bn_act. The subclass is made at run time, so pickle the state_dict, not the module.
"""
from collections import OrderedDict

import torch

from fpnops.nn.resnet import _FoldedWeights, run_folding

_SUBCLASSES = {}


class _StemFolding:
    def _stem(self, x):
        mods = [("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu)]
        return run_folding(mods, x, self._fpnops_folded, self._fpnops_backend)


class _FusedTorchvisionResNet(_StemFolding):
    def _forward_impl(self, x):
        x = self.maxpool(self._stem(x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _FusedLayerGetter:
    def forward(self, x):
        out = OrderedDict()

        def keep(name, y):
            if name in self.return_layers:
                out[self.return_layers[name]] = y

        run_folding(self.items(), x, self._fpnops_folded, self._fpnops_backend, on_output=keep)
        return out


class _FusedReferenceResNet34(_StemFolding):
    pass  # ResNet34.features calls self._stem; only the stem changes


def with_fused_stem(model, mixin, backend):
    """Give `model` (in place) the subclass of its class that mixes in `mixin`."""
    cls = type(model)
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Fused{cls.__name__}", (mixin, cls), {"__module__": __name__})
    model.__class__ = _SUBCLASSES[cls]
    model._fpnops_folded = _FoldedWeights()
    model._fpnops_backend = backend
    return model
