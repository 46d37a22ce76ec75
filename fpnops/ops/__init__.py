"""Python faces of the fpnops ops: argument checks, backend choice, fake kernels, autograd."""
from fpnops.ops.conv_bn_act import conv_bn_act
from fpnops.ops.fold import fold_conv_bn
from fpnops.ops.upsample_add import upsample_add

__all__ = ["conv_bn_act", "fold_conv_bn", "upsample_add"]
