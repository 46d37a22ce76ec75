// Argument checks and output allocation shared by the CPU and CUDA kernels of upsample_add.
// The Python face checks the same things first with Python exceptions; these guard direct
// torch.ops.fpnops calls.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <cmath>
#include <optional>

namespace fpnops {

// `scale` (if given) must be what turns the top size into the output size, as
// F.interpolate(scale_factor=...) computes it: floor(in * scale). Compared in double, so that a
// huge or infinite product is reported, never cast to int64 (undefined behaviour).
inline void check_scale(const char* who, const char* name, std::optional<double> scale,
                        int64_t in_size, const char* out_name, int64_t out_size) {
  if (!scale.has_value()) return;
  TORCH_CHECK(std::isfinite(*scale) && *scale > 0., who, ": ", name,
              " must be a positive finite number, got ", *scale);
  const double expect = std::floor(static_cast<double>(in_size) * *scale);
  TORCH_CHECK(expect == static_cast<double>(out_size), who, ": ", name, "=", *scale,
              " turns top size ", in_size, " into ", expect, ", but ", out_name, " has size ",
              out_size);
}

// Sparse, mkldnn and nested tensors never reach these kernels (the dispatcher sends them to
// fpnops/ops/upsample_add.py's refusals); checked again so that the kernels stand on their own.
inline void check_dense(const char* who, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(!t.is_nested(), who, ": ", name, " must be a dense (strided) tensor, got a "
                   "nested tensor");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, who, ": ", name,
                   " must be a dense (strided) tensor, got layout ", t.layout());
}

// The dtypes the kernels are compiled for (at::isFloatingType also admits the float8 types).
inline bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

inline void check_upsample_add(const at::Tensor& top, const at::Tensor& lateral,
                               std::optional<double> scale_h, std::optional<double> scale_w) {
  check_dense("upsample_add", "top", top);
  check_dense("upsample_add", "lateral", lateral);
  TORCH_CHECK(top.dim() == 4, "upsample_add: top must be 4-D (N, C, H, W), got ", top.dim(),
              "-D with shape ", top.sizes());
  TORCH_CHECK(lateral.dim() == 4, "upsample_add: lateral must be 4-D (N, C, H, W), got ",
              lateral.dim(), "-D with shape ", lateral.sizes());
  TORCH_CHECK(top.size(0) == lateral.size(0) && top.size(1) == lateral.size(1),
              "upsample_add: top and lateral must have the same N and C, got top ", top.sizes(),
              " and lateral ", lateral.sizes());
  TORCH_CHECK(top.scalar_type() == lateral.scalar_type(),
              "upsample_add: top and lateral must have the same dtype, got top ",
              top.scalar_type(), " and lateral ", lateral.scalar_type());
  TORCH_CHECK(is_kernel_dtype(lateral.scalar_type()),
              "upsample_add: top and lateral must have a floating dtype (float16, bfloat16, "
              "float32, float64), got ", lateral.scalar_type());
  TORCH_CHECK(top.device() == lateral.device(),
              "upsample_add: top and lateral must be on the same device, got top on ",
              top.device(), " and lateral on ", lateral.device());
  check_scale("upsample_add", "scale_h", scale_h, top.size(2), "lateral", lateral.size(2));
  check_scale("upsample_add", "scale_w", scale_w, top.size(3), "lateral", lateral.size(3));
  TORCH_CHECK(lateral.numel() == 0 || (top.size(2) > 0 && top.size(3) > 0),
              "upsample_add: top has an empty spatial size ", top.sizes(),
              " but lateral ", lateral.sizes(), " needs values from it");
}

// As eager `lateral + upsampled`: the output takes the lateral's memory format.
inline at::Tensor empty_like_lateral(const at::Tensor& lateral) {
  return at::empty(lateral.sizes(), lateral.options().memory_format(lateral.suggest_memory_format()));
}

}  // namespace fpnops

namespace fpnops {

inline void check_upsample_add_backward(const at::Tensor& grad, int64_t top_h, int64_t top_w,
                                        std::optional<double> scale_h,
                                        std::optional<double> scale_w) {
  check_dense("upsample_add_backward_top", "grad", grad);
  TORCH_CHECK(grad.dim() == 4, "upsample_add_backward_top: grad must be 4-D (N, C, H, W), got ",
              grad.dim(), "-D with shape ", grad.sizes());
  TORCH_CHECK(is_kernel_dtype(grad.scalar_type()),
              "upsample_add_backward_top: grad must have a floating dtype (float16, bfloat16, "
              "float32, float64), got ", grad.scalar_type());
  TORCH_CHECK(top_h >= 0 && top_w >= 0, "upsample_add_backward_top: top_h and top_w must be >= 0, got ",
              top_h, " and ", top_w);
  check_scale("upsample_add_backward_top", "scale_h", scale_h, top_h, "grad", grad.size(2));
  check_scale("upsample_add_backward_top", "scale_w", scale_w, top_w, "grad", grad.size(3));
}

}  // namespace fpnops
