"""The seeds' FPN neck in plain PyTorch (the reference fpnops.FusedFPN reproduces)."""
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = ("notebook", "paper")


class FPN(nn.Module):
    """Feature Pyramid Network: C2..C5 in, one `out_channels`-wide map per level out.

    variant="notebook" (the backbone notebook): 1x1 laterals, top-down nearest upsample *by
        size* (any input size), 3x3 output convs on P2..P5, P6 = max_pool2d(P5, 1, stride 2);
        returns (P2, P3, P4, P5, P6).
    variant="paper" (the paper walkthrough): P5 = M5 without smoothing, upsample by
        scale_factor=2 (needs exact 2x sizes), 3x3 smoothing on M4..M2; returns (P2, P3, P4, P5).
    """

    def __init__(self, in_channels=(256, 512, 1024, 2048), out_channels=256, variant="notebook"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"FPN: variant must be one of {VARIANTS}, got {variant!r}")
        if len(in_channels) != 4:
            raise ValueError(f"FPN: in_channels must list 4 levels (C2..C5), got {in_channels!r}")
        self.variant = variant
        self.lat2, self.lat3, self.lat4, self.lat5 = (nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.out2, self.out3, self.out4 = (nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                           for _ in range(3))
        if variant == "notebook":
            self.out5 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def _up(self, x, like):
        if self.variant == "paper":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def forward(self, c2, c3, c4, c5):
        m5 = self.lat5(c5)
        l4 = self.lat4(c4)
        m4 = l4 + self._up(m5, l4)
        l3 = self.lat3(c3)
        m3 = l3 + self._up(m4, l3)
        l2 = self.lat2(c2)
        m2 = l2 + self._up(m3, l2)
        return self._outputs(m2, m3, m4, m5)

    def _outputs(self, m2, m3, m4, m5):
        """The output convs on the merged maps M2..M5 (P6 by subsampling P5)."""
        p2, p3, p4 = self.out2(m2), self.out3(m3), self.out4(m4)
        if self.variant == "paper":
            return p2, p3, p4, m5
        p5 = self.out5(m5)
        return p2, p3, p4, p5, F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)

    def extra_repr(self):
        return f"variant={self.variant!r}"
