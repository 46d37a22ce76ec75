// conv_bn_act on the CPU. float32: oneDNN's convolution with the bias, residual add and ReLU as
// post-ops (mkldnn::_convolution_pointwise, as PyTorch exposes it to Inductor): no extra pass.
// bfloat16/float16 on CPUs without hardware support for them: the same in float32, rounded once.
// Otherwise (float64, half types on CPUs with bf16/fp16 instructions, oneDNN disabled): ATen's
// convolution with the bias, then our epilogue (residual + ReLU) in one in-place pass,
// vectorised (conv_bn_act_kernel.h).
//
// NaN: oneDNN's ReLU post-op is max(x, 0), which turns NaN into 0 (eager keeps NaN). It runs only
// where a bound on the pre-activation proves no NaN can reach it: B = max|x| * max_co sum|w[co]|
// + max|bias| + max|residual| finite and below kSafeBound (then the convolution cannot overflow
// to inf, so no NaN can appear inside it either). Otherwise the convolution runs without the
// ReLU and our NaN-propagating epilogue applies it. The bound costs one read of x and of the
// residual and one of the (small) weight per call.
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/convolution.h>
#include <torch/library.h>

#include "../conv_bn_act.h"
#include "cpu_dispatch.h"
#include "max_abs.h"

#define CPU_CAPABILITY DEFAULT
#include "conv_bn_act_kernel.h"
#undef CPU_CAPABILITY

namespace fpnops {

#if FPNOPS_HAVE_AVX2
namespace AVX2 {  // kernels_avx2.cpp
void conv_epilogue_kernel(at::Tensor&, const std::optional<at::Tensor>&, bool);
double max_channel_abs_sum_kernel(const at::Tensor&);
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

// Far from float32's overflow (3.4e38): a convolution whose every partial sum is bounded by this
// produces no inf, whatever the order or algorithm of its accumulation.
constexpr double kSafeBound = 1e30;

// Whether oneDNN's (NaN-dropping) ReLU post-op may run: no NaN can reach it. x, w, bias, res:
// strided CPU tensors of one floating dtype (x dense, as the convolution reads it).
// Proving it reads x and the residual once; the other exact way, the convolution without the
// post-op and our NaN-propagating ReLU over its output, reads and writes the output once. So
// where the output is the smaller (a 1x1 conv that narrows, a strided conv) it takes that way
// and proves nothing.
bool relu_post_op_is_safe(const at::Tensor& x, const at::Tensor& w,
                          const std::optional<at::Tensor>& bias,
                          const std::optional<at::Tensor>& res, int64_t out_numel) {
  const int64_t read = x.numel() + (res.has_value() ? res->numel() : 0);
  if (2 * out_numel < read) return false;
  const double x_max = max_abs_cpu(x);
  if (!(x_max < kSafeBound)) return false;  // NaN or inf in x: no need to look further
  // Each output channel's elements must be one block of memory (NCHW and channels_last are).
  const int64_t rows = w.size(0);
  const bool blocks = w.is_non_overlapping_and_dense() &&
                      (rows <= 1 || w.stride(0) * rows == w.numel());
  const double w_max = FPNOPS_CPU_DISPATCH(max_channel_abs_sum_kernel, blocks ? w : w.contiguous());
  double bound = x_max * w_max;
  if (bias.has_value()) bound += max_abs_cpu(*bias);
  if (res.has_value() && bound < kSafeBound) bound += max_abs_cpu(*res);
  return bound < kSafeBound;  // false for NaN
}

// oneDNN reads the bias as a dense vector, whatever its strides.
std::optional<at::Tensor> dense_bias(const std::optional<at::Tensor>& bias) {
  if (!bias.has_value()) return std::nullopt;
  return bias->contiguous();
}

// Our NaN-propagating ReLU, in place, on a dense tensor.
void nan_relu_(at::Tensor& out) {
  if (out.numel() > 0) FPNOPS_CPU_DISPATCH(conv_epilogue_kernel, out, std::nullopt, true);
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
                           const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           const std::optional<at::Tensor>& residual, bool relu) {
  check_conv_bn_act("conv_bn_act", x, weight, /*packed_weight=*/false, bias_in, stride, padding,
                    dilation, groups, residual);  // before the layout rule reads the arguments
  const auto fmt = conv_output_format_cpu(x, weight, bias_in, stride, padding, dilation, groups);
  const auto res = checked_residual("conv_bn_act", x, weight, /*packed_weight=*/false, bias_in, stride,
                                    padding, dilation, groups, residual, fmt);
  const auto bias = dense_bias(bias_in);
  const auto hw = conv_output_hw("conv_bn_act", x, weight, stride, padding, dilation);
  const int64_t out_numel = x.size(0) * weight.size(0) * hw[0] * hw[1];
  at::Tensor out;
  const bool onednn = at::globalContext().userEnabledMkldnn() && x.numel() > 0;
  if (onednn && x.scalar_type() == at::kFloat) {
    const at::Tensor xc = x.contiguous(fmt);
    const bool fused_relu = relu && relu_post_op_is_safe(xc, weight, bias, res, out_numel);
    out = onednn_conv_pointwise(xc, weight, bias, stride, padding, dilation, groups, res,
                                fused_relu).contiguous(fmt);
    if (relu && !fused_relu) nan_relu_(out);
  } else if (onednn && at::isReducedFloatingType(x.scalar_type()) &&
             !onednn_has_native(x.scalar_type())) {
    // Without bf16/fp16 instructions (AVX2 CPUs) oneDNN's half-precision convolution is a slow
    // reference loop (seconds per ResNet conv). The operands are exact in float32, so the float32
    // convolution with the epilogue fused, rounded once at the end, is the same math (float32
    // accumulation) and at least as accurate as eager, which rounds the conv's output before
    // the add as well. The ReLU runs after the rounding where it cannot be fused (the same:
    // rounding to nearest keeps the sign, and relu(-inf) = 0 = relu of the finite negative).
    const auto f32 = [&](const at::Tensor& t) { return t.to(at::kFloat); };
    std::optional<at::Tensor> res32, bias32;
    if (res.has_value()) res32 = f32(*res);
    if (bias.has_value()) bias32 = f32(*bias);
    const at::Tensor x32 = f32(x).contiguous(fmt), w32 = f32(weight);
    const bool fused_relu = relu && relu_post_op_is_safe(x32, w32, bias32, res32, out_numel);
    out = onednn_conv_pointwise(x32, w32, bias32, stride, padding, dilation, groups, res32,
                                fused_relu).to(x.scalar_type()).contiguous(fmt);
    if (relu && !fused_relu) nan_relu_(out);
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
// Contract: its ReLU is oneDNN's post-op, unchecked for NaN (it maps NaN to 0). The caller
// proves first that no NaN can reach it (the fused modules bound their inputs as
// relu_post_op_is_safe does) or passes relu=false and applies a NaN-propagating ReLU itself.
// The arguments are checked as conv_bn_act's.
at::Tensor conv_bn_act_cpu_prepacked(const at::Tensor& x, const at::Tensor& packed_weight,
                                     const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups, const std::optional<at::Tensor>& residual,
                                     bool relu) {
  constexpr const char* who = "conv_bn_act_cpu_prepacked";
  TORCH_CHECK(packed_weight.is_mkldnn(), who, ": packed_weight must come from "
              "mkldnn::_reorder_convolution_weight, got a ", packed_weight.layout(), " tensor");
  TORCH_CHECK(x.layout() == at::kStrided && x.scalar_type() == at::kFloat, who,
              ": x must be a strided float32 tensor, got ", x.scalar_type(), " with layout ",
              x.layout());
  TORCH_CHECK(at::globalContext().userEnabledMkldnn(), who,
              ": needs oneDNN enabled (torch.backends.mkldnn.enabled)");
  const auto cl = at::MemoryFormat::ChannelsLast;
  const auto res = checked_residual(who, x, packed_weight, /*packed_weight=*/true, bias, stride,
                                    padding, dilation, groups, residual, cl);
  return onednn_conv_pointwise(x.contiguous(cl), packed_weight, dense_bias(bias), stride, padding,
                               dilation, groups, res, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) {
  m.impl("conv_bn_act", &conv_bn_act_cpu);
  m.impl("conv_bn_act_cpu_prepacked", &conv_bn_act_cpu_prepacked);
}

// The packed weight is an mkldnn tensor: the dispatcher picks this key for the call. conv_bn_act
// is registered for the other layouts' keys too, only so that a sparse, mkldnn or nested
// argument gets its checks' message naming it rather than the dispatcher's.
TORCH_LIBRARY_IMPL(fpnops, MkldnnCPU, m) {
  m.impl("conv_bn_act_cpu_prepacked", &conv_bn_act_cpu_prepacked);
  m.impl("conv_bn_act", &conv_bn_act_cpu);
}

TORCH_LIBRARY_IMPL(fpnops, SparseCPU, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }

TORCH_LIBRARY_IMPL(fpnops, NestedTensorCPU, m) { m.impl("conv_bn_act", &conv_bn_act_cpu); }

}  // namespace fpnops
