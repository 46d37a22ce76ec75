"""Drop-in fused modules."""
from fpnops.nn.fpn import FusedFPN, FusedReferenceFPN

__all__ = ["FusedFPN", "FusedReferenceFPN"]
