"""The walkthrough's detection model with a real ResNet backbone: backbone -> FPN -> RPN."""
import torch.nn as nn

from fpnops.reference.fpn import FPN
from fpnops.reference.resnet import ResNet34, ResNet50
from fpnops.reference.rpn import RPNHead


class DetectionModel(nn.Module):
    """Returns one (objectness, bbox_regression) pair per pyramid level (P2..P6 for the
    notebook FPN, P2..P5 for the paper variant), the RPN head shared across levels."""

    def __init__(self, backbone="resnet50", fpn_variant="notebook", out_channels=256,
                 num_anchors=3):
        super().__init__()
        backbones = {"resnet50": ResNet50, "resnet34": lambda: ResNet34(num_classes=None)}
        if backbone not in backbones:
            raise ValueError(f"DetectionModel: backbone must be one of {sorted(backbones)}, got {backbone!r}")
        self.backbone = backbones[backbone]()
        self.fpn = FPN(self.backbone.out_channels, out_channels, variant=fpn_variant)
        self.rpn = RPNHead(out_channels, num_anchors)

    def forward(self, x):
        return [self.rpn(p) for p in self.fpn(*self.backbone(x))]
