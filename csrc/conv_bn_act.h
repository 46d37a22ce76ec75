// Argument checks shared by the CPU and CUDA kernels of conv_bn_act (the Python face checks the
// same first, with Python exceptions; these guard direct torch.ops.fpnops calls).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

namespace fpnops {

inline void check_conv_bn_act(const at::Tensor& x, const at::Tensor& w,
                              const std::optional<at::Tensor>& bias,
                              const std::optional<at::Tensor>& residual, int64_t groups) {
  TORCH_CHECK(x.dim() == 4, "conv_bn_act: x must be 4-D, got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4, "conv_bn_act: weight must be 4-D, got ", w.dim(), "-D with shape ", w.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "conv_bn_act: expected a floating dtype, got ",
              x.scalar_type());
  TORCH_CHECK(groups >= 1 && x.size(1) == w.size(1) * groups,
              "conv_bn_act: x has ", x.size(1), " channels, weight ", w.sizes(), " with groups=",
              groups, " expects ", w.size(1) * groups);
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && w.device() == x.device(),
              "conv_bn_act: weight must match x's dtype and device, got ", w.scalar_type(), " on ",
              w.device(), " for x ", x.scalar_type(), " on ", x.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == w.size(0),
                "conv_bn_act: bias must have shape (", w.size(0), "), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == x.scalar_type() && bias->device() == x.device(),
                "conv_bn_act: bias must match x's dtype and device");
  }
  if (residual.has_value()) {
    TORCH_CHECK(residual->scalar_type() == x.scalar_type() && residual->device() == x.device(),
                "conv_bn_act: residual must match x's dtype and device, got ",
                residual->scalar_type(), " on ", residual->device());
  }
}

// The residual must have the convolution's output shape (checked before any kernel runs).
inline void check_residual_shape(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                 const std::optional<at::Tensor>& residual) {
  if (!residual.has_value()) return;
  std::vector<int64_t> out{x.size(0), w.size(0), 0, 0};
  for (int d = 0; d < 2; ++d) {
    out[2 + d] = (x.size(2 + d) + 2 * padding[d] - dilation[d] * (w.size(2 + d) - 1) - 1) / stride[d] + 1;
  }
  TORCH_CHECK(residual->sizes() == at::IntArrayRef(out), "conv_bn_act: residual must have the output's shape ",
              at::IntArrayRef(out), ", got ", residual->sizes());
}

// What every conv_bn_act kernel does first: the checks above, then the residual in the output's
// memory format `fmt` (the fused epilogues read it with the output's strides).
inline std::optional<at::Tensor> checked_residual(const at::Tensor& x, const at::Tensor& w,
                                                  const std::optional<at::Tensor>& bias,
                                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                                  at::IntArrayRef dilation, int64_t groups,
                                                  const std::optional<at::Tensor>& residual,
                                                  at::MemoryFormat fmt) {
  check_conv_bn_act(x, w, bias, residual, groups);
  check_residual_shape(x, w, stride, padding, dilation, residual);
  if (!residual.has_value()) return std::nullopt;
  return residual->contiguous(fmt);
}

}  // namespace fpnops
