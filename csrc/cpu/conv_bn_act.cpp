// conv_bn_act on the CPU. float32: oneDNN's convolution with the bias, residual add and ReLU as
// post-ops (mkldnn::_convolution_pointwise, as PyTorch exposes it to Inductor): no extra pass.
// Other dtypes (or oneDNN disabled): ATen's convolution with the bias, then our epilogue
// (residual + ReLU) in one in-place pass, vectorised (conv_bn_act_kernel.h).
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/convolution.h>
#include <torch/library.h>

#include "../conv_bn_act.h"
#include "cpu_dispatch.h"

#define CPU_CAPABILITY DEFAULT
#include "conv_bn_act_kernel.h"
#undef CPU_CAPABILITY

namespace fpnops {

#if FPNOPS_HAVE_AVX2
namespace AVX2 {  // kernels_avx2.cpp
void conv_epilogue_kernel(at::Tensor&, const std::optional<at::Tensor>&, bool);
}  // namespace AVX2
#endif

namespace {

using OptScalars = c10::List<std::optional<at::Scalar>>;

at::Tensor onednn_conv_pointwise(const at::Tensor& x, const at::Tensor& w,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                 const std::optional<at::Tensor>& residual, bool relu) {
  const std::optional<c10::string_view> no_algorithm;
  if (!residual.has_value()) {
    static auto op = c10::Dispatcher::singleton()
        .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
        .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                          c10::string_view, OptScalars, std::optional<c10::string_view>)>();
    return op.call(x, w, bias, padding, stride, dilation, groups, relu ? "relu" : "none",
                   OptScalars(), no_algorithm);
  }
  static auto op = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const std::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
                        at::IntArrayRef, int64_t, c10::string_view, std::optional<at::Scalar>,
                        std::optional<c10::string_view>, OptScalars,
                        std::optional<c10::string_view>)>();
  const std::optional<c10::string_view> unary =
      relu ? std::optional<c10::string_view>("relu") : std::nullopt;
  return op.call(x, *residual, w, bias, padding, stride, dilation, groups, "add", std::nullopt,
                 unary, OptScalars(), no_algorithm);
}

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const std::optional<at::Tensor>& residual, bool relu) {
  check_conv_bn_act(x, weight, bias, residual, groups);
  check_residual_shape(x, weight, stride, padding, dilation, residual);
  const auto fmt = x.suggest_memory_format();
  // Both post-op operands in the output's layout (x's), as the fused kernels expect.
  std::optional<at::Tensor> res;
  if (residual.has_value()) res = residual->contiguous(fmt);
  at::Tensor out;
  if (x.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn() && x.numel() > 0) {
    out = onednn_conv_pointwise(x.contiguous(fmt), weight, bias, stride, padding, dilation, groups,
                                res, relu);
  } else {
    out = at::convolution(x, weight, bias, stride, padding, dilation, false, {0, 0}, groups)
              .contiguous(fmt);
    if ((res.has_value() || relu) && out.numel() > 0) {
      FPNOPS_CPU_DISPATCH(conv_epilogue_kernel, out, res, relu);
    }
  }
  return out.contiguous(fmt);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }

}  // namespace fpnops
