"""Every Triton kernel variant the compile check compiles (fpnops/bench/triton_targets.py:
variants()), run on a GPU on random inputs through the same launchers and checked against
eager: upsample_add and its backward bit for bit, the 1x1 conv against float64. The conv runs
with the sm_90 and the sm_80 tile configs on whatever GPU there is (one compile target, both
tile tables). Without a GPU these skip: tests/test_triton_codegen.py compiles the same list."""
import pytest
import torch
from test_conv_bn_act import TOL, rel_err

from fpnops import _backend
from fpnops.bench import triton_targets
from fpnops.ops.conv_bn_act import conv_bn_act_reference
from fpnops.ops.upsample_add import upsample_add_reference
from fpnops.triton._launch import launch

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)"),
    pytest.mark.skipif(not _backend.TRITON_IMPORTABLE, reason="needs triton"),
]

VARIANTS = {v.name: v for v in triton_targets.variants()}


def expected(variant, i):
    if variant.op == "upsample_add":
        return upsample_add_reference(i["top"], i["lateral"])
    if variant.op == "upsample_add_backward_top":
        grad = i["grad"]
        fmt = torch.channels_last if i["layout"] == "nhwc" else torch.contiguous_format
        top = torch.zeros((*grad.shape[:2], *i["top_hw"]), dtype=grad.dtype, device=grad.device)
        top = top.contiguous(memory_format=fmt).requires_grad_()
        lat = torch.zeros_like(grad)
        (g,) = torch.autograd.grad(upsample_add_reference(top, lat), top, grad)
        return g
    args = [t.double() if t is not None else None for t in (i["x"], i["weight"], i["bias"])]
    res = i["residual"].double() if i["residual"] is not None else None
    return conv_bn_act_reference(*args, i["stride"], 0, 1, 1, res, i["relu"])


def check(variant, out, want):
    assert out.shape == want.shape and out.dtype == getattr(torch, variant.dtype)
    if variant.op == "conv1x1":
        err = rel_err(out, want)
        assert err < TOL[out.dtype], (variant.name, err)
    else:  # bit for bit, as eager
        assert torch.equal(out, want), (variant.name, (out.double() - want.double()).abs().max())


@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.op != "conv1x1"])
def test_upsample_add_variant_matches_eager(name):
    v = VARIANTS[name]
    i = v.inputs("cuda", True)
    check(v, v.launch(i, launch), expected(v, i))


@pytest.mark.parametrize("tile_arch", [90, 80])
@pytest.mark.parametrize("name", [n for n, v in VARIANTS.items() if v.op == "conv1x1"])
def test_conv1x1_variant_matches_float64(name, tile_arch, monkeypatch):
    from fpnops.triton import conv_bn_act
    monkeypatch.setattr(conv_bn_act, "_target_arch", lambda x: tile_arch)
    v = VARIANTS[name]
    i = v.inputs("cuda", True)
    check(v, v.launch(i, launch), expected(v, i))


def test_torch_compile_with_autograd_through_the_triton_ops():
    """torch.compile traces the triton ops (their launchers run on fake tensors) and Inductor
    runs their kernels: forward and grad of top bit for bit as eager. Before: the backward's
    launcher read its window tables under fake tensors and tracing failed."""
    import fpnops

    def step(top, lat):
        return fpnops.upsample_add(top, lat, backend="triton") * 2

    for fmt in (torch.contiguous_format, torch.channels_last):
        top = torch.randn(2, 16, 25, 38, device="cuda").contiguous(memory_format=fmt)
        lat = torch.randn(2, 16, 50, 75, device="cuda").contiguous(memory_format=fmt)
        grad = torch.randn_like(lat)
        want = upsample_add_reference(top.requires_grad_(), lat) * 2
        (want_g,) = torch.autograd.grad(want, top, grad)
        torch._dynamo.reset()
        out = torch.compile(step, fullgraph=True)(top, lat)
        (g,) = torch.autograd.grad(out, top, grad)
        assert torch.equal(out, want) and torch.equal(g, want_g)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (tensors on cuda:1 "
                    "while cuda:0 is current)")
def test_kernels_run_on_their_tensors_device():
    """Tensors on cuda:1 while cuda:0 is current: each Triton op launches on cuda:1 (before: on
    the current device) and leaves cuda:0 current."""
    import fpnops

    torch.cuda.set_device(0)
    top = torch.randn(2, 16, 25, 38, device="cuda:1", requires_grad=True)
    lat = torch.randn(2, 16, 50, 75, device="cuda:1")
    out = fpnops.upsample_add(top, lat, backend="triton")
    grad = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, top, grad)
    want = upsample_add_reference(top, lat)
    assert torch.equal(out, want) and torch.equal(g, torch.autograd.grad(want, top, grad)[0])
    x = torch.randn(2, 64, 20, 24, device="cuda:1").contiguous(memory_format=torch.channels_last)
    w = torch.randn(32, 64, 1, 1, device="cuda:1") / 8
    y = fpnops.conv_bn_act(x, w, backend="triton")
    assert rel_err(y, conv_bn_act_reference(x.double(), w.double())) < TOL[torch.float32]
    assert torch.cuda.current_device() == 0
