"""3x3 convolutions as Winograd's F(4x4, 3x3) on the CPU (fpnops::conv3x3_winograd,
csrc/cpu/winograd.cpp): the fused modules' CPU float32 inference path runs the 3x3 convs of
ResNet's wider layers this way, where it is faster than oneDNN's direct convolution (which has no
Winograd of its own on AVX2 CPUs). fpnops.fuse(model, winograd=False) and
FusedFPN.from_module(..., winograd=False) turn it off and keep every other fusion.

The error it keeps, per output y[n, k, h, w] against the exact convolution of the same float32
inputs (TILE_BOUND in tests/test_winograd.py):

    |y - exact| <= c * T * S[k] + u * (|exact| + |bias[k]| + |residual|) + A_sub

  T     the largest |x| over the 6x6 input tile of the 4x4 output tile holding (h, w) (input rows
        4*ty-1 .. 4*ty+4 and columns 4*tx-1 .. 4*tx+4, over every channel),
  S[k]  sum over c, i, j of |w[k, c, i, j]|,
  c     2e-6 with 64 or more input channels, where the fused modules run it (the worst
        measured ~1e-6: random and ReLU'd maps, one bright pixel among dim ones, alternating
        signs, values up to the SAFE_BOUND below, 64 to 512 channels); 8e-6 with fewer (one
        input channel measured 3.7e-6: no sum over channels to average the rounding),
  u     2**-23, the rounding of the bias and residual adds,
  A_sub an absolute term for subnormal inputs (float32's smallest step 2**-149 bounds what the
        products of tiny values keep): 400 * (C + 36) * 2**-149.

c is measured, not proven: a worst-case rounding analysis gives a constant that grows with the
channel count, as for any float32 sum of C products; the rounding errors of the sum over
channels cancel as a direct convolution's do. A direct float32 conv keeps the same form with
T * S[k] replaced by sum |x| |w| over the output's own 3x3 window, per element. So Winograd's
error is small against the tile's largest value, not against the output itself: an output of
0.01 in a tile with a pixel of 1000 can be off by several percent of its own value (about 1e-6
of the map's norm: a fused ResNet50 stays ~2e-6 from float64, as eager is). Where each output
must agree with eager to float32 rounding, use winograd=False.

The points: 0, +-1, +-2 and infinity. benchmarks/winograd_points.py measures every other set
people use for F(4x4, 3x3) (results in benchmarks/results/winograd-points-*.json): none with
lower error costs the same; 0, +-1, 1/2, -2 has ~1/3 of the tile constant and 2/3 of the
norm-wise error for ~10% more transform work (not taken; see the README).

Only for inputs with a proven finite bound: the transforms mix neighbouring pixels, so an inf
would make NaNs around it, and they grow values by at most 36100x (|U| <= 100 max|x|, |V| <=
max|w| per 3x3 kernel, A^T's row sums 19 at most): a bound below fpnops' SAFE_BOUND (1e30) on the
direct convolution keeps every Winograd intermediate far below float32's overflow.
"""
import torch

from fpnops.ops.conv_bn_act import with_conv_gradients

# G of F(4x4, 3x3) with the points 0, +-1, +-2 and infinity: V = G g G^T, 6x6 per 3x3 kernel.
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))

# Where it was measured to beat oneDNN's direct convolution (benchmarks/winograd.py on the 2-core
# AVX2 machine, benchmarks/results/winograd-cpu-2core.json: 1.1-2.1x on every ResNet 3x3 shape,
# 64 to 512 channels, N=1 512 and N=2 800): both channel counts at least this (fewer: not
# measured, so not taken), and a map of at least 8x8 (the tiles are 4x4; partial tiles at the
# edges waste work).
MIN_CHANNELS = 64
MIN_SIDE = 8


def applies(x_shape, weight, args):
    """Whether the fused modules run this conv (weight (K, C, kh, kw), args (stride, padding,
    dilation, groups)) on an input of x_shape as conv3x3_winograd."""
    stride, padding, dilation, groups = args
    k, c, kh, kw = weight.shape
    return ((kh, kw) == (3, 3) and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1 and c >= MIN_CHANNELS
            and k >= MIN_CHANNELS and min(x_shape[2], x_shape[3]) >= MIN_SIDE
            and weight.dtype == torch.float32 and weight.device.type == "cpu")


def winograd_weight(weight):
    """(K, C, 3, 3) -> the (36, C, K) float32 weight conv3x3_winograd takes, transformed in
    float64 (one rounding per value)."""
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight: weight must be (K, C, 3, 3), got {tuple(weight.shape)}")
    g = torch.tensor(_G, dtype=torch.float64, device=weight.device)
    v = torch.einsum("ia,kcab,jb->ijck", g, weight.detach().double(), g)
    return v.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def conv3x3_winograd(x, weight, bias=None, residual=None, relu=False):
    """relu?(conv2d(x, w, bias, padding=1) + residual) with weight = winograd_weight(w); output
    channels_last. x must hold no NaN or inf (see above)."""
    return torch.ops.fpnops.conv3x3_winograd(x, weight, bias, residual, relu)


def conv3x3_winograd_differentiable(x, weight, bias=None, residual=None, relu=False):
    """conv3x3_winograd(x, winograd_weight(weight), ...) with gradients for x, weight (the
    untransformed (K, C, 3, 3) one), bias and residual: those of the exact convolution, which
    Winograd computes to float32 rounding. x must hold no NaN or inf."""
    return with_conv_gradients(
        lambda: torch.ops.fpnops.conv3x3_winograd(x, winograd_weight(weight), bias, residual, relu),
        x, weight, bias, residual, relu, ((1, 1), (1, 1), (1, 1), 1))
