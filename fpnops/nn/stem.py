"""Fused stems for models whose stem is not a Sequential: torchvision's ResNet (conv1, bn1, relu
as attributes), torchvision's IntermediateLayerGetter (the body of resnet_fpn_backbone) and the
reference ResNet34. fuse() gives such a model a subclass of its own class (same attributes,
parameters, state_dict and isinstance) whose forward runs conv1 -> bn1 -> relu as one fused conv
(where it may: see run_folding; otherwise each module, in the original order).

The subclass is made at run time, so pickle cannot name it; the mixin's __reduce_ex__ names the
mixin and the model's own class instead, and unpickling (or deepcopy) makes the subclass again
(_rebuild): torch.save(model) and copy.deepcopy(model) work, as for any module.
"""
from collections import OrderedDict

import torch

from fpnops import _backend
from fpnops.nn._cache import CacheOwner, _FoldedWeights
from fpnops.nn._run import run_folding

_SUBCLASSES = {}  # (model class, mixin) -> the fused subclass


def fused_class(cls, mixin):
    """The subclass of `cls` that mixes in `mixin` (one per pair, made on first use)."""
    key = (cls, mixin)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f"Fused{cls.__name__}", (mixin, cls),
                                {"__module__": __name__, "_fpnops_base": cls})
    return _SUBCLASSES[key]


def _rebuild(cls, mixin):
    """Unpickling's and deepcopy's constructor for a fused-stem model (state set afterwards)."""
    return object.__new__(fused_class(cls, mixin))


class _StemMixin(CacheOwner):
    def __reduce_ex__(self, protocol):
        mixin = next(c for c in type(self).__mro__ if c in _MIXINS)
        return (_rebuild, (self._fpnops_base, mixin), self.__getstate__())

    def _stem(self, x):
        mods = (("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu))
        return run_folding(type(self).__name__, mods, x, self._fpnops_cache, self._fpnops_backend,
                           winograd_ok=self.winograd)


class _FusedTorchvisionResNet(_StemMixin):
    def _forward_impl(self, x):
        # torchvision's order; as one run so that bounds pass from stem to layer4 (_run.py)
        mods = [(n, getattr(self, n)) for n in ("conv1", "bn1", "relu", "maxpool", "layer1",
                                                "layer2", "layer3", "layer4")]
        x = run_folding(type(self).__name__, mods, x, self._fpnops_cache, self._fpnops_backend,
                        winograd_ok=self.winograd)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _FusedLayerGetter(_StemMixin):
    def forward(self, x):
        out = OrderedDict()

        def keep(name, y):
            if name in self.return_layers:
                out[self.return_layers[name]] = y

        # a run ends at a layer whose output is returned (return_layers={"bn1": ...})
        run_folding(type(self).__name__, self.items(), x, self._fpnops_cache, self._fpnops_backend,
                    on_output=keep, keep=self.return_layers, winograd_ok=self.winograd)
        return out


class _FusedReferenceResNet34(_StemMixin):
    pass  # ResNet34.features calls self._stem; only the stem changes


_MIXINS = (_FusedTorchvisionResNet, _FusedLayerGetter, _FusedReferenceResNet34)


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
