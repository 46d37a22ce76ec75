"""fpnops: fused kernels (C++, CUDA, Triton) for the ResNet-FPN under object detectors."""
from fpnops._extension import _C  # noqa: F401  (loads the compiled ops; refuses a stale build)
from fpnops._backend import backends
from fpnops._errors import InputError, InputTypeError
from fpnops.ops import conv_bn_act, fold_conv_bn, upsample_add
from fpnops import reference
from fpnops.nn import FusedBasicBlock, FusedBottleneck, FusedConvBNAct, FusedFPN, refresh
from fpnops.fuse import fuse

__version__ = "0.1.0"
__all__ = ["InputError", "InputTypeError", "backends", "conv_bn_act", "fold_conv_bn", "fuse", "FusedBasicBlock", "FusedBottleneck",
           "FusedConvBNAct", "FusedFPN", "reference", "refresh", "upsample_add"]
