// conv_bn_act on CUDA: cuDNN's convolution without bias, in eager's output layout, then our
// epilogue kernel (bias + residual + ReLU, one pass, 16-byte vectors, NCHW or NHWC:
// conv_epilogue_kernel.cuh: conv_bn_act_launch, which the CPU emulation runs too). Not
// cuDNN's fused conv-bias-(add-)ReLU (at::cudnn_convolution_relu / _add_relu): nothing shows
// that its ReLU keeps NaN (eager's does), and its engines are not available for every case (it
// threw, and a try/catch per call is no path for a hot loop).
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "conv_epilogue_kernel.cuh"

namespace fpnops {
namespace {

at::Tensor conv_bn_act_cuda(const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            const std::optional<at::Tensor>& residual, bool relu) {
  TORCH_CHECK(x.is_cuda(), "conv_bn_act (CUDA kernel): expected CUDA tensors, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  return conv_bn_act_launch(x, weight, bias, stride, padding, dilation, groups, residual, relu,
                            GpuLaunch{}, gpu_launch_limits()).first;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cuda); }

}  // namespace fpnops
