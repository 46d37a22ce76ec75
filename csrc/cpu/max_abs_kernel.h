// max |x| over a dense block of memory, compiled once per CPU capability (see
// upsample_add_kernel.h for the scheme). NaN-propagating: any NaN gives NaN, any infinity inf.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

namespace fpnops {
namespace CPU_CAPABILITY {
namespace {

// NaN wins; otherwise the larger.
inline double nan_max(double a, double b) { return (a != a || a > b) ? a : b; }

template <typename scalar_t>
double max_abs_range(const scalar_t* p, int64_t n) {
  using fVec = at::vec::Vectorized<float>;
  int64_t i = 0;
  double acc = 0.;
  if constexpr (std::is_same_v<scalar_t, double>) {
    using dVec = at::vec::Vectorized<double>;
    dVec m(0.);
    for (; i + dVec::size() <= n; i += dVec::size()) m = at::vec::maximum(m, dVec::loadu(p + i).abs());
    acc = at::vec::vec_reduce_all<double>([](dVec& a, dVec& b) { return at::vec::maximum(a, b); }, m);
  } else {
    fVec m(0.f);
    if constexpr (std::is_same_v<scalar_t, float>) {
      for (; i + fVec::size() <= n; i += fVec::size()) m = at::vec::maximum(m, fVec::loadu(p + i).abs());
    } else {  // half types: widen to float
      using Vec = at::vec::Vectorized<scalar_t>;
      for (; i + Vec::size() <= n; i += Vec::size()) {
        auto [a, b] = at::vec::convert_to_float<scalar_t>(Vec::loadu(p + i));
        m = at::vec::maximum(m, at::vec::maximum(a.abs(), b.abs()));
      }
    }
    acc = at::vec::vec_reduce_all<float>([](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, m);
  }
  for (; i < n; ++i) acc = nan_max(acc, std::abs(static_cast<double>(p[i])));
  return acc;
}

}  // namespace

// x: dense (non-overlapping, every stride >= 0), so its numel elements fill one block that
// starts at its data pointer, whatever the layout.
double max_abs_kernel(const at::Tensor& x) {
  double result = 0.;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "max_abs_cpu", [&] {
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    result = at::parallel_reduce(
        0, x.numel(), 32768, 0., [&](int64_t b, int64_t e, double acc) {
          return nan_max(acc, max_abs_range(p + b, e - b));
        },
        nan_max);
  });
  return result;
}

}  // namespace CPU_CAPABILITY
}  // namespace fpnops
