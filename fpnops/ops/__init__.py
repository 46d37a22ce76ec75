"""Python faces of the fpnops ops: argument checks, backend choice, fake kernels, autograd."""
from fpnops.ops.upsample_add import upsample_add

__all__ = ["upsample_add"]
