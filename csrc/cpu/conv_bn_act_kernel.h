// The CPU epilogue of conv_bn_act, compiled once per CPU capability (see upsample_add_kernel.h
// for the scheme): out = relu(out + residual) in place, one pass, vectorised.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

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
      if (relu) y = at::vec::maximum(y, Vec(scalar_t(0)));
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
        y0 = at::vec::maximum(y0, fVec(0.f));
        y1 = at::vec::maximum(y1, fVec(0.f));
      }
      at::vec::convert_from_float<scalar_t>(y0, y1).store(out + i);
    }
  }
  for (; i < n; ++i) {
    opmath_t y = static_cast<opmath_t>(out[i]) + (res ? static_cast<opmath_t>(res[i]) : opmath_t(0));
    out[i] = static_cast<scalar_t>(relu ? (y > 0 || y != y ? y : opmath_t(0)) : y);
  }
}

}  // namespace

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
