"""Fused stems for models whose stem is not a Sequential: torchvision's ResNet (conv1, bn1, relu
as attributes), torchvision's IntermediateLayerGetter (the body of resnet_fpn_backbone) and the
reference ResNet34. fuse() gives such a model a subclass of its own class (same attributes,
parameters, state_dict and isinstance) whose forward runs conv1 -> bn1 -> relu as one fused conv
(where it may: see run_folding; otherwise each module, in the original order).

The subclass is made at run time (fpnops/nn/_subclass.py), and pickles, deep-copies and
torch.saves as any module.
"""
import functools
from collections import OrderedDict
from typing import Dict

import torch
from torch import Tensor

from fpnops import _backend
from fpnops.nn import _exact
from fpnops.nn._cache import CacheOwner, _FoldedWeights
from fpnops.nn._run import run_folding
from fpnops.nn._subclass import fused_class

class _StemMixin(CacheOwner):
    @torch.jit.unused
    def _stem(self, x):
        if _exact.recorded(x):
            return self._fpnops_base._stem(self, x)
        mods = (("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu))
        return run_folding(type(self).__name__, mods, x, self._fpnops_cache, self._fpnops_backend,
                           winograd_ok=self.winograd)


class _FusedTorchvisionResNet(_StemMixin):
    def _forward_impl(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the original math (README)
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))
        if _exact.recorded(x):
            return self._fpnops_base._forward_impl(self, x)
        return self._fused_forward_impl(x)

    @torch.jit.unused
    def _fused_forward_impl(self, x: Tensor) -> Tensor:
        # torchvision's order; as one run so that bounds pass from stem to layer4 (_run.py)
        mods = [(n, getattr(self, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1",
                                                "layer2", "layer3", "layer4")]
        x = run_folding(type(self).__name__, mods, x, self._fpnops_cache, self._fpnops_backend,
                        winograd_ok=self.winograd)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _FusedLayerGetter(_StemMixin):
    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if torch.jit.is_scripting():  # TorchScript compiles the original math (README)
            out = OrderedDict()
            for name, module in self.items():
                x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out
        if _exact.recorded(x):
            return self._fpnops_base.forward(self, x)
        return self._fused_forward(x)

    @torch.jit.unused
    def _fused_forward(self, x: Tensor) -> Dict[str, Tensor]:
        out = OrderedDict()
        # a run ends at a layer whose output is returned (return_layers={"bn1": ...})
        run_folding(type(self).__name__, self.items(), x, self._fpnops_cache, self._fpnops_backend,
                    on_output=functools.partial(_keep, out, self.return_layers),
                    keep=self.return_layers, winograd_ok=self.winograd)
        return out


def _keep(out, return_layers, name, y):
    if name in return_layers:
        out[return_layers[name]] = y


class _FusedReferenceResNet34(_StemMixin):
    pass  # ResNet34.features calls self._stem; only the stem changes


def with_fused_stem(model, mixin, backend, winograd=True):
    """Give `model` (in place) the subclass of its class that mixes in `mixin`; winograd: the
    stem's run (and whatever it runs as a Sequential run) may use Winograd 3x3 convs."""
    base = getattr(type(model), "_fpnops_base", type(model))
    backend = _backend.check(f"Fused{base.__name__}", backend)
    model.__class__ = fused_class(base, mixin)
    model._fpnops_cache = _FoldedWeights()
    model._fpnops_backend = backend
    model.winograd = winograd
    return model
