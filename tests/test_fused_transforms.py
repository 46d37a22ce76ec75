"""What people do to fused models besides calling them: torch.jit.script, torch.jit.trace (with
its default check), FX (symbolic_trace, get_graph_node_names, create_feature_extractor),
torch.func (grad, vmap), torch.compile(fullgraph=True) with channels_last maps, and the
replaced modules' public attributes.

Under script, trace, FX and torch.func the fused modules run the original modules' own math
(fpnops/nn/_exact.py: recorded; README "What a fused model supports"): the graph holds the
model's own convs and BNs, so its numbers are eager's bit for bit and its nodes are eager's.
The scripting cases run each in a fresh interpreter: TorchScript caches compiled classes per
process, and a class another test compiled first could hide a failure."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import bottleneck, randomize_bn, rel_err
from helpers import run_fresh
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import fpnops

# name -> code that makes `eager` (a model in eval mode) and `x` (its input), in a child
MODELS = {
    "bottleneck": "from fused_models import bottleneck; eager = bottleneck(); x = torch.randn(2, 16, 9, 11)",
    "basic block": "from fused_models import basic_block; eager = basic_block(); x = torch.randn(2, 8, 9, 11)",
    "conv-bn-relu run": ("eager = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), "
                         "nn.ReLU(), nn.MaxPool2d(2))).eval(); x = torch.randn(2, 3, 12, 14)"),
    "resnet18": "eager = randomize_bn(torchvision.models.resnet18()).eval(); x = torch.randn(1, 3, 64, 72)",
    "resnet50 channels_last": ("eager = randomize_bn(torchvision.models.resnet50()).eval(); "
                               "x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)"),
    "mobilenet_v3_small": "eager = randomize_bn(torchvision.models.mobilenet_v3_small()).eval(); x = torch.randn(1, 3, 64, 64)",
    "resnet_fpn_backbone": ("from torchvision.models.detection.backbone_utils import resnet_fpn_backbone; "
                            "eager = randomize_bn(resnet_fpn_backbone(backbone_name='resnet18', weights=None, "
                            "trainable_layers=5)).eval(); x = torch.randn(1, 3, 96, 96)"),
    "FusedFPN": ("from torchvision.ops import FeaturePyramidNetwork; from collections import OrderedDict; "
                 "eager = FeaturePyramidNetwork([64, 128], 64).eval(); "
                 "x = OrderedDict(a=torch.randn(1, 64, 16, 16), b=torch.randn(1, 128, 8, 8))"),
    "fasterrcnn_resnet50_fpn": ("from torchvision.models import detection; torch.manual_seed(0); "
                                "eager = randomize_bn(detection.fasterrcnn_resnet50_fpn(weights=None, "
                                "weights_backbone=None, num_classes=5, box_score_thresh=0.0)).eval(); "
                                "x = [torch.rand(3, 160, 192)]"),
}

_SCRIPT_CHILD = """
import io, torch, torch.nn as nn, torchvision, fpnops
from fused_models import randomize_bn
torch.manual_seed(0)
{make}
fused = fpnops.fuse(eager)
assert any(type(m).__module__.startswith("fpnops") for m in fused.modules())
scripted = torch.jit.script(fused)
buf = io.BytesIO()
torch.jit.save(scripted, buf)
buf.seek(0)
loaded = torch.jit.load(buf)
def flat(y):
    if isinstance(y, dict):
        return list(y.values())
    if isinstance(y, tuple):  # a detector: (losses, detections)
        y = y[1]
    if isinstance(y, list):
        return [t for d in y for t in d.values()]
    return [y]
with torch.no_grad():
    ref = flat(eager(x))
    for m in (scripted, loaded):
        out = flat(m(x))
        assert len(out) == len(ref)
        for a, b in zip(out, ref):
            assert torch.equal(a, b), (a.shape, (a.double() - b.double()).abs().max())
print("fresh ok")
"""


@pytest.mark.parametrize("name", MODELS)
def test_jit_script_in_a_fresh_process(name, tmp_path):
    """Scripted (and saved, and loaded again): the original math, so eager's bits; detectors'
    boxes, scores and labels equal."""
    run_fresh(_SCRIPT_CHILD.format(make=MODELS[name]), tmp_path)


def _make(name):
    env = {"torch": torch, "nn": nn, "torchvision": torchvision, "randomize_bn": randomize_bn}
    torch.manual_seed(0)
    exec(MODELS[name], env)
    return env["eager"], env["x"]


def _flat(y):
    return list(y.values()) if isinstance(y, dict) else [y]


@pytest.mark.parametrize("name", ["bottleneck", "conv-bn-relu run", "resnet18", "resnet50 channels_last",
                                  "mobilenet_v3_small", "resnet_fpn_backbone", "FusedFPN"])
def test_jit_trace_with_its_default_check(name, recwarn):
    """torch.jit.trace with check_trace on (the default) records eager's math; the traced
    module gives eager's bits on the traced input and on another, and follows new weights."""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    with torch.no_grad():
        traced = torch.jit.trace(fused, (x,), strict=False)
        assert not any("fpnops::max_abs" in str(w.message) for w in recwarn)
        for inp in (x, {k: v * 0.5 for k, v in x.items()} if isinstance(x, dict) else x * 0.5):
            for a, b in zip(_flat(traced(inp)), _flat(eager(inp))):
                assert torch.equal(a, b)
    assert "fpnops::" not in str(traced.inlined_graph)


@pytest.mark.parametrize("name", ["bottleneck", "basic block", "resnet18", "mobilenet_v3_small",
                                  "resnet_fpn_backbone"])
def test_fx_symbolic_trace_gives_eager_graph(name):
    """FX traces into the original modules (a fused module is not a leaf): the same nodes as
    the eager model's graph, so feature extraction and FX quantization find what they look
    for, and eager's bits. (An FPN alone is not traceable, in eager either: its input is a
    dict; resnet_fpn_backbone traces it inside the model.)"""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    gm_fused, gm_eager = torch.fx.symbolic_trace(fused), torch.fx.symbolic_trace(eager)
    assert [n.name for n in gm_fused.graph.nodes] == [n.name for n in gm_eager.graph.nodes]
    with torch.no_grad():
        for a, b in zip(_flat(gm_fused(x)), _flat(eager(x))):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resnet50 channels_last", "mobilenet_v3_small", "resnet_fpn_backbone"])
def test_create_feature_extractor(name):
    """torchvision's feature extraction gives the fused model eager's node names: it keeps the
    classes of torchvision.ops as leaves, and a fused Conv2dNormActivation or FPN is an instance
    of its class (a leaf there, which runs fused); the rest it traces into (eager's math)."""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    assert get_graph_node_names(fused) == get_graph_node_names(eager)
    train_nodes, eval_nodes = get_graph_node_names(eager)
    nodes = eval_nodes[len(eval_nodes) // 3::max(1, len(eval_nodes) // 6)]
    ext_fused = create_feature_extractor(fused, return_nodes=nodes)
    ext_eager = create_feature_extractor(eager, return_nodes=nodes)
    with torch.no_grad():
        a, b = ext_fused(x), ext_eager(x)
    assert list(a) == list(b) == nodes
    for k in nodes:
        assert rel_err(a[k], b[k]) < 1e-5, k


def test_torch_func_grad_and_vmap():
    """torch.func transforms see the original math (functorch has rules for it): gradients and
    batched results as eager's."""
    eager = bottleneck()
    fused = fpnops.fuse(eager)
    x = torch.randn(2, 16, 9, 11)
    g_fused = torch.func.grad(lambda t: fused(t).square().sum())(x)
    g_eager = torch.func.grad(lambda t: eager(t).square().sum())(x)
    assert torch.equal(g_fused, g_eager)
    with torch.no_grad():
        v_fused = torch.func.vmap(fused)(x[:, None])
        assert torch.equal(v_fused, torch.func.vmap(eager)(x[:, None]))
    params = dict(fused.named_parameters())
    jac = torch.func.jacrev(lambda p: torch.func.functional_call(fused, p, (x,)).sum())(params)
    jac_eager = torch.func.jacrev(lambda p: torch.func.functional_call(eager, p, (x,)).sum())(
        dict(eager.named_parameters()))
    for k in params:
        torch.testing.assert_close(jac[k], jac_eager[k])


def test_compile_fullgraph_fused_fpn_channels_last():
    from torchvision.ops import FeaturePyramidNetwork
    torch.manual_seed(0)
    tv = FeaturePyramidNetwork([32, 64, 96], 32).eval()
    fused = fpnops.FusedFPN.from_module(tv)
    x = {f"c{i}": torch.randn(1, c, 24 >> i, 24 >> i).contiguous(memory_format=torch.channels_last)
         for i, c in enumerate([32, 64, 96])}
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True)
    with torch.no_grad():
        out, ref = compiled(x), tv(x)
    for k in ref:
        assert rel_err(out[k], ref[k]) < 1e-5


# --- the replaced modules' public attributes ---------------------------------------------------

@pytest.mark.parametrize("ctor", [torchvision.models.mobilenet_v3_large, torchvision.models.efficientnet_b0,
                                  torchvision.models.resnet18, torchvision.models.regnet_y_400mf],
                         ids=lambda c: c.__name__)
def test_replacements_keep_the_public_attributes_of_what_they_replace(ctor):
    """Every module fuse() replaces keeps the plain public attributes of the original
    (Conv2dNormActivation's out_channels, which torchvision's own _mobilenet_extractor reads;
    a block's stride), with the same values."""
    eager = ctor().eval()
    fused = fpnops.fuse(eager)
    replaced = 0
    for name, m in eager.named_modules():
        new = fused.get_submodule(name)
        if type(new) is not type(m):
            replaced += 1
            for k, v in vars(m).items():
                if not k.startswith("_") and k != "training":
                    assert getattr(new, k) == v, (name, k)
    assert replaced > 0
    if ctor is torchvision.models.mobilenet_v3_large:
        assert fused.features[0].out_channels == eager.features[0].out_channels == 16
        assert fused.features[-1].out_channels == 960


# --- quantization and export (held up before; kept so) ----------------------------------------

def _calibrated_outputs(model, x, quantize):
    torch.manual_seed(0)
    model = quantize(model)
    with torch.no_grad():
        return model(x)


def test_fx_quantization_of_a_fused_model_is_the_unfused_models():
    """prepare_fx / convert_fx trace a fused model into its original modules: the quantized
    model, and its output, are those of the unfused model."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    eager, _ = _make("resnet18")
    x = torch.randn(2, 3, 64, 64)

    def quantize(m):
        prepared = prepare_fx(copy.deepcopy(m), get_default_qconfig_mapping("x86"), (x,))
        with torch.no_grad():
            prepared(x), prepared(x * 0.5)
        return convert_fx(prepared)
    assert torch.equal(_calibrated_outputs(fpnops.fuse(eager), x, quantize),
                       _calibrated_outputs(eager, x, quantize))


def test_eager_mode_quantization_of_a_fused_quantizable_resnet():
    """torchvision's quantizable ResNet (subclasses of the blocks, with their own forward: fuse
    leaves them alone) goes through fuse_model, prepare, calibrate and convert as unfused."""
    from torchvision.models.quantization import resnet18 as quantizable_resnet18
    x = torch.randn(2, 3, 64, 64)

    def quantize(m):
        m.fuse_model()
        m.qconfig = torch.ao.quantization.get_default_qconfig("x86")
        torch.ao.quantization.prepare(m, inplace=True)
        with torch.no_grad():
            m(x)
        return torch.ao.quantization.convert(m, inplace=True)
    torch.manual_seed(0)
    eager = quantizable_resnet18(weights=None, quantize=False).eval()
    fused = fpnops.fuse(eager)
    assert torch.equal(_calibrated_outputs(fused, x, quantize), _calibrated_outputs(eager, x, quantize))


@pytest.mark.parametrize("name", ["resnet18", "resnet_fpn_backbone"])
def test_torch_export(name):
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    exported = torch.export.export(fused, (x,))
    with torch.no_grad():
        for a, b in zip(_flat(exported.module()(x)), _flat(eager(x))):
            assert rel_err(a, b) < 1e-5
