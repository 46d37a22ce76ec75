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
from typing import Dict, List, Optional

import torch
from torch import Tensor

from fpnops import _backend
from fpnops.nn import _exact, _graph, _run
from fpnops.nn._cache import CacheOwner, _FoldedWeights
from fpnops.nn._chain import _check_x
from fpnops.nn._run import graph_run, run_folding
from fpnops.nn._subclass import fused_class

class _StemMixin(CacheOwner):
    @torch.jit.unused
    def _stem(self, x):
        if _exact.in_graph(x):
            return graph_run(type(self).__name__, self._stem_modules(), x, self._fpnops_backend,
                             winograd_ok=self.winograd)
        if _exact.recorded(x):
            return self._fpnops_base._stem(self, x)
        return run_folding(type(self).__name__, self._stem_modules(), x, self._fpnops_cache,
                           self._fpnops_backend, winograd_ok=self.winograd)

    @torch.jit.unused
    def _stem_modules(self):
        return (("conv1", self.conv1), ("bn1", self.bn1), ("relu", self.relu))

    @torch.jit.unused
    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: whether the TorchScript forward runs conv1 -> bn1
        (-> relu) as one fpnops::fused_chain (_graph.py); bn1's mode is read at each call."""
        self.__dict__.pop("_fpnops_script", None)
        keep = getattr(self, "return_layers", {})
        steps, _ = _run._run_at(list(self._stem_modules()), 0, keep, None, live_ok=True)
        if steps is not None:
            (name, p, relu), = steps
            _graph.script_plan(self, [(p.conv, p.bn)], [relu], _graph.NONE, [name])
        return self

    def _script_stem(self, x: Tensor) -> Tensor:
        """TorchScript: conv1 -> bn1 -> relu, fused where __prepare_scriptable__ found it may."""
        if hasattr(self, "_fpnops_script"):
            if not _graph.any_live([self.bn1.training], self._fpnops_frozen):
                slots: List[Optional[Tensor]] = [self.conv1.weight, self.conv1.bias,
                                                 self.bn1.weight, self.bn1.bias,
                                                 self.bn1.running_mean, self.bn1.running_var]
                y = _graph.script_call(x, slots, [self.bn1.eps], self._fpnops_frozen,
                                       self._fpnops_geometry, self._fpnops_relus, _graph.NONE,
                                       self._fpnops_winograd, self._fpnops_backend,
                                       self._fpnops_who, self._fpnops_names)
                return y if self._fpnops_relus[0] == 1 else self.relu(y)
        return self.relu(self.bn1(self.conv1(x)))


class _FusedTorchvisionResNet(_StemMixin):
    """torchvision's ResNet classifier: its stem runs as its modules (conv1, bn1, relu, each
    through its own forward), not fused. torchvision's feature extraction takes a ResNet's
    children one by one (IntermediateLayerGetter(model, ...): conv1, bn1, relu, maxpool,
    layer1, ...) and expects the model's own numbers from them, bit for bit (its
    test_feature_extraction_methods_equivalence); a stem folded across three of the model's
    children cannot give those. (What that costs a batch-1 224x224 ResNet50:
    benchmarks/results/issue19-stem-before-after-epyc-avx512.json.) What remains is one run
    from max pool to layer4, bounds handed on between the blocks (_run.py). An IntermediateLayerGetter that fuse() meets (a
    detector's backbone body) is the module whose own forward runs the stem: fused there."""

    def _forward_impl(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: the stem's modules, then the fused blocks
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))
        if _exact.recorded(x):  # a graph: the blocks record their own fused chains
            return self._fpnops_base._forward_impl(self, x)
        return self._fused_forward_impl(x)

    @torch.jit.unused
    def __prepare_scriptable__(self):
        return self  # nothing fused in its own TorchScript forward

    @torch.jit.unused
    def _fused_forward_impl(self, x: Tensor) -> Tensor:
        _check_x(type(self).__name__, "conv1", x, self.conv1)  # fpnops' errors, naming the conv
        x = self.relu(self.bn1(self.conv1(x)))
        # torchvision's order; as one run so that bounds pass from block to block (_run.py)
        mods = [(n, getattr(self, n)) for n in ("maxpool", "layer1", "layer2", "layer3", "layer4")]
        x = run_folding(type(self).__name__, mods, x, self._fpnops_cache, self._fpnops_backend,
                        winograd_ok=self.winograd)
        return self.fc(torch.flatten(self.avgpool(x), 1))


class _FusedLayerGetter(_StemMixin):
    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        if torch.jit.is_scripting():  # TorchScript: the stem fused (_script_stem), then blocks
            out = OrderedDict()
            for name, module in self.items():
                if hasattr(self, "_fpnops_script") and name == "conv1":
                    x = self._script_stem(x)  # conv1, bn1 and relu
                elif not (hasattr(self, "_fpnops_script") and name in ("bn1", "relu")):
                    x = module(x)
                if name in self.return_layers:
                    out[self.return_layers[name]] = x
            return out
        if _exact.in_graph(x):
            out = OrderedDict()
            graph_run(type(self).__name__, self.items(), x, self._fpnops_backend,
                      on_output=functools.partial(_keep, out, self.return_layers),
                      keep=self.return_layers, winograd_ok=self.winograd)
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
