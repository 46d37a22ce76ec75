// The CPU pieces of conv_bn_act compiled once per CPU capability (see upsample_add_kernel.h
// for the scheme): the epilogue out = relu(out + residual) in place, one pass, vectorised; and
// the weight's share of the bound that decides whether oneDNN's ReLU post-op may run.
// ReLU as eager's: x < 0 ? 0 : x, so NaN stays NaN, -inf gives 0 and -0.0 stays -0.0
// (at::vec::clamp_min is exactly that, in both the generic and the AVX2 copy).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace fpnops {
namespace CPU_CAPABILITY {
namespace {

template <typename scalar_t>
void epilogue_range(scalar_t* out, const scalar_t* res, int64_t n, bool relu) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using opmath_t = at::opmath_type<scalar_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      Vec y = Vec::loadu(out + i);
      if (res) y = y + Vec::loadu(res + i);
      if (relu) y = at::vec::clamp_min(y, Vec(scalar_t(0)));
      y.store(out + i);
    } else {
      using fVec = at::vec::Vectorized<float>;
      auto [y0, y1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(out + i));
      if (res) {
        auto [r0, r1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(res + i));
        y0 = y0 + r0;
        y1 = y1 + r1;
      }
      if (relu) {
        y0 = at::vec::clamp_min(y0, fVec(0.f));
        y1 = at::vec::clamp_min(y1, fVec(0.f));
      }
      at::vec::convert_from_float<scalar_t>(y0, y1).store(out + i);
    }
  }
  for (; i < n; ++i) {
    opmath_t y = static_cast<opmath_t>(out[i]) + (res ? static_cast<opmath_t>(res[i]) : opmath_t(0));
    out[i] = static_cast<scalar_t>(relu && y < opmath_t(0) ? opmath_t(0) : y);
  }
}

// NaN wins; otherwise the larger.
inline double nan_max_of(double a, double b) { return (a != a || a > b) ? a : b; }

// sum |w| over one output channel's n elements, NaN if any is NaN (inf if any is infinite).
template <typename scalar_t>
double abs_sum(const scalar_t* p, int64_t n) {
  using opmath_t = at::opmath_type<scalar_t>;  // float for the half types, else scalar_t
  using oVec = at::vec::Vectorized<opmath_t>;
  using Vec = at::vec::Vectorized<scalar_t>;
  oVec acc(opmath_t(0));
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    if constexpr (std::is_same_v<scalar_t, opmath_t>) {
      acc = acc + Vec::loadu(p + i).abs();
    } else {
      auto [a, b] = at::vec::convert_to_float<scalar_t>(Vec::loadu(p + i));
      acc = acc + a.abs() + b.abs();
    }
  }
  opmath_t lanes[oVec::size()];
  acc.store(lanes);
  double sum = 0.;
  for (int64_t k = 0; k < oVec::size(); ++k) sum += static_cast<double>(lanes[k]);
  for (; i < n; ++i) sum += std::abs(static_cast<double>(p[i]));
  return sum;
}

}  // namespace

// max over output channels co of sum |w[co]| (NaN-propagating), the weight's share of the bound
// max|x| * max_co sum|w[co]| on a convolution's output. w: non-overlapping and dense with each
// output channel's elements one block of w.numel() / w.size(0) (NCHW and channels_last are).
double max_channel_abs_sum_kernel(const at::Tensor& w) {
  double result = 0.;
  const int64_t rows = w.size(0), row = rows > 0 ? w.numel() / rows : 0;
  if (row == 0) return 0.;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "max_channel_abs_sum", [&] {
    const scalar_t* p = w.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 32768 / row);
    result = at::parallel_reduce(
        0, rows, grain, 0., [&](int64_t b, int64_t e, double acc) {
          for (int64_t r = b; r < e; ++r) acc = nan_max_of(acc, abs_sum(p + r * row, row));
          return acc;
        },
        nan_max_of);
  });
  return result;
}

// out: dense; residual: none, or dense in out's layout.
void conv_epilogue_kernel(at::Tensor& out, const std::optional<at::Tensor>& residual, bool relu) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "conv_bn_act_epilogue", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* r = residual.has_value() ? residual->const_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, out.numel(), 32768, [&](int64_t begin, int64_t end) {
      epilogue_range(o + begin, r ? r + begin : nullptr, end - begin, relu);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fpnops
