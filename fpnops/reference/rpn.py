"""The paper walkthrough's RPN head, shared across pyramid levels."""
import torch.nn as nn

NUM_ANCHORS = 3


class RPNHead(nn.Module):
    """3x3 intermediate conv, then 1x1 objectness (2k) and box-regression (4k) convs.
    As in the walkthrough, there is no ReLU after the intermediate conv."""

    def __init__(self, in_channels=256, num_anchors=NUM_ANCHORS):
        super().__init__()
        self.intermediate = nn.Conv2d(in_channels, 256, kernel_size=3, padding=1)
        self.cls = nn.Conv2d(256, num_anchors * 2, kernel_size=1)
        self.reg = nn.Conv2d(256, num_anchors * 4, kernel_size=1)

    def forward(self, x):
        x = self.intermediate(x)
        return self.cls(x), self.reg(x)
