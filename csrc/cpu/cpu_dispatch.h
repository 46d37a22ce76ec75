// Run-time choice between the generic and the AVX2 copy of a CPU kernel (kernels_avx2.cpp).
#pragma once
#include <ATen/Version.h>

#include <string>

namespace fpnops {

// ATen's own choice of capability ("AVX2", "AVX512", "DEFAULT", ...), read once; honours
// ATEN_CPU_CAPABILITY=default, which the tests use to cover both copies.
inline bool cpu_has_avx2() {
  static const bool yes = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX2" || cap == "AVX512";
  }();
  return yes;
}

}  // namespace fpnops

#if FPNOPS_HAVE_AVX2
#define FPNOPS_CPU_DISPATCH(fn, ...) \
  (::fpnops::cpu_has_avx2() ? AVX2::fn(__VA_ARGS__) : DEFAULT::fn(__VA_ARGS__))
#else
#define FPNOPS_CPU_DISPATCH(fn, ...) DEFAULT::fn(__VA_ARGS__)
#endif
