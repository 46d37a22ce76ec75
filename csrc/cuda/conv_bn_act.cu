// conv_bn_act on CUDA: cuDNN's convolution without bias, then our epilogue kernel (bias +
// residual + ReLU, one pass, 16-byte vectors, NCHW or NHWC). Not cuDNN's fused
// conv-bias-(add-)ReLU (at::cudnn_convolution_relu / _add_relu): nothing shows that its ReLU
// keeps NaN (eager's does), and its engines are not available for every case (it threw, and a
// try/catch per call is no path for a hot loop).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/convolution.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../conv_bn_act.h"
#include "vector_access.cuh"

namespace fpnops {
namespace {

// y = relu(y + bias[c] + residual), in place, relu as eager's (v < 0 ? 0 : v: NaN stays NaN,
// -0.0 stays -0.0); y and residual dense in the same layout. V
// consecutive elements share a channel (NCHW, HW % V == 0) or hold V consecutive channels
// (NHWC, C % V == 0).
template <typename scalar_t, int V, bool CHANNELS_LAST>
__global__ void epilogue_kernel(scalar_t* __restrict__ y, const scalar_t* __restrict__ bias,
                                const scalar_t* __restrict__ res, int64_t C, int64_t HW,
                                bool relu, int64_t num_vecs) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < num_vecs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i0 = p * V;
    Pack<scalar_t, V> o = *reinterpret_cast<const Pack<scalar_t, V>*>(y + i0);
    Pack<scalar_t, V> r;
    if (res) r = *reinterpret_cast<const Pack<scalar_t, V>*>(res + i0);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t c = CHANNELS_LAST ? (i0 + k) % C : ((i0 + k) / HW) % C;
      opmath_t v = static_cast<opmath_t>(o.v[k]);
      if (bias) v += static_cast<opmath_t>(bias[c]);
      if (res) v += static_cast<opmath_t>(r.v[k]);
      if (relu && v < opmath_t(0)) v = opmath_t(0);
      o.v[k] = static_cast<scalar_t>(v);
    }
    *reinterpret_cast<Pack<scalar_t, V>*>(y + i0) = o;
  }
}

void launch_epilogue(at::Tensor& y, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& res, bool relu) {
  const bool cl = y.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_bn_act_epilogue", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t* b = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* r = res.has_value() ? res->const_data_ptr<scalar_t>() : nullptr;
    const int64_t inner = cl ? y.size(1) : y.size(2) * y.size(3);
    const bool vec = inner % V == 0 && aligned16(y.const_data_ptr()) && (!r || aligned16(r));
    const int64_t C = y.size(1), HW = y.size(2) * y.size(3);
    const auto stream = c10::cuda::getCurrentCUDAStream();
    auto go = [&](auto vtag, auto cltag) {
      constexpr int VV = decltype(vtag)::value;
      constexpr bool CL = decltype(cltag)::value;
      const int64_t num_vecs = y.numel() / VV;
      epilogue_kernel<scalar_t, VV, CL><<<num_blocks(num_vecs), kThreads, 0, stream>>>(
          y.mutable_data_ptr<scalar_t>(), b, r, C, HW, relu, num_vecs);
    };
    using T = std::true_type;
    using F = std::false_type;
    if (vec) {
      if (cl) go(std::integral_constant<int, V>{}, T{}); else go(std::integral_constant<int, V>{}, F{});
    } else {
      if (cl) go(std::integral_constant<int, 1>{}, T{}); else go(std::integral_constant<int, 1>{}, F{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

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
    std::optional<at::Tensor> b;  // the kernel reads bias[c]: dense
    if (bias.has_value()) b = bias->contiguous();
    launch_epilogue(out, b, res, relu);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CUDA, m) { m.impl("conv_bn_act", &conv_bn_act_cuda); }

}  // namespace fpnops
