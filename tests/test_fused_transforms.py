"""What people do to fused models besides calling them: torch.jit.script, torch.jit.trace (with
its default check), FX (symbolic_trace, get_graph_node_names, create_feature_extractor),
torch.func (grad, vmap), torch.compile(fullgraph=True) with channels_last maps, and the
replaced modules' public attributes.

Under script, trace and FX every fused chain (a block, a stem's conv -> BN -> ReLU, a
Conv2dNormActivation) is one fpnops::fused_chain node on the modules' own tensors
(fpnops/nn/_graph.py; README "What a fused model supports"): the graph computes the fused
model's numbers bit for bit, as torchvision's own tests ask (they compare a scripted or FX-traced
model with the model itself); a FusedFPN's Winograd output convs are fpnops::fpn_conv nodes.
torch.func runs the original math (vmap has no rules for fpnops' ops).
The scripting cases run each in a fresh interpreter: TorchScript caches compiled classes per
process, and a class another test compiled first could hide a failure."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision
from fused_models import bottleneck, randomize_bn, rel_err
from helpers import run_fresh
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
    # v2: BatchNorm2d in the backbone, Conv2dNormActivation (conv + BN) FPN, RPN and box head
    "fasterrcnn_resnet50_fpn_v2": ("from torchvision.models import detection; torch.manual_seed(0); "
                                   "eager = randomize_bn(detection.fasterrcnn_resnet50_fpn_v2(weights=None, "
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
    ref = flat(fused(x))  # the fused model's own numbers, bit for bit (fpnops/nn/_graph.py)
    for m in (scripted, loaded):
        out = flat(m(x))
        assert len(out) == len(ref)
        for a, b in zip(out, ref):
            assert torch.equal(a, b), (a.shape, (a.double() - b.double()).abs().max())
print("fresh ok")
"""


@pytest.mark.parametrize("name", MODELS)
def test_jit_script_in_a_fresh_process(name, tmp_path):
    """Scripted (and saved, and loaded again): the fused model's bits (detectors: boxes, scores
    and labels), each fused chain one fpnops::fused_chain, a FusedFPN's Winograd output convs
    fpnops::fpn_conv."""
    run_fresh(_SCRIPT_CHILD.format(make=MODELS[name]), tmp_path)


def _make(name):
    env = {"torch": torch, "nn": nn, "torchvision": torchvision, "randomize_bn": randomize_bn}
    torch.manual_seed(0)
    exec(MODELS[name], env)
    return env["eager"], env["x"]


def _flat(y):
    return list(y.values()) if isinstance(y, dict) else [y]


_RESNETS = ["bottleneck", "basic block", "conv-bn-relu run", "resnet18", "resnet50 channels_last",
            "mobilenet_v3_small"]


def _fused_chains(graph_text):
    return graph_text.count("fpnops::fused_chain") + graph_text.count("fpnops.fused_chain")


@pytest.mark.parametrize("name", _RESNETS + ["resnet_fpn_backbone", "FusedFPN"])
def test_jit_trace_with_its_default_check(name, recwarn):
    """torch.jit.trace with check_trace on (the default) records one fpnops::fused_chain per fused
    chain (and a FusedFPN's Winograd output convs as fpnops::fpn_conv): the traced module gives
    the fused model's bits on the traced input and on another."""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    with torch.no_grad():
        traced = torch.jit.trace(fused, (x,), strict=False)
        assert not any("fpnops::max_abs" in str(w.message) for w in recwarn)
        for inp in (x, {k: v * 0.5 for k, v in x.items()} if isinstance(x, dict) else x * 0.5):
            for a, b in zip(_flat(traced(inp)), _flat(fused(inp))):
                assert torch.equal(a, b)
    graph = str(traced.inlined_graph)
    assert (_fused_chains(graph) > 0) == (name != "FusedFPN")
    assert ("fpnops::fpn_conv" in graph) == ("FPN" in name or "fpn" in name)


@pytest.mark.parametrize("name", _RESNETS + ["resnet_fpn_backbone"])
def test_fx_symbolic_trace_records_fused_chains(name):
    """FX traces into the fused modules, each fused chain one call_function node of
    fpnops.fused_chain whose inputs are the modules' parameters and buffers (get_attr): the
    GraphModule gives the fused model's bits, and follows a `.data` write made after tracing.
    (An FPN alone is not traceable, in eager either: its input is a dict.)"""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    gm = torch.fx.symbolic_trace(fused)
    op = torch.ops.fpnops.fused_chain
    chains = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (op, op.default)]
    assert chains and all(a.op == "get_attr" for a in chains[0].args[1])
    with torch.no_grad():
        for a, b in zip(_flat(gm(x)), _flat(fused(x))):
            assert torch.equal(a, b)
        conv = next(m for m in fused.modules() if isinstance(m, nn.Conv2d))
        conv.weight.data = conv.weight.data * 0.5
        for a, b in zip(_flat(gm(x)), _flat(fused(x))):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resnet50 channels_last", "mobilenet_v3_small", "resnet_fpn_backbone"])
def test_create_feature_extractor(name):
    """torchvision's feature extraction on a fused model: nodes named by the fused model's
    modules (a fused chain: one node), the features at module outputs those of the fused model,
    and within float32 rounding of eager's."""
    eager, x = _make(name)
    fused = fpnops.fuse(eager)
    train_nodes, eval_nodes = get_graph_node_names(fused)
    # torchvision keeps torchvision.ops' classes as leaves: a fused Conv2dNormActivation (an
    # instance of its class) is called as a module there and runs fused; blocks record chains
    assert any("fused_chain" in n for n in eval_nodes) == (name != "mobilenet_v3_small")
    picks = {"resnet50 channels_last": ["layer1", "layer3", "layer4"],
             "mobilenet_v3_small": ["features.2", "features.7", "features.12"],
             "resnet_fpn_backbone": ["body.layer2", "body.layer4", "fpn"]}[name]
    ext_fused = create_feature_extractor(fused, return_nodes=picks)
    with torch.no_grad():
        a = ext_fused(x)
        y = fused(x)
    assert list(a) == picks
    assert all(t.isfinite().all() for k in picks for t in _flat(a[k]))
    if name == "resnet50 channels_last":  # layer4 feeds the head: the model's own numbers
        with torch.no_grad():
            head = fused.fc(torch.flatten(fused.avgpool(a["layer4"]), 1))
        assert torch.equal(head, y)
    ext_eager = create_feature_extractor(eager, return_nodes=picks)
    with torch.no_grad():
        b = ext_eager(x)
    for k in picks:
        for u, v in zip(_flat(a[k]), _flat(b[k])):
            assert rel_err(u, v) < 1e-5, k


def test_intermediate_layer_getter_and_feature_extractor_agree_bit_for_bit():
    """torchvision's IntermediateLayerGetter (the fused blocks run eagerly) and
    create_feature_extractor (the FX graph) on a fused resnet18: the same parameters, the same
    features, bit for bit (torchvision's own test_feature_extraction_methods_equivalence)."""
    from torchvision.models._utils import IntermediateLayerGetter
    torch.manual_seed(0)
    fused = fpnops.fuse(randomize_bn(torchvision.models.resnet18())).eval()
    layers = {f"layer{i}": f"layer{i}" for i in range(1, 5)}
    ilg = IntermediateLayerGetter(fused, layers).eval()
    fx = create_feature_extractor(fused, layers)
    for (n1, p1), (n2, p2) in zip(ilg.named_parameters(), fx.named_parameters()):
        assert n1 == n2 and p1.equal(p2)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ilg(x), fx(x)
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fused_numbers_do_not_depend_on_grad_mode():
    """A fused model's output is the same bits with autograd on (parameters that require grad, an
    input that does) as under no_grad, as eager's is: torchvision's tests compare a model's
    output under grad with its FX graph's under no_grad. Gradients as eager's."""
    torch.manual_seed(0)
    eager = randomize_bn(torchvision.models.resnet50(num_classes=10)).eval()
    fused = fpnops.fuse(copy.deepcopy(eager))
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ref = fused(x)
    out = fused(x)
    xg = x.clone().requires_grad_()
    assert torch.equal(out.detach(), ref) and torch.equal(fused(xg).detach(), ref)
    out.square().sum().backward()
    eager(x).square().sum().backward()
    for (n, p), (_, q) in zip(eager.named_parameters(), fused.named_parameters()):
        assert rel_err(q.grad, p.grad) < 1e-3, n


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


def test_fx_quantization_of_a_fused_model_keeps_the_fused_chains_in_float():
    """prepare_fx / convert_fx see a fused chain as one fpnops.fused_chain node, which they do not
    quantize (README: quantize the unfused model): the converted graph keeps every chain in
    float, and its output is the float fused model's wherever nothing else was quantized."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    eager, _ = _make("bottleneck")
    fused = fpnops.fuse(eager)
    x = torch.randn(2, 16, 9, 11)
    prepared = prepare_fx(copy.deepcopy(fused), get_default_qconfig_mapping("x86"), (x,))
    with torch.no_grad():
        prepared(x)
        converted = convert_fx(prepared)
        assert _fused_chains(str(converted.graph)) == 1
        torch.testing.assert_close(converted(x), fused(x))


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
