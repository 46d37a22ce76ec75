"""FusedFPN: torchvision's FeaturePyramidNetwork (and the seeds' reference FPN) with the
top-down step `lateral + nearest_upsample(top)` done by fpnops.upsample_add in one pass.

Same constructor, submodule names, state_dict keys and forward contract as
torchvision.ops.FeaturePyramidNetwork, so checkpoints load unchanged and outputs are equal bit
for bit (upsample_add is bit-identical to eager's interpolate + add).
"""
import numbers
from collections import OrderedDict
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from fpnops import _backend
from fpnops._errors import InputError, InputTypeError
from fpnops.nn import _exact, _graph
from fpnops.nn._cache import SAFE_BOUND, CacheOwner, _amax, _FoldedWeights, _l1
from fpnops.nn._subclass import fused_class
from fpnops.ops import winograd
from fpnops.ops.upsample_add import upsample_add
from fpnops.ops.upsample_add_checks import check_dense
from fpnops.reference.fpn import FPN as ReferenceFPN


def _top_down(top: Tensor, lateral: Tensor, backend: str, scale_factor: Optional[float] = None,
              eager: bool = False) -> Tensor:
    if eager or top.shape[:2] != lateral.shape[:2] or not _plain_layout(lateral):
        # eager: asked for (a call being recorded, _exact.recorded); eager's add broadcasts (a
        # batch of 1), or raises; or it lays the sum out otherwise than upsample_add (see
        # _plain_layout): eager's own math
        if scale_factor is None:
            return lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return lateral + F.interpolate(top, scale_factor=scale_factor, mode="nearest")
    if torch.jit.is_scripting():  # TorchScript cannot compile the Python face; the op it can
        return torch.ops.fpnops.upsample_add(top, lateral, scale_factor, scale_factor)
    return upsample_add(top, lateral, scale_factor=scale_factor, backend=backend)


def _plain_layout(t: Tensor) -> bool:
    """Whether eager's `t + interpolate(top)` has the layout upsample_add gives (t's memory
    format, dense): where t is dense in NCHW or channels_last with more than one channel, row
    and column. Otherwise TensorIterator picks its own strides (for size-1 dims, and in the
    order of a strided view's), and a conv reading the sum may take another algorithm for them
    (a 1x1 map given as a channels_last view: 1 ulp)."""
    return (t.dim() == 4 and t.size(1) > 1 and t.size(2) > 1 and t.size(3) > 1
            and (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)))


def _check_constructor(in_channels_list, out_channels, norm_layer):
    """FusedFPN's constructor arguments (torchvision's would fail later, or deep in nn.Conv2d)."""
    if isinstance(in_channels_list, (str, bytes)) or not hasattr(in_channels_list, "__iter__"):
        raise TypeError(f"FusedFPN: in_channels_list must be a list of channel counts, got "
                        f"{type(in_channels_list).__name__}")
    in_channels_list = list(in_channels_list)
    if not in_channels_list:
        raise ValueError("FusedFPN: in_channels_list must name at least one level, got []")
    for c in in_channels_list:
        if not isinstance(c, numbers.Integral) or isinstance(c, bool):
            raise TypeError(f"FusedFPN: in_channels_list entries must be ints, got {c!r} in "
                            f"{in_channels_list}")
        if c == 0:
            raise ValueError("FusedFPN: in_channels=0 is not supported")
        if c < 0:
            raise ValueError(f"FusedFPN: in_channels_list entries must be positive, got {c} in "
                             f"{in_channels_list}")
    if not isinstance(out_channels, numbers.Integral) or isinstance(out_channels, bool):
        raise TypeError(f"FusedFPN: out_channels must be an int, got {out_channels!r}")
    if out_channels < 0:
        raise ValueError(f"FusedFPN: out_channels must be >= 0, got {out_channels}")
    if norm_layer is not None and not callable(norm_layer):
        raise TypeError(f"FusedFPN: norm_layer must be None or callable (e.g. nn.BatchNorm2d), "
                        f"got {type(norm_layer).__name__}")
    return in_channels_list


def _block_index(level: int, levels: int, blocks: int) -> int:
    """The inner/layer block torchvision's FPN applies to x's `level` (-1: none, the map passes
    through): the coarsest map gets the last block, level i < blocks the i-th."""
    if level == levels - 1:
        return blocks - 1
    return level if level < blocks else -1


def _check_levels(x, inner_blocks):
    """FusedFPN.forward's x: a non-empty dict of dense 4-D maps, finest first, each with the
    channels of the 1x1 conv torchvision's FPN would apply to it (each error names x[name])."""
    if not isinstance(x, Mapping):
        raise InputTypeError(f"FusedFPN: x must be a dict of feature maps (name -> Tensor), finest "
                        f"first, got {type(x).__name__}")
    if len(x) == 0:
        raise InputError(f"FusedFPN: x has 0 feature maps, but this FPN has "
                         f"{len(inner_blocks)} levels (one per in_channels_list entry)")
    for level, (name, t) in enumerate(x.items()):
        what = f"x[{name!r}]"
        check_dense("FusedFPN", what, t)
        if t.dim() != 4:
            raise InputError(f"FusedFPN: {what} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
        idx = _block_index(level, len(x), len(inner_blocks))
        block = inner_blocks[idx] if idx >= 0 else None
        conv = block[0] if isinstance(block, nn.Sequential) else block
        channels = getattr(conv, "in_channels", None)
        if channels is not None and t.shape[1] != channels:
            raise InputError(f"FusedFPN: {what} must have {channels} channels (the in_channels of "
                             f"the inner block it goes through), got shape {tuple(t.shape)}")
        if t.shape[2] == 0 or t.shape[3] == 0:
            raise InputError(f"FusedFPN: {what} has an empty spatial size {tuple(t.shape)}")
    batches = {name: t.shape[0] for name, t in x.items() if t.shape[0] != 1}
    if len(set(batches.values())) > 1:  # a batch of 1 broadcasts in the top-down adds, as in eager
        raise InputError(f"FusedFPN: the maps of x have batch sizes {batches} (besides 1); they "
                         f"must be equal")


def _conv_norm(in_channels, out_channels, kernel_size, norm_layer):
    """torchvision's Conv2dNormActivation(..., activation_layer=None) layout: [conv, norm]."""
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2,
                        bias=norm_layer is None)]
    if norm_layer is not None:
        layers.append(norm_layer(out_channels))
    return nn.Sequential(*layers)


def _plain_conv(block):
    """The conv of an FPN block that is one plain nn.Conv2d (torchvision's Conv2dNormActivation
    or a Sequential holding only it, or the conv itself), where FusedFPN may run it itself
    (_exact.inlinable, both); else None."""
    conv = block
    if type(block) is not nn.Conv2d:
        if len(block._modules) != 1 or not _exact.inlinable(block) or not (
                type(block) is nn.Sequential or type(block).__name__ == "Conv2dNormActivation"):
            return None
        (conv,) = block._modules.values()
    if type(conv) is not nn.Conv2d or not _exact.inlinable(conv) or _exact.why_not_conv(conv):
        return None
    return conv


def _packs(x, conv, backend):
    """Whether the conv runs on a weight oneDNN reordered once per input shape: CPU float32
    inference (no autograd, no autocast, not traced) on a channels_last x of the conv's channels
    (eager's output is channels_last then too, and the bits are the same: the same oneDNN
    convolution, without the reorder of the weight at every call)."""
    if torch.compiler.is_compiling():  # first: what follows would break a fullgraph compile
        return False
    return (_onednn_input(x, conv.weight, conv.bias, _conv_args(conv), backend)
            and not _records_grad(x, conv.weight, conv.bias))


def _records_grad(*tensors):
    """Whether autograd records a call on these tensors (None: absent)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _conv_args(conv):
    return (tuple(conv.stride), _exact.conv_padding(conv), tuple(conv.dilation), conv.groups)


def _onednn_input(x, w, bias, args, backend):
    """_packs but for autograd: CPU float32 (no autocast) on a channels_last x that eager's conv
    runs on oneDNN in channels_last. Where a fused FPN's 3x3 conv may run as Winograd, whether
    autograd records the call or not (the same bits either way)."""
    return (backend in ("auto", "native") and x.device.type == "cpu" and x.dtype == torch.float32
            and x.layout == torch.strided and x.dim() == 4 and x.numel() > 0
            and x.shape[1] == w.shape[1] * args[3]
            and x.is_contiguous(memory_format=torch.channels_last)
            and w.dtype == torch.float32 and w.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and _eager_runs_onednn(x, w, bias, args))


def _eager_runs_onednn(x, weight, bias, args):
    """Whether eager's conv2d runs this conv on oneDNN in channels_last, as ATen decides it (its
    own selectors): for small maps it may take another path (its slow 2-D conv for a 1x1 conv,
    say), and a 1x1 map, channels_last and contiguous at once, it runs in NCHW: either way its
    sums are ordered otherwise, and the bits would differ."""
    stride, padding, dilation, groups = args
    if padding is None:
        return False
    backend = torch._C._select_conv_backend(
        x, weight, bias, list(stride), list(padding), list(dilation), False, [0, 0], groups, None)
    return (backend == torch._C._ConvBackend.Mkldnn and torch._C._conv_determine_backend_memory_format(
        x, weight, backend) == torch.channels_last)


def _winograd_bound_holds(x, gain, offset):
    """The NaN test of a Winograd conv: max|x| * the weight's gain + max|bias| under SAFE_BOUND
    (an inf would make NaNs around it in the transforms, where eager's conv gives inf)."""
    return torch.ops.fpnops.max_abs(x.detach()) * gain + offset < SAFE_BOUND  # NaN: not below


_lib = torch.library.Library("fpnops", "FRAGMENT")
_lib.define("fpn_conv(Tensor x, Tensor weight, Tensor? bias, int[] geometry, str backend) "
            "-> Tensor")


@torch.library.impl(_lib, "fpn_conv", "CompositeImplicitAutograd")
def _fpn_conv(x, weight, bias, geometry, backend):
    """A FusedFPN's output conv (exact=False, winograd) where a graph records it (TorchScript,
    FX, jit.trace; fpnops/nn/_graph.py says why): what _run_block computes, Winograd where it
    takes it (the transformed weight kept by _graph.kept), else eager's conv; differentiable."""
    args = (tuple(geometry[0:2]), tuple(geometry[2:4]), tuple(geometry[4:6]), geometry[6])
    if not (_onednn_input(x, weight, bias, args, backend)
            and winograd.applies(x.shape, weight, args)):
        return F.conv2d(x, weight, bias, *args)
    sources = [weight] + ([] if bias is None else [bias])
    packed, gain, offset = _graph.kept(sources, "fpn_conv", lambda: (
        winograd.winograd_weight(weight), _l1(weight), 0.0 if bias is None else _amax(bias)))
    if not _winograd_bound_holds(x, gain, offset):
        return F.conv2d(x, weight, bias, *args)
    if _records_grad(x, weight, bias):
        return winograd.conv3x3_winograd_differentiable(x, weight, bias, None, False)
    return torch.ops.fpnops.conv3x3_winograd(x, packed, bias, None, False)


def _packed_conv(x, conv, weight, args):
    """conv(x) on its packed weight (FusedFPN._packed's conv, weight and args)."""
    padding, stride, dilation, groups = args
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, conv.bias, padding, stride, dilation, groups, "none", [], None)


class FusedFPN(CacheOwner, nn.Module):
    """Drop-in for torchvision.ops.FeaturePyramidNetwork.

    Args:
        in_channels_list: channels of each input level, finest first.
        out_channels: channels of every output level.
        extra_blocks: an ExtraFPNBlock (e.g. LastLevelMaxPool, LastLevelP6P7), called as
            extra_blocks(results, inputs, names) -> (results, names).
        norm_layer: optional norm after each conv (the convs then have no bias).
        backend: the upsample_add backend ("auto", "native", "triton", "torch").

    forward(OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]: the same keys, plus the extra
    blocks' names (e.g. "pool").

    `exact` (True unless from_module(..., exact=False) or fpnops.fuse with fold_bn=True set it):
    outputs bit-identical to torchvision's. False: CPU float32 inference runs the 3x3 output
    convs as Winograd F(4x4, 3x3) where fpnops/ops/winograd.py's rule picks it (the finest
    level's is the largest conv of a ResNet50-FPN), rounding as the fused ResNet blocks do
    (~1e-6 relative; the bound it keeps: see fpnops/ops/winograd.py), and only on maps proven
    finite (else the exact conv). `winograd` False (from_module(..., winograd=False) or
    fpnops.fuse(..., winograd=False)): no Winograd even where exact is False.
    """

    _version = 2
    __constants__ = ["backend"]
    exact = True

    def __init__(self, in_channels_list: List[int], out_channels: int,
                 extra_blocks: Optional[nn.Module] = None,
                 norm_layer: Optional[Callable[..., nn.Module]] = None, *, backend: str = "auto"):
        super().__init__()
        in_channels_list = _check_constructor(in_channels_list, out_channels, norm_layer)
        self.inner_blocks = nn.ModuleList()
        self.layer_blocks = nn.ModuleList()
        for in_channels in in_channels_list:
            self.inner_blocks.append(_conv_norm(in_channels, out_channels, 1, norm_layer))
            self.layer_blocks.append(_conv_norm(out_channels, out_channels, 3, norm_layer))
        for m in self.modules():  # torchvision's initialisation, before extra_blocks joins
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        if extra_blocks is not None and not isinstance(extra_blocks, nn.Module):
            raise TypeError(f"FusedFPN: extra_blocks should be an ExtraFPNBlock (nn.Module), got "
                            f"{type(extra_blocks).__name__}")
        self.extra_blocks = extra_blocks
        self.backend = _backend.check("FusedFPN", backend)
        self._fpnops_cache = _FoldedWeights()

    @classmethod
    def from_module(cls, m: nn.Module, *, backend: str = "auto", copy: bool = False,
                    exact: bool = True, winograd: bool = True) -> nn.Module:
        """A fused module computing what `m` computes, sharing its submodules (parameters,
        buffers, hooks) unless copy=True.

        m: a torchvision FeaturePyramidNetwork (-> FusedFPN) or an fpnops.reference.FPN
        (-> FusedReferenceFPN, which keeps its call convention: C2..C5 in, P2..P6 out, and is
        always exact).
        exact: bit-identical outputs (True), or Winograd 3x3 output convs where they apply
        (False; see the class docstring).
        winograd: False: no Winograd convs, whatever `exact` says.
        """
        for name, flag in (("exact", exact), ("winograd", winograd)):
            if not isinstance(flag, bool):
                raise TypeError(f"FusedFPN.from_module: {name} must be True or False, got {flag!r}")
        _exact.check_no_own_forward("FusedFPN.from_module", m)
        if copy:
            import copy as _copy
            m = _copy.deepcopy(m)
        if isinstance(m, ReferenceFPN):
            from fpnops.nn._exact import overrides
            if not isinstance(m, FusedReferenceFPN) and overrides(m, ReferenceFPN, ("forward", "_up", "_outputs")):
                raise TypeError(f"FusedFPN.from_module: {type(m).__name__} overrides the forward of "
                                f"fpnops.reference.FPN, which FusedReferenceFPN would not compute")
            return FusedReferenceFPN._from_reference(m, backend)
        if not (isinstance(m, cls) or _is_torchvision_fpn(m)):
            raise TypeError(f"FusedFPN.from_module: expected torchvision.ops.FeaturePyramidNetwork "
                            f"or fpnops.reference.FPN, got {type(m).__name__}")
        if _overrides_fpn(m):
            raise TypeError(f"FusedFPN.from_module: {type(m).__name__} overrides the forward of "
                            f"FeaturePyramidNetwork, which FusedFPN would not compute")
        kind = cls
        base = getattr(type(m), "_fpnops_base", type(m))
        if cls is FusedFPN and base is not FusedFPN and _is_torchvision_fpn(m):
            # an instance of torchvision's class too (fpnops/nn/_subclass.py): isinstance holds,
            # and torchvision's FX feature extraction keeps it a leaf, as it does the original
            kind = fused_class(base, cls)
        fused = kind._from_parts(m.inner_blocks, m.layer_blocks, m.extra_blocks, backend)
        if not exact:
            fused.exact = False
        if not winograd:
            fused.winograd = False
        fused.training = m.training  # its own flag only: the children keep theirs (as in eager)
        return fused

    @classmethod
    def _from_parts(cls, inner_blocks, layer_blocks, extra_blocks, backend):
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.inner_blocks, fused.layer_blocks = inner_blocks, layer_blocks
        fused.extra_blocks = extra_blocks
        fused.backend = _backend.check("FusedFPN", backend)
        fused._fpnops_cache = _FoldedWeights()
        return fused

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Version-1 checkpoints (torchvision < 0.13) name the convs `inner_blocks.{i}.weight`;
        # since version 2 they are `inner_blocks.{i}.0.weight`.
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            for block in ("inner_blocks", "layer_blocks"):
                for i in range(len(self.inner_blocks)):
                    for kind in ("weight", "bias"):
                        old, new = f"{prefix}{block}.{i}.{kind}", f"{prefix}{block}.{i}.0.{kind}"
                        if old in state_dict:
                            state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _inner(self, x: Tensor, idx: int, recorded: bool = False) -> Tensor:
        """inner_blocks[idx](x) (x itself for idx -1); a loop because TorchScript cannot index
        a ModuleList by a variable. recorded: the block's own call (see forward)."""
        out = x
        for i, block in enumerate(self.inner_blocks):
            if i == idx:
                if torch.jit.is_scripting() or recorded:
                    out = block(x)
                else:
                    out = self._run_block(block, f"inner_blocks.{i}", x)
        return out

    def _layer(self, x: Tensor, idx: int, recorded: bool = False) -> Tensor:
        """layer_blocks[idx](x), as _inner."""
        out = x
        for i, block in enumerate(self.layer_blocks):
            if i == idx:
                if torch.jit.is_scripting():  # fpnops::fpn_conv where __prepare_scriptable__
                    # found a plain conv that _run_block may run as Winograd; else the block
                    wino = False
                    if hasattr(self, "_fpnops_fpn_conv"):
                        wino = self._fpnops_fpn_conv[i] == 1
                    if not wino:
                        out = block(x)
                    elif hasattr(block, "weight"):  # the conv itself
                        out = torch.ops.fpnops.fpn_conv(x, block.weight, block.bias,
                                                        self._fpnops_geometry[i], self.backend)
                    else:  # Conv2dNormActivation or a Sequential holding only it
                        out = torch.ops.fpnops.fpn_conv(x, block[0].weight, block[0].bias,
                                                        self._fpnops_geometry[i], self.backend)
                elif recorded:
                    out = self._graph_layer(block, x)
                else:
                    out = self._run_block(block, f"layer_blocks.{i}", x)
        return out

    @torch.jit.unused
    def _packed(self, block: nn.Module, name: str, x: Tensor):
        """(conv, its weight oneDNN reordered for x's shape, (padding, stride, dilation, groups))
        where block is a plain conv whose input x runs on a packed weight (see _packs), kept in
        the module's cache (as the fused ResNet blocks do; Inductor's freezing does the same);
        else None."""
        conv = _plain_conv(block)
        if conv is None or not _packs(x, conv, self.backend):
            return None
        return self._packed_weight(conv, name, x)

    @torch.jit.unused
    def _packed_weight(self, conv: nn.Conv2d, name: str, x: Tensor):
        """_packed's result for a conv _packs has accepted."""
        cache = self._fpnops_cache
        p = cache.plain(name, conv)
        stride, padding, dilation, groups = p.args
        shape = tuple(x.shape)
        (packed,) = cache.packed(name, shape, (p,), lambda: (
            torch.ops.mkldnn._reorder_convolution_weight(conv.weight, list(padding), list(stride),
                                                         list(dilation), groups, list(shape)),))
        return conv, packed, (list(padding), list(stride), list(dilation), groups)

    @torch.jit.unused
    def _run_block(self, block: nn.Module, name: str, x: Tensor) -> Tensor:
        """block(x): on a packed weight where _packs says so, bit for bit the conv eager runs;
        with exact=False (and winograd), as Winograd where _winograd takes it (then no oneDNN
        weight is made)."""
        conv = _plain_conv(block)
        if conv is None or torch.compiler.is_compiling():
            return block(x)
        if not _onednn_input(x, conv.weight, conv.bias, _conv_args(conv), self.backend):
            return block(x)
        if not self.exact and self.winograd:
            y = self._winograd(conv, name, x)
            if y is not None:
                return y
        if _records_grad(x, conv.weight, conv.bias):  # _packs: not under autograd
            return block(x)
        return _packed_conv(x, *self._packed_weight(conv, name, x))

    @torch.jit.unused
    def _winograd(self, conv: nn.Conv2d, name: str, x: Tensor) -> Optional[Tensor]:
        """conv(x), for a conv _onednn_input has accepted, as Winograd F(4x4, 3x3)
        (fpnops/ops/winograd.py) where its rule applies and x is proven finite with no overflow
        possible (_winograd_bound_holds, as the fused blocks prove theirs); else None. Under
        autograd the same bits, differentiable (a fused model's numbers do not depend on grad
        mode)."""
        p = self._fpnops_cache.plain(name, conv)
        if not winograd.applies(x.shape, conv.weight, p.args):
            return None
        weight, gain, offset = self._fpnops_cache.packed(
            name + ":winograd", tuple(x.shape), (p,), lambda: (
                winograd.winograd_weight(conv.weight), _l1(conv.weight),
                0.0 if conv.bias is None else _amax(conv.bias)))
        if not _winograd_bound_holds(x, gain, offset):
            return None
        if _records_grad(x, conv.weight, conv.bias):
            return winograd.conv3x3_winograd_differentiable(x, conv.weight, conv.bias, None, False)
        return torch.ops.fpnops.conv3x3_winograd(x, weight, conv.bias, None, False)

    @torch.jit.unused
    def _graph_layer(self, block: nn.Module, x: Tensor) -> Tensor:
        """layer block(x) where a graph records the call (FX, jit.trace): fpnops::fpn_conv where
        _run_block may run it as Winograd, else the block called."""
        conv = _plain_conv(block)
        if conv is None or self.exact or not self.winograd or not _exact.in_graph():
            return block(x)  # (torch.func: the original math; vmap has no rules for the op)
        return torch.ops.fpnops.fpn_conv(x, conv.weight, conv.bias, _graph.conv_geometry(conv), self.backend)

    @torch.jit.unused
    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: which output convs the TorchScript forward runs
        as fpnops::fpn_conv (_run_block's Winograd choice, made at each call)."""
        plain = [_plain_conv(b) for b in self.layer_blocks]
        wino = not self.exact and self.winograd
        self._fpnops_fpn_conv = [int(wino and c is not None) for c in plain]
        self._fpnops_geometry = [_graph.conv_geometry(c) if c is not None else [0] * 7 for c in plain]
        return self

    @torch.jit.unused
    def _top_down_step(self, top: Tensor, x: Tensor, idx: int) -> Tensor:
        """The next finer level's merged map: inner_blocks[idx](x) (x itself for idx -1) plus
        the nearest-upsampled top, as _top_down computes it. Where the lateral is a packed 1x1
        conv and top a channels_last float32 map of the same batch and channels, computed the
        way Inductor's frozen graph does it: eager's own interpolate upsamples top into a new
        map and the lateral conv adds its output into that map (oneDNN's sum post-op), so the
        add needs no pass of its own over the finest map: no lateral written, read back and
        written again. Bit for bit eager's `lateral + interpolate(top)`: the same float32 add
        of the same two values."""
        if idx < 0:
            return _top_down(top, x, self.backend)
        block = self.inner_blocks[idx]
        packed = self._packed(block, f"inner_blocks.{idx}", x)
        if packed is None:
            return _top_down(top, block(x), self.backend)
        conv, weight, (padding, stride, dilation, groups) = packed
        if (conv.kernel_size == (1, 1) and stride == [1, 1] and padding == [0, 0]
                and conv.out_channels > 1 and x.shape[2] > 1 and x.shape[3] > 1  # _plain_layout
                and top.dtype == torch.float32 and top.device.type == "cpu" and top.dim() == 4
                and top.shape[:2] == (x.shape[0], conv.out_channels)
                and top.is_contiguous(memory_format=torch.channels_last)
                and not (top.requires_grad and torch.is_grad_enabled())):
            up = F.interpolate(top, size=x.shape[-2:], mode="nearest")
            # written into only where it is a fresh channels_last map of its own
            if (up.is_contiguous(memory_format=torch.channels_last)
                    and up.untyped_storage().data_ptr() != top.untyped_storage().data_ptr()):
                return torch.ops.mkldnn._convolution_pointwise_.binary(
                    up, x, weight, conv.bias, padding, stride, dilation, groups, "add", None,
                    None, [], None)
        return _top_down(top, _packed_conv(x, *packed), self.backend)

    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:
        # recorded (jit.trace, FX, torch.func: _exact.recorded): torchvision's own math, every
        # block called, nothing that looks at values; TorchScript compiles the blocks' calls and
        # the op (and types x itself)
        recorded = False
        if not torch.jit.is_scripting():
            recorded = _exact.recorded()
            if not recorded:
                _check_levels(x, self.inner_blocks)
        names = list(x.keys())
        feats = list(x.values())
        n, blocks = len(feats), len(self.inner_blocks)
        # Coarsest to finest, calling the blocks in torchvision's order (inner and layer of the
        # coarsest, then inner and layer of each finer level) and with its choice of block per
        # level, so hooks see the same sequence and any number of levels computes the same.
        last_inner = self._inner(feats[n - 1], _block_index(n - 1, n, blocks), recorded)
        results: List[Tensor] = [self._layer(last_inner, _block_index(n - 1, n, blocks), recorded)]
        for level in range(n - 2, -1, -1):
            idx = _block_index(level, n, blocks)
            if torch.jit.is_scripting() or recorded:
                last_inner = _top_down(last_inner, self._inner(feats[level], idx, recorded),
                                       self.backend, None, recorded)
            else:
                last_inner = self._top_down_step(last_inner, feats[level], idx)
            results.insert(0, self._layer(last_inner, idx, recorded))
        if self.extra_blocks is not None:
            results, names = self.extra_blocks(results, feats, names)
        out = OrderedDict([(k, v) for k, v in zip(names, results)])
        return out

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


def _overrides_fpn(m):
    """A FeaturePyramidNetwork subclass whose forward (or the block helpers it calls) is its own."""
    if isinstance(m, FusedFPN):
        return False
    from torchvision.ops import FeaturePyramidNetwork
    from fpnops.nn._exact import overrides
    return overrides(m, FeaturePyramidNetwork, ("forward", "get_result_from_inner_blocks",
                                                "get_result_from_layer_blocks"))


def _is_torchvision_fpn(m):
    try:
        from torchvision.ops import FeaturePyramidNetwork
    except ImportError:
        return False
    return isinstance(m, FeaturePyramidNetwork)


class FusedReferenceFPN(ReferenceFPN):
    """fpnops.reference.FPN (either variant) with a fused top-down step: same names, same call
    convention (C2..C5 in; P2..P6 for the notebook variant, P2..P5 for the paper one)."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = _backend.check("FusedFPN", backend)

    @classmethod
    def _from_reference(cls, m, backend):
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.variant = m.variant
        for name, child in m.named_children():
            setattr(fused, name, child)
        fused.backend = _backend.check("FusedFPN", backend)
        fused.training = m.training  # its own flag only: the children keep theirs (as in eager)
        return fused

    def _up_add(self, top, lateral):
        scale = 2.0 if self.variant == "paper" else None
        return _top_down(top, lateral, self.backend, scale, _exact.recorded())

    def forward(self, c2, c3, c4, c5):
        m5 = self.lat5(c5)
        m4 = self._up_add(m5, self.lat4(c4))
        m3 = self._up_add(m4, self.lat3(c3))
        m2 = self._up_add(m3, self.lat2(c2))
        return self._outputs(m2, m3, m4, m5)

    def extra_repr(self):
        return f"{super().extra_repr()}, backend={self.backend!r}"
