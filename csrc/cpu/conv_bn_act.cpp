// conv_bn_act on the CPU. float32: oneDNN's convolution with the bias, residual add and ReLU as
// post-ops (mkldnn::_convolution_pointwise, as PyTorch exposes it to Inductor): no extra pass.
// bfloat16/float16 on CPUs without hardware support for them: the same in float32, rounded once.
// Otherwise (float64, half types on CPUs with bf16/fp16 instructions, oneDNN disabled): ATen's
// convolution with the bias, then our epilogue (residual + ReLU) in one in-place pass,
// vectorised (conv_bn_act_kernel.h).
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

// Whether oneDNN has hardware bf16/fp16 convolutions on this CPU (AVX512-BF16, AMX-FP16, ...).
bool onednn_has_native(at::ScalarType t) {
  static const bool bf16 = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_is_mkldnn_bf16_supported", "").typed<bool()>().call();
  static const bool fp16 = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_is_mkldnn_fp16_supported", "").typed<bool()>().call();
  return t == at::kBFloat16 ? bf16 : fp16;
}

at::Tensor conv_bn_act_cpu(const at::Tensor& x, const at::Tensor& weight,
                           const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const std::optional<at::Tensor>& residual, bool relu) {
  const auto fmt = x.suggest_memory_format();  // the output's layout
  const auto res = checked_residual(x, weight, bias, stride, padding, dilation, groups, residual, fmt);
  at::Tensor out;
  const bool onednn = at::globalContext().userEnabledMkldnn() && x.numel() > 0;
  if (onednn && x.scalar_type() == at::kFloat) {
    out = onednn_conv_pointwise(x.contiguous(fmt), weight, bias, stride, padding, dilation, groups,
                                res, relu);
  } else if (onednn && at::isReducedFloatingType(x.scalar_type()) &&
             !onednn_has_native(x.scalar_type())) {
    // Without bf16/fp16 instructions (AVX2 CPUs) oneDNN's half-precision convolution is a slow
    // reference loop (seconds per ResNet conv). The operands are exact in float32, so the float32
    // convolution with the epilogue fused, rounded once at the end, is the same math (float32
    // accumulation) and at least as accurate as eager, which rounds the conv's output before
    // the add as well.
    const auto f32 = [&](const at::Tensor& t) { return t.to(at::kFloat); };
    std::optional<at::Tensor> res32, bias32;
    if (res.has_value()) res32 = f32(*res);
    if (bias.has_value()) bias32 = f32(*bias);
    out = onednn_conv_pointwise(f32(x).contiguous(fmt), f32(weight), bias32, stride, padding,
                                dilation, groups, res32, relu)
              .to(x.scalar_type());
  } else {
    out = at::convolution(x, weight, bias, stride, padding, dilation, false, {0, 0}, groups)
              .contiguous(fmt);
    if ((res.has_value() || relu) && out.numel() > 0) {
      FPNOPS_CPU_DISPATCH(conv_epilogue_kernel, out, res, relu);
    }
  }
  return out.contiguous(fmt);
}

// x in channels_last (oneDNN's native layout: no reorder of the activations), the weight
// reordered once for this input shape: what Inductor's CPU freezing does, without compiling.
at::Tensor conv_bn_act_cpu_prepacked(const at::Tensor& x, const at::Tensor& packed_weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups, const std::optional<at::Tensor>& residual,
                                     bool relu) {
  TORCH_CHECK(packed_weight.is_mkldnn(), "conv_bn_act_cpu_prepacked: packed_weight must come from "
              "mkldnn::_reorder_convolution_weight, got a ", packed_weight.layout(), " tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat && at::globalContext().userEnabledMkldnn(),
              "conv_bn_act_cpu_prepacked: needs float32 x and oneDNN enabled, got ", x.scalar_type());
  const auto cl = at::MemoryFormat::ChannelsLast;
  const auto res = checked_residual(x, packed_weight, bias, stride, padding, dilation, groups,
                                    residual, cl);
  return onednn_conv_pointwise(x.contiguous(cl), packed_weight, bias, stride, padding, dilation,
                               groups, res, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) {
  m.impl("conv_bn_act", &conv_bn_act_cpu);
  m.impl("conv_bn_act_cpu_prepacked", &conv_bn_act_cpu_prepacked);
}

// The packed weight is an mkldnn tensor: the dispatcher picks this key for the call.
TORCH_LIBRARY_IMPL(fpnops, MkldnnCPU, m) {
  m.impl("conv_bn_act_cpu_prepacked", &conv_bn_act_cpu_prepacked);
}

}  // namespace fpnops
