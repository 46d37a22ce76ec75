// conv_bn_act on CUDA: cuDNN's convolution without bias, then our epilogue kernel (bias +
// residual + ReLU, one pass, 16-byte vectors, NCHW or NHWC: conv_epilogue_kernel.cuh). Not
// cuDNN's fused conv-bias-(add-)ReLU (at::cudnn_convolution_relu / _add_relu): nothing shows
// that its ReLU keeps NaN (eager's does), and its engines are not available for every case (it
// threw, and a try/catch per call is no path for a hot loop).
#include <ATen/ops/convolution.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../conv_bn_act.h"
#include "conv_epilogue_kernel.cuh"

namespace fpnops {
namespace {

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK(x.is_cuda(), "conv_bn_act (CUDA kernel): expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto fmt = x.suggest_memory_format();  // the output's layout
  const auto res = checked_residual("conv_bn_act", x, weight, /*packed_weight=*/false, bias, stride,
                                    padding, dilation, groups, residual, fmt);
  at::Tensor out = at::convolution(x, weight, std::nullopt, stride, padding, dilation, false,
                                   {0, 0}, groups).contiguous(fmt);
  if (out.numel() > 0 && (bias.has_value() || res.has_value() || relu)) {
    conv_epilogue_launch(out, bias, res, relu, GpuLaunch{}, gpu_launch_limits());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cuda); }

}  // namespace fpnops
