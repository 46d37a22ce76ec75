"""The ops a fused model's recorded graphs call (fpnops/nn/_graph.py: fpnops::fused_chain;
fpnops/nn/fpn.py: fpnops::fpn_conv) and the differentiable Winograd conv under them.

fused_chain must compute what the fused module's eager forward computes, bit for bit, on every
path it takes (packed CPU float32 arithmetic, conv_bn_act elsewhere, the original math where a
fold does not fit or no NaN proof holds), stay within float32 rounding of the original modules,
and be differentiable; fpn_conv must be FusedFPN's own output conv."""
import copy

import pytest
import torch
import torch.nn as nn
from fused_models import bottleneck, randomize_bn, rel_err
from torchvision.ops.misc import FrozenBatchNorm2d

import fpnops
from fpnops.nn import _graph
from fpnops.ops import winograd


def _pair(cin, cout, k, stride=1, bias=False, frozen=False, affine=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias).to(dtype)
    bn = FrozenBatchNorm2d(cout) if frozen else nn.BatchNorm2d(cout, affine=affine)
    bn = randomize_bn(nn.Sequential(bn))[0].to(dtype).eval()
    return conv, bn


def _eager(x, pairs, relus, residual):
    """The original modules' math."""
    res = x if residual == _graph.IDENTITY else None
    if residual == _graph.DOWNSAMPLE:
        c, b = pairs[-1]
        res = b(c(x))
    y = x
    n = len(relus)
    for i in range(n):
        c, b = pairs[i]
        y = b(c(y))
        if i == n - 1 and res is not None:
            y = y + res
        if relus[i]:
            y = torch.relu(y)
    return y


CASES = [  # (name, pairs spec, relus, residual, input shape)
    ("one 3x3", [(5, 7, 3, 1)], [True], _graph.NONE, (2, 5, 9, 11)),
    ("1x1 stride 2, no relu", [(6, 4, 1, 2)], [False], _graph.NONE, (1, 6, 7, 13)),
    ("bottleneck + identity", [(16, 8, 1, 1), (8, 8, 3, 1), (8, 16, 1, 1)], [True] * 3,
     _graph.IDENTITY, (2, 16, 10, 9)),
    ("bottleneck + downsample", [(12, 8, 1, 1), (8, 8, 3, 2), (8, 20, 1, 1), (12, 20, 1, 2)],
     [True] * 3, _graph.DOWNSAMPLE, (1, 12, 11, 12)),
    ("winograd-wide 3x3 + identity", [(64, 64, 3, 1), (64, 64, 3, 1)], [True, True],
     _graph.IDENTITY, (1, 64, 12, 10)),
]


@pytest.mark.parametrize("frozen", [False, True], ids=["BatchNorm2d", "FrozenBatchNorm2d"])
@pytest.mark.parametrize("bias", [False, True], ids=["no bias", "bias"])
@pytest.mark.parametrize("name,spec,relus,residual,shape", CASES, ids=[c[0] for c in CASES])
def test_fused_chain_against_the_original_modules(name, spec, relus, residual, shape, bias, frozen):
    pairs = [_pair(ci, co, k, s, bias=bias, frozen=frozen, seed=i) for i, (ci, co, k, s) in enumerate(spec)]
    x = torch.randn(shape)
    for layout in (torch.contiguous_format, torch.channels_last):
        xi = x.contiguous(memory_format=layout)
        y = _graph.call(xi, [c for c, _ in pairs], [b for _, b in pairs], relus, residual, True,
                        "auto", "t")
        with torch.no_grad():
            ref = _eager(xi, pairs, relus, residual)
        assert y.shape == ref.shape
        assert rel_err(y, ref) < 1e-5, (layout, rel_err(y, ref))


def test_fused_chain_is_the_fused_blocks_bits_and_differentiable():
    """fused_chain on a Bottleneck's modules: the fused block's output bit for bit (no_grad and
    autograd alike), gradients within float32 rounding of eager's."""
    eager = bottleneck(16, 8, stride=2)
    fused = fpnops.fuse(copy.deepcopy(eager))
    x = torch.randn(2, 16, 13, 11)
    pairs = [(fused.conv1, fused.bn1), (fused.conv2, fused.bn2), (fused.conv3, fused.bn3),
             (fused.downsample[0], fused.downsample[1])]
    args = ([c for c, _ in pairs], [b for _, b in pairs], [True] * 3, _graph.DOWNSAMPLE, True,
            "auto", "FusedBottleneck")
    with torch.no_grad():
        assert torch.equal(_graph.call(x, *args), fused(x))
    xg = x.clone().requires_grad_()
    y = _graph.call(xg, *args)
    assert torch.equal(y.detach(), fused(x).detach())
    y.square().sum().backward()
    xe = x.clone().requires_grad_()
    eager(xe).square().sum().backward()
    assert rel_err(xg.grad, xe.grad) < 1e-4
    for (n, p), (_, q) in zip(eager.named_parameters(), fused.named_parameters()):
        assert rel_err(q.grad, p.grad) < 1e-4, n


def test_fused_chain_runs_the_original_math_where_the_fused_path_cannot():
    """A NaN or inf in x (no proof that none reaches oneDNN's ReLU): eager's own NaN and inf
    pattern; a float16 fold that overflows: eager's finite result."""
    conv, bn = _pair(8, 8, 3)
    x = torch.randn(1, 8, 9, 9)
    x[0, 3, 4, 4] = float("nan")
    x[0, 1, 0, 7] = float("inf")
    y = _graph.call(x, [conv], [bn], [True], _graph.NONE, True, "auto", "t")
    with torch.no_grad():
        ref = torch.relu(bn(conv(x)))
    assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
    assert torch.equal(y[ref.isfinite()], ref[ref.isfinite()])
    from test_fold_range import _conv_bn, _input  # a float16 fold that overflows
    conv16, bn16 = _conv_bn(torch.float16)
    x16 = _input(torch.float16)
    y16 = _graph.call(x16, [conv16], [bn16], [False], _graph.NONE, True, "auto", "t")
    with torch.no_grad():
        ref16 = bn16(conv16(x16))
    assert ref16.isfinite().all() and torch.equal(y16, ref16)


def test_fused_chain_without_affine_bn_and_in_float64():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 6, 3, padding=1).double()
    bn = nn.BatchNorm2d(6, affine=False).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64)
    y = _graph.call(x, [conv], [bn], [True], _graph.NONE, True, "auto", "t")
    with torch.no_grad():
        ref = torch.relu(bn(conv(x)))
    assert y.dtype == torch.float64 and rel_err(y, ref) < 1e-12


def test_fused_chain_errors_name_the_module():
    conv, bn = _pair(8, 8, 3)
    with pytest.raises(fpnops.InputError, match=r"FusedBottleneck\.conv0: .*channels"):
        _graph.call(torch.randn(1, 5, 9, 9), [conv], [bn], [True], _graph.NONE, True, "auto",
                    "FusedBottleneck")


@pytest.mark.parametrize("seed", range(3))
def test_differentiable_winograd_matches_the_inference_op_and_conv_gradients(seed):
    torch.manual_seed(seed)
    x = torch.randn(1, 64, 10, 12).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3) * 0.05
    b, r = torch.randn(64), torch.randn(1, 64, 10, 12)
    ref = torch.ops.fpnops.conv3x3_winograd(x, winograd.winograd_weight(w), b, r, True)
    xs, ws, bs, rs = (t.clone().requires_grad_() for t in (x, w, b, r))
    y = winograd.conv3x3_winograd_differentiable(xs, ws, bs, rs, True)
    assert torch.equal(y.detach(), ref)
    g = torch.randn_like(y)
    y.backward(g)
    xe, we, be, re = (t.clone().requires_grad_() for t in (x, w, b, r))
    torch.relu(nn.functional.conv2d(xe, we, be, padding=1) + re).backward(g)
    for got, want in ((xs, xe), (ws, we), (bs, be), (rs, re)):
        assert rel_err(got.grad, want.grad) < 1e-4


def test_fpn_conv_is_fused_fpns_output_conv():
    """fpnops::fpn_conv: FusedFPN's (exact=False) output conv, Winograd on a channels_last map
    that is proven finite, bit for bit; eager's conv otherwise (NCHW, or an inf in the map)."""
    from torchvision.ops import FeaturePyramidNetwork
    torch.manual_seed(0)
    fpn = fpnops.FusedFPN.from_module(FeaturePyramidNetwork([64, 64], 64).eval(), exact=False)
    conv = fpn.layer_blocks[0][0]
    geometry = [1, 1, 1, 1, 1, 1, 1]
    x = torch.randn(1, 64, 32, 24).contiguous(memory_format=torch.channels_last)  # oneDNN's size
    with torch.no_grad():
        y = torch.ops.fpnops.fpn_conv(x, conv.weight, conv.bias, geometry, "auto")
        assert torch.equal(y, fpn._run_block(fpn.layer_blocks[0], "layer_blocks.0", x))
        assert not torch.equal(y, conv(x))  # Winograd rounds otherwise than the direct conv
        assert rel_err(y, conv(x)) < 1e-5
        for inp in (x.contiguous(), x.clone().index_fill_(2, torch.tensor([3]), float("inf"))):
            out = torch.ops.fpnops.fpn_conv(inp, conv.weight, conv.bias, geometry, "auto")
            ref = conv(inp)
            assert torch.equal(out.isnan(), ref.isnan())
            assert torch.equal(out[ref.isfinite()], ref[ref.isfinite()])


def test_scripted_fused_block_follows_train_and_eval():
    """A scripted fused block reads its BNs' modes at each call: in training mode the original
    math (batch statistics, running statistics updated as eager's), back in eval the fused bits."""
    eager = bottleneck(16, 8)
    fused = fpnops.fuse(copy.deepcopy(eager))
    scripted = torch.jit.script(fused)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        assert torch.equal(scripted(x), fused(x))
    scripted.train()
    eager.train()
    assert torch.equal(scripted(x), eager(x))
    assert torch.equal(scripted.bn1.running_mean, eager.bn1.running_mean)
    scripted.eval()
    eager.eval()
    fused.load_state_dict(scripted.state_dict())
    with torch.no_grad():
        assert torch.equal(scripted(x), fused(x))
        assert rel_err(scripted(x), eager(x)) < 1e-5


def test_fuzz_fused_chain_is_the_fused_runs_bits():
    """Seeded: 300 random conv -> BN (-> ReLU) runs (channels 1..80, so Winograd's 64 is met,
    1x1 and 3x3, strides 1 and 2, maps from 1x1, bias or none, BatchNorm2d or frozen, NCHW or
    channels_last, float32 mostly, float64 and bfloat16 too): fpnops::fused_chain gives the
    fused Sequential's own output bit for bit, and both stay within rounding of eager."""
    g = torch.Generator().manual_seed(19)

    def pick(*options):
        return options[int(torch.randint(len(options), (1,), generator=g))]

    compared = 0
    for case in range(300):
        cin, cout = (int(torch.randint(1, 81, (1,), generator=g)) for _ in range(2))
        if case % 4 == 0:
            cin, cout = pick(64, 72), pick(64, 80)
        k, stride, relu = pick(1, 3), pick(1, 2), pick(True, False)
        dtype = pick(*[torch.float32] * 6, torch.float64, torch.bfloat16)
        h, w = (int(torch.randint(1, 21, (1,), generator=g)) for _ in range(2))
        conv, bn = _pair(cin, cout, k, stride, bias=pick(True, False), frozen=pick(True, False),
                         dtype=dtype, seed=case)
        mods = [conv, bn] + ([nn.ReLU()] if relu else [])
        eager = nn.Sequential(*mods).eval()
        fused = fpnops.FusedConvBNAct.from_module(eager)
        x = torch.randn(int(torch.randint(1, 3, (1,), generator=g)), cin, h, w, generator=g).to(dtype)
        x = x.contiguous(memory_format=pick(torch.contiguous_format, torch.channels_last))
        with torch.no_grad():
            y = _graph.call(x, [conv], [bn], [relu], _graph.NONE, True, "auto", "t")
            ref = fused(x)
            assert torch.equal(y, ref), (case, cin, cout, k, stride, h, w, dtype)
            tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
            e = eager(x)
            if e.abs().max() > 0:
                assert rel_err(y, e) < tol, case
        compared += 1
    assert compared == 300


def test_graph_keeps_its_folds_while_the_model_lives_and_no_longer(monkeypatch, tmp_path):
    """fused_chain folds once per chain and state of its tensors (not at every call), also in a
    saved and loaded TorchScript model; folds again after a `.data` write; and what it kept goes
    when the model goes (weak references: no model's weights held after it is deleted)."""
    import gc
    builds = []
    real = _graph._Plan
    monkeypatch.setattr(_graph, "_Plan", lambda *a: builds.append(1) or real(*a))
    _graph.clear()
    fused = fpnops.fuse(bottleneck(16, 8))
    x = torch.randn(1, 16, 9, 9)
    scripted = torch.jit.script(fused)
    with torch.no_grad():
        first = scripted(x)
        assert torch.equal(scripted(x), first) and len(builds) == 1
        fused.conv1.weight.data = fused.conv1.weight.data * 0.5
        assert torch.equal(scripted(x), fused(x)) and len(builds) == 2
    scripted.save(str(tmp_path / "m.pt"))
    del fused, scripted
    gc.collect()
    assert not _graph._entries
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    builds.clear()
    with torch.no_grad():
        loaded(x), loaded(x), loaded(x)
    assert len(builds) == 1
    del loaded
    gc.collect()
    assert not _graph._entries
