// PyTorch's legacy "nearest" index rule, exactly as eager computes it on each device, shared by
// the CPU and CUDA kernels of upsample_add (forward and backward).
#pragma once
#include <cmath>
#include <cstdint>
#include <optional>

#ifdef __CUDACC__
#define FPNOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FPNOPS_HOST_DEVICE inline
#endif

namespace fpnops {

struct NearestRule {
  int64_t in_size;
  int64_t out_size;
  // (float)in / out, or (float)(1.0 / scale_factor) when a scale factor is given; the product
  // with the output index is taken in float32, as ATen does.
  float scale;
  // ATen's CPU kernel maps out == in and out == 2 * in by index arithmetic; its CUDA kernel
  // always uses the float formula. They differ only when a scale_factor disagrees with the
  // sizes (e.g. 2.05 giving out == 2 * in), and we match each device bit for bit.
  bool cpu_shortcuts;

  FPNOPS_HOST_DEVICE int64_t src(int64_t dst) const {
    if (cpu_shortcuts) {
      if (out_size == in_size) return dst;
      if (out_size == 2 * in_size) return dst >> 1;
    }
    const int64_t s = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
    return s < in_size - 1 ? s : in_size - 1;
  }

  // The first output index whose source is >= i. src() is non-decreasing, so input cell i is
  // read by the outputs [window_start(i), window_start(i + 1)) and by no others.
  FPNOPS_HOST_DEVICE int64_t window_start(int64_t i) const {
    int64_t lo = 0, hi = out_size;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (src(mid) < i) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
};

inline NearestRule make_nearest_rule(int64_t in_size, int64_t out_size,
                                     std::optional<double> scale_factor, bool cpu_shortcuts) {
  const float scale = (scale_factor.has_value() && *scale_factor > 0.)
                          ? static_cast<float>(1.0 / *scale_factor)
                          : static_cast<float>(in_size) / static_cast<float>(out_size);
  return NearestRule{in_size, out_size, scale, cpu_shortcuts};
}

}  // namespace fpnops
