"""The seeds' models: the shapes and parameter counts the seeds state, and agreement with
torchvision's ResNets (the v1.5 stride placement, the same names)."""
import pytest
import torch
import torchvision

from fpnops.reference import FPN, DetectionModel, ResNet34, ResNet50, RPNHead

RESNET50_BACKBONE = 23_508_032      # torchvision resnet50 (25,557,032) without fc (2,049,000)
FPN_NOTEBOOK = 3_344_384            # 4 laterals (984,064) + 4 output 3x3 convs (2,360,320)
FPN_PAPER = FPN_NOTEBOOK - 590_080  # no smoothing conv on P5
RPN = 594_706                       # 3x3 256->256 + 1x1 256->6 + 1x1 256->12


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts():
    assert nparams(ResNet50()) == RESNET50_BACKBONE
    assert nparams(FPN()) == FPN_NOTEBOOK
    # The notebook prints "~25M backbone + ~1.5M FPN ~= 26.5M"; the exact total is 26,852,416.
    assert nparams(ResNet50()) + nparams(FPN()) == 26_852_416
    assert nparams(FPN(variant="paper")) == FPN_PAPER
    assert nparams(RPNHead()) == RPN
    assert nparams(ResNet34()) == nparams(torchvision.models.resnet34()) == 21_797_672
    assert nparams(DetectionModel()) == RESNET50_BACKBONE + FPN_NOTEBOOK + RPN


@pytest.fixture(scope="module")
def c_800():
    with torch.no_grad():
        return ResNet50().eval()(torch.randn(1, 3, 800, 800))


def test_resnet50_fpn_shapes_800(c_800):
    assert [tuple(c.shape) for c in c_800] == [(1, 256, 200, 200), (1, 512, 100, 100),
                                               (1, 1024, 50, 50), (1, 2048, 25, 25)]
    with torch.no_grad():
        ps = FPN().eval()(*c_800)
    assert [tuple(p.shape) for p in ps] == [(1, 256, 200, 200), (1, 256, 100, 100),
                                            (1, 256, 50, 50), (1, 256, 25, 25), (1, 256, 13, 13)]


def test_detection_model_shapes_224():
    """The walkthrough's 224x224 example: 6 objectness and 12 box channels per level."""
    for variant, sizes in (("notebook", [56, 28, 14, 7, 4]), ("paper", [56, 28, 14, 7])):
        with torch.no_grad():
            preds = DetectionModel(fpn_variant=variant).eval()(torch.randn(1, 3, 224, 224))
        assert [tuple(o.shape) for o, _ in preds] == [(1, 6, s, s) for s in sizes]
        assert [tuple(b.shape) for _, b in preds] == [(1, 12, s, s) for s in sizes]


def test_fpn_variants_differ_as_the_seeds_do():
    torch.manual_seed(0)
    cs = [torch.randn(1, c, s, s) for c, s in zip((256, 512, 1024, 2048), (16, 8, 4, 2))]
    nb, paper = FPN(), FPN(variant="paper")
    paper.load_state_dict({k: v for k, v in nb.state_dict().items() if not k.startswith("out5")})
    p_nb, p_paper = nb(*cs), paper(*cs)
    for a, b in zip(p_nb[:3], p_paper[:3]):  # same weights, 2x sizes: P2..P4 agree
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(p_paper[3], nb.lat5(cs[3]))  # P5 = M5, not smoothed
    assert torch.equal(p_nb[4], p_nb[3][:, :, ::2, ::2])    # P6 = stride-2 subsample of P5


def test_fpn_notebook_takes_odd_sizes():
    cs = [torch.randn(1, c, s, s + 1) for c, s in zip((256, 512, 1024, 2048), (25, 13, 7, 4))]
    ps = FPN()(*cs)
    assert [tuple(p.shape[-2:]) for p in ps] == [(25, 26), (13, 14), (7, 8), (4, 5), (2, 3)]


@pytest.mark.parametrize("size", [(224, 224), (97, 131)])
def test_resnet50_equals_torchvision(size):
    """Same weights (stem.0/stem.1 named conv1/bn1 there), same C2..C5: v1.5 stride placement."""
    ours, tv = ResNet50().eval(), torchvision.models.resnet50().eval()
    sd = {k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): v for k, v in ours.state_dict().items()}
    missing, unexpected = tv.load_state_dict(sd, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        ref = []
        for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4):
            y = layer(y)
            ref.append(y)
        for a, b in zip(ours(x), ref):
            assert torch.equal(a, b)


def test_resnet34_loads_torchvision_checkpoint():
    tv = torchvision.models.resnet34().eval()
    ours = ResNet34().eval()
    ours.load_state_dict(tv.state_dict())  # strict: same names and shapes
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))
        backbone = ResNet34(num_classes=None).eval()
        backbone.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")})
        feats = backbone(x)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    assert [f.shape[-1] for f in feats] == [20, 10, 5, 3]


def test_reference_errors():
    with pytest.raises(ValueError, match="variant must be one of.*'fast'"):
        FPN(variant="fast")
    with pytest.raises(ValueError, match="in_channels must list 4 levels"):
        FPN(in_channels=(256, 512))
    with pytest.raises(ValueError, match="backbone must be one of.*'vgg'"):
        DetectionModel(backbone="vgg")
