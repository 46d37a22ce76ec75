"""Drop-in fused modules."""
from fpnops.nn._cache import refresh
from fpnops.nn.fpn import FusedFPN, FusedReferenceFPN
from fpnops.nn.resnet import FusedBasicBlock, FusedBottleneck, FusedConvBNAct

__all__ = ["FusedBasicBlock", "FusedBottleneck", "FusedConvBNAct", "FusedFPN", "FusedReferenceFPN",
           "refresh"]
