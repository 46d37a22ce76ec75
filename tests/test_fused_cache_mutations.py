"""The folded-weight cache against every way a parameter or buffer can change under it, in a
seeded run of 1,000+ trials: `.data = t` (once, or twice between calls: the second tensor may
get the address of the first one's freed memory), torch.nn.utils.vector_to_parameters, set_(),
copy_(), swap_tensors, in-place ops, a replaced Parameter or buffer, and a `.data` view with
other strides over the same memory. After each step the fused block must give the bits of a
freshly fused block over the same modules (an empty cache): a stale entry gives other bits.

What PyTorch itself cannot see is not here: writes through another tensor object that shares
the memory but not the version counter (`w.data.mul_(2)`); fpnops.refresh covers those."""
import random

import pytest
import torch
import torch.nn as nn
from fused_models import bottleneck

from fpnops.nn import FusedBottleneck

PARAMS = ["conv1.weight", "conv2.weight", "conv3.weight", "downsample.0.weight"] + [
    f"{bn}.{t}" for bn in ("bn1", "bn2", "bn3", "downsample.1") for t in ("weight", "bias")]
BUFFERS = [f"{bn}.{t}" for bn in ("bn1", "bn2", "bn3", "downsample.1")
           for t in ("running_mean", "running_var")]


def _fresh_values(t, rng):
    g = torch.Generator().manual_seed(rng.randrange(2 ** 31))
    if t.dim() == 1 and t.name_hint == "running_var":
        return torch.rand(t.shape, generator=g) * 1.5 + 0.5
    return torch.randn(t.shape, generator=g) * (0.2 if t.dim() == 4 else 0.5) + (
        1.0 if t.name_hint == "weight" and t.dim() == 1 else 0.0)


def _get(block, name):
    mod, _, attr = name.rpartition(".")
    return block.get_submodule(mod), attr


def _mutate(block, rng):
    """One random change to one random tensor of the block; returns what it did."""
    name = rng.choice(PARAMS + BUFFERS)
    mod, attr = _get(block, name)
    t = getattr(mod, attr)
    t.name_hint = attr  # for _fresh_values
    kind = rng.choice(["data=", "data= twice", "vector_to_parameters", "set_", "copy_", "swap",
                       "in place", "replace", "transposed view"])
    new = lambda: _fresh_values(t, rng)  # noqa: E731
    with torch.no_grad():
        if kind == "data=":
            t.data = new()
        elif kind == "data= twice":
            t.data = new()
            t.data = new()
        elif kind == "vector_to_parameters":
            params = list(block.parameters())
            vec = torch.cat([_fresh_values_like(p, rng) for p in params])
            nn.utils.vector_to_parameters(vec, params)
        elif kind == "set_":
            t.set_(new())
        elif kind == "copy_":
            t.copy_(new())
        elif kind == "swap":
            other = nn.Parameter(new(), requires_grad=t.requires_grad) if isinstance(
                t, nn.Parameter) else new()
            torch.utils.swap_tensors(t, other)
        elif kind == "in place":
            if attr == "running_var":  # stays positive
                t.mul_(rng.choice([0.5, 1.5]))
            else:
                t.mul_(rng.choice([-1.0, 0.5, 1.5])).add_(0.125)
        elif kind == "replace":
            if isinstance(t, nn.Parameter):
                setattr(mod, attr, nn.Parameter(new(), requires_grad=t.requires_grad))
            else:
                setattr(mod, attr, new())
        elif kind == "transposed view" and t.dim() == 4 and t.shape[2] == t.shape[3] > 1:
            t.data = t.data.transpose(2, 3)  # same memory, other strides: other values per index
        else:  # a transposed view of a tensor where it is not one: a plain .data swap
            t.data = new()
    return f"{kind} {name}"


def _fresh_values_like(p, rng):
    p.name_hint = "weight" if p.dim() == 1 and float(p.detach().mean()) > 0.5 else "x"
    return _fresh_values(p, rng).flatten()


def _fused_block():
    torch.manual_seed(0)
    block = bottleneck(inplanes=16, planes=4, stride=2)  # a downsample (conv 1x1 + BN) too
    with torch.no_grad():
        block.conv2.weight.copy_(torch.randn(block.conv2.weight.shape))  # 3x3: transposes differ
    return FusedBottleneck.from_module(block)


@pytest.mark.parametrize("seed", range(4))
def test_random_mutations_never_leave_a_stale_fold(seed):
    rng = random.Random(seed)
    fused = _fused_block()
    xs = [torch.randn(1, 16, 6, 7), torch.randn(1, 16, 6, 7).contiguous(memory_format=torch.channels_last)]
    with torch.no_grad():
        for x in xs:
            fused(x)  # filled caches for both paths (conv_bn_act, and the packed CPU path)
    for trial in range(260):
        steps = [_mutate(fused, rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        x = xs[trial % 2]
        with torch.no_grad():
            out = fused(x)
            ref = FusedBottleneck.from_module(fused)(x)  # the same modules, an empty cache
        assert out.isfinite().all(), (trial, steps)  # else NaN != NaN would hide the check
        assert torch.equal(out, ref), (trial, steps)
