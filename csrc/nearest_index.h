// PyTorch's legacy "nearest" index rules, each exactly as one of eager's kernels computes it,
// shared by the CPU and CUDA kernels of upsample_add. Which rule a kernel follows is decided once
// per call on the host (cpu_forward_kind and the callers in csrc/cpu, csrc/cuda); the CPU kernels
// tabulate it per call, the CUDA kernels evaluate it per thread. The Python twin, used by the
// Triton kernels and the tests, is fpnops/ops/_nearest.py.
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>

#include "host_device.h"

namespace fpnops {

// The forward rules: src(i) = the top index output index i reads.
enum class NearestKind : int32_t {
  // ATen's nearest_idx (CPU "channels-last" forward kernel and every CPU backward):
  // out == in -> i; out == 2 * in -> i >> 1; else min(floor(float(i) * s), in - 1).
  kNearestIdx,
  // CPU "generic" forward kernel (HelperInterpNearest), float opmath (float32, float16,
  // bfloat16): min(floor(float(i) * s), in - 1), no shortcuts.
  kGenericFloat,
  // The same kernel for float64: s and the product in double, the product rounded to float by
  // floorf's parameter, then floored.
  kGenericDouble,
  // CUDA forward (UpSampleNearest2d.cu), every dtype: out == in -> i; else
  // min(floor(float(i) * s), in - 1).
  kCuda,
};

// ATen's compute_scales_value: 1 / scale_factor when one (> 0) is given, else in / out, in T.
template <typename T>
inline T nearest_scale(int64_t in_size, int64_t out_size, std::optional<double> sf) {
  return (sf.has_value() && *sf > 0.) ? static_cast<T>(1.0 / *sf)
                                      : static_cast<T>(in_size) / static_cast<T>(out_size);
}

// Eager's CPU upsample_nearest2d (upsample_nearest2d_kernel_impl) runs its channels-last kernel
// when top is channels_last-contiguous with more than 3 channels or the output is small
// (out_h + out_w <= 128), else its generic kernel; each has its own rule.
inline NearestKind cpu_forward_kind(bool top_channels_last, int64_t channels, int64_t out_h,
                                    int64_t out_w, bool is_double) {
  if ((top_channels_last && channels > 3) || out_h + out_w <= 128) return NearestKind::kNearestIdx;
  return is_double ? NearestKind::kGenericDouble : NearestKind::kGenericFloat;
}

struct NearestRule {
  int64_t in_size;
  int64_t out_size;
  NearestKind kind;
  float scale;         // nearest_scale<float>
  double scale_double; // nearest_scale<double>, for kGenericDouble

  // src(dst) under rule K, known at compile time (the CUDA kernels, which only use kCuda), in
  // the caller's index type I (the CUDA kernels' 32-bit math passes uint32_t: float(dst) is
  // the same number as from int64_t).
  template <NearestKind K, typename I>
  FPNOPS_HOST_DEVICE I src_as(I dst) const {
    if ((K == NearestKind::kNearestIdx || K == NearestKind::kCuda) && out_size == in_size) {
      return dst;
    }
    if (K == NearestKind::kNearestIdx && out_size == 2 * in_size) return dst >> 1;
    const float x = K == NearestKind::kGenericDouble
                        ? static_cast<float>(static_cast<double>(dst) * scale_double)
                        : static_cast<float>(dst) * scale;
    const int64_t s = static_cast<int64_t>(floorf(x));
    return static_cast<I>(s < in_size - 1 ? s : in_size - 1);
  }

  // src(dst) under this rule's kind (the CPU kernels tabulate it once per call).
  FPNOPS_HOST_DEVICE int64_t src(int64_t dst) const {
    switch (kind) {
      case NearestKind::kNearestIdx: return src_as<NearestKind::kNearestIdx, int64_t>(dst);
      case NearestKind::kGenericFloat: return src_as<NearestKind::kGenericFloat, int64_t>(dst);
      case NearestKind::kGenericDouble: return src_as<NearestKind::kGenericDouble, int64_t>(dst);
      default: return src_as<NearestKind::kCuda, int64_t>(dst);
    }
  }
};

inline NearestRule make_nearest_rule(int64_t in_size, int64_t out_size,
                                     std::optional<double> scale_factor, NearestKind kind) {
  return NearestRule{in_size, out_size, kind, nearest_scale<float>(in_size, out_size, scale_factor),
                     nearest_scale<double>(in_size, out_size, scale_factor)};
}

// Eager's CUDA backward (upsample_nearest2d_backward_out_frame): top cell i sums the gradient
// over output cells [start(i), start(i + 1)), start(i) = min(ceilf(float(i) * s), out), with
// s = float(scale_factor) if one (> 0) is given, else float(out) / float(in). Not the transpose
// of the forward rule; when all sizes are equal eager copies instead (the callers do too).
struct NearestWindowsCuda {
  int64_t out_size;
  float scale;

  template <typename I>
  FPNOPS_HOST_DEVICE I start(I i) const {
    const int64_t s = static_cast<int64_t>(ceilf(static_cast<float>(i) * scale));
    return static_cast<I>(s < out_size ? s : out_size);
  }
};

inline NearestWindowsCuda make_nearest_windows_cuda(int64_t in_size, int64_t out_size,
                                                    std::optional<double> scale_factor) {
  const float scale = (scale_factor.has_value() && *scale_factor > 0.)
                          ? static_cast<float>(*scale_factor)
                          : static_cast<float>(out_size) / static_cast<float>(in_size);
  return NearestWindowsCuda{out_size, scale};
}

}  // namespace fpnops
