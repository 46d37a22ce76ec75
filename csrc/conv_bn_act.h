// Argument checks shared by every conv_bn_act kernel (CPU, prepacked CPU, CUDA). The Python face
// checks the same first, with Python exceptions; these guard direct torch.ops.fpnops calls, so
// they run before any arithmetic on the arguments (a stride of 0 must not reach a division).
#pragma once
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/native/ConvUtils.h>
#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <array>
#include <optional>
#include <sstream>
#include <string>

namespace fpnops {

// What a non-strided argument is, for the messages.
inline std::string layout_name(const at::Tensor& t) {
  if (t.is_nested()) return "nested";
  std::ostringstream os;
  os << t.layout();
  return os.str();
}

// Output height and width of the convolution; checks stride, padding and dilation first and
// that the (dilated) kernel fits in the padded input. `w` may be an opaque (mkldnn) tensor:
// only its sizes are read.
inline std::array<int64_t, 2> conv_output_hw(const char* who, const at::Tensor& x,
                                             const at::Tensor& w, at::IntArrayRef stride,
                                             at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2, who, ": stride must have 2 values, got ", stride);
  TORCH_CHECK(padding.size() == 2, who, ": padding must have 2 values, got ", padding);
  TORCH_CHECK(dilation.size() == 2, who, ": dilation must have 2 values, got ", dilation);
  for (int d = 0; d < 2; ++d) TORCH_CHECK(stride[d] >= 1, who, ": stride must be >= 1, got ", stride);
  for (int d = 0; d < 2; ++d) TORCH_CHECK(padding[d] >= 0, who, ": padding must be >= 0, got ", padding);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(dilation[d] >= 1, who, ": dilation must be >= 1, got ", dilation);
  }
  std::array<int64_t, 2> out{};
  for (int d = 0; d < 2; ++d) {
    const int64_t in = x.size(2 + d), k = w.size(2 + d);
    TORCH_CHECK(k >= 1, who, ": weight must have a kernel of at least 1x1, got shape ", w.sizes());
    int64_t padded = 0, two_pad = 0, span = 0;
    const bool overflow = c10::mul_overflows<int64_t>(padding[d], 2, &two_pad) ||
                          c10::add_overflows<int64_t>(in, two_pad, &padded) ||
                          c10::mul_overflows<int64_t>(dilation[d], k - 1, &span);
    TORCH_CHECK(!overflow, who, ": padding ", padding, " or dilation ", dilation,
                " out of range for x ", x.sizes(), " and weight ", w.sizes());
    TORCH_CHECK(span < padded, who, ": x ", x.sizes(), " is smaller than the kernel ",
                w.sizes().slice(2), " (padding=", padding, ", dilation=", dilation, ")");
    out[d] = (padded - span - 1) / stride[d] + 1;
  }
  return out;
}

inline void check_conv_bn_act(const char* who, const at::Tensor& x, const at::Tensor& w,
                              bool packed_weight, const std::optional<at::Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups,
                              const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.defined() && w.defined(), who, ": x and weight must be tensors");
  TORCH_CHECK(x.layout() == at::kStrided && !x.is_nested(), who,
              ": x must be a strided (dense) tensor, got layout ", layout_name(x));
  TORCH_CHECK(packed_weight || (w.layout() == at::kStrided && !w.is_nested()), who,
              ": weight must be a strided (dense) tensor, got layout ", layout_name(w));
  TORCH_CHECK(x.dim() == 4, who, ": x must be 4-D, got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4, who, ": weight must be 4-D, got ", w.dim(), "-D with shape ", w.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), who, ": expected a floating dtype, got x ",
              x.scalar_type());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), who, ": weight must have x's dtype ",
              x.scalar_type(), ", got ", w.scalar_type());
  TORCH_CHECK(w.device() == x.device(), who, ": weight must be on x's device ", x.device(),
              ", got ", w.device());
  TORCH_CHECK(w.size(0) >= 1, who, ": weight must have at least 1 output channel, got shape ",
              w.sizes());
  TORCH_CHECK(groups >= 1, who, ": groups must be >= 1, got ", groups);
  TORCH_CHECK(w.size(0) % groups == 0, who, ": weight has ", w.size(0),
              " output channels, not divisible by groups=", groups);
  TORCH_CHECK(x.size(1) == w.size(1) * groups, who, ": x has ", x.size(1), " channels, weight ",
              w.sizes(), " with groups=", groups, " expects ", w.size(1) * groups);
  const auto hw = conv_output_hw(who, x, w, stride, padding, dilation);
  if (bias.has_value()) {
    TORCH_CHECK(bias->layout() == at::kStrided && !bias->is_nested(), who,
                ": bias must be a strided (dense) tensor, got layout ", layout_name(*bias));
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0), who, ": bias must have shape (",
                w.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type(), who, ": bias must have x's dtype ",
                x.scalar_type(), ", got ", bias->scalar_type());
    TORCH_CHECK(bias->device() == x.device(), who, ": bias must be on x's device ", x.device(),
                ", got ", bias->device());
  }
  if (residual.has_value()) {
    const auto& r = *residual;
    TORCH_CHECK(r.layout() == at::kStrided && !r.is_nested(), who,
                ": residual must be a strided (dense) tensor, got layout ", layout_name(r));
    TORCH_CHECK(r.scalar_type() == x.scalar_type(), who, ": residual must have x's dtype ",
                x.scalar_type(), ", got ", r.scalar_type());
    TORCH_CHECK(r.device() == x.device(), who, ": residual must be on x's device ", x.device(),
                ", got ", r.device());
    const std::array<int64_t, 4> out{x.size(0), w.size(0), hw[0], hw[1]};
    TORCH_CHECK(r.sizes() == at::IntArrayRef(out), who, ": residual must have the output's shape ",
                at::IntArrayRef(out), ", got ", r.sizes());
  }
}

// The memory format of eager's CUDA convolution output, which conv_bn_act's CUDA kernel returns:
// ATen's own cuDNN rule (cudnn_conv_suggest_memory_format, so that it cannot drift:
// channels_last when x or the 4-D weight is, by suggest_memory_format, except for float64 or
// without cuDNN), as eager applies it where cuDNN runs the convolution; with cuDNN turned off
// (torch.backends.cudnn.enabled = False) eager's CUDA convolutions return NCHW.
inline at::MemoryFormat conv_output_format_cuda(const at::Tensor& x, const at::Tensor& w) {
  if (!at::globalContext().userEnabledCuDNN()) return at::MemoryFormat::Contiguous;
  return at::native::cudnn_conv_suggest_memory_format(x, w);
}

// The memory format of eager's convolution output on the CPU, which conv_bn_act's CPU kernel
// returns: ATen's own choice, so that it cannot drift (the backend at::convolution selects for
// these arguments, then that backend's layout rule: channels_last when x or the weight is, by
// suggest_memory_format, float64 and half types included).
inline at::MemoryFormat conv_output_format_cpu(const at::Tensor& x, const at::Tensor& w,
                                               const std::optional<at::Tensor>& bias,
                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                               at::IntArrayRef dilation, int64_t groups) {
  const std::array<int64_t, 2> no_output_padding{0, 0};
  const auto backend = at::native::select_conv_backend(
      x, w, bias, c10::fromIntArrayRefSlow(stride), c10::fromIntArrayRefSlow(padding),
      c10::fromIntArrayRefSlow(dilation), /*transposed=*/false,
      c10::fromIntArrayRefSlow(no_output_padding), groups, std::nullopt);
  return at::native::_determine_backend_memory_format(x, w, backend);
}

// What every conv_bn_act kernel does first: the checks above, then the residual in the output's
// memory format `fmt` (the fused epilogues read it with the output's strides).
inline std::optional<at::Tensor> checked_residual(const char* who, const at::Tensor& x,
                                                  const at::Tensor& w, bool packed_weight,
                                                  const std::optional<at::Tensor>& bias,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups,
                                                  const std::optional<at::Tensor>& residual,
                                                  at::MemoryFormat fmt) {
  check_conv_bn_act(who, x, w, packed_weight, bias, stride, padding, dilation, groups, residual);
  if (!residual.has_value()) return std::nullopt;
  return residual->contiguous(fmt);
}

}  // namespace fpnops
