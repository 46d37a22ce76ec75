// upsample_add on the CPU: the op (checks, output, dispatch to the best CPU capability).
// The kernels: upsample_add_kernel.h (one pass, parallel over rows, vectorised adds), compiled
// generic here and for AVX2 in kernels_avx2.cpp.
#include <torch/library.h>

#include <sys/mman.h>

#include <cstdint>

#include "../upsample_add.h"
#include "cpu_dispatch.h"

#define CPU_CAPABILITY DEFAULT
#include "upsample_add_kernel.h"
#undef CPU_CAPABILITY

namespace fpnops {

#if FPNOPS_HAVE_AVX2
namespace AVX2 {  // kernels_avx2.cpp
void upsample_add_kernel(at::Tensor&, const at::Tensor&, const at::Tensor&, const NearestRule&,
                         const NearestRule&);
void upsample_add_backward_top_kernel(at::Tensor&, const at::Tensor&, const NearestRule&,
                                      const NearestRule&);
}  // namespace AVX2
#endif

namespace {

// A fresh output of many MB costs more in page faults (4 KB each, zeroed by the kernel) than in
// the kernel's own memory traffic: on the 2-core dev machine 82 MB take ~26 ms to fault in and
// ~7 ms to write. Asking for transparent huge pages (where the system allows them on request,
// the common "madvise" setting) cuts the faults 512-fold. Advice only: failure changes nothing.
void advise_huge_pages(const at::Tensor& t) {
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.numel() * t.element_size();
  if (bytes < 4 * kHuge) return;
  const auto p = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  const uintptr_t begin = (p + kHuge - 1) & ~(kHuge - 1), end = (p + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

at::Tensor upsample_add_cpu(const at::Tensor& top, const at::Tensor& lateral,
                            std::optional<double> scale_h, std::optional<double> scale_w) {
  check_upsample_add(top, lateral, scale_h, scale_w);
  TORCH_CHECK(lateral.device().is_cpu(), "upsample_add (CPU kernel): expected CPU tensors, got ",
              lateral.device());
  at::Tensor out = empty_like_lateral(lateral);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const auto rh = make_nearest_rule(top.size(2), lateral.size(2), scale_h, /*cpu_shortcuts=*/true);
  const auto rw = make_nearest_rule(top.size(3), lateral.size(3), scale_w, /*cpu_shortcuts=*/true);
  FPNOPS_CPU_DISPATCH(upsample_add_kernel, out, top, lateral, rh, rw);
  return out;
}

at::Tensor upsample_add_backward_top_cpu(const at::Tensor& grad, int64_t top_h, int64_t top_w,
                                         std::optional<double> scale_h,
                                         std::optional<double> scale_w) {
  check_upsample_add_backward(grad, top_h, top_w, scale_h, scale_w);
  at::Tensor gtop = at::empty({grad.size(0), grad.size(1), top_h, top_w},
                              grad.options().memory_format(grad.suggest_memory_format()));
  if (gtop.numel() == 0) return gtop;
  if (grad.size(2) == 0 || grad.size(3) == 0) return gtop.zero_();
  advise_huge_pages(gtop);
  const auto rh = make_nearest_rule(top_h, grad.size(2), scale_h, /*cpu_shortcuts=*/true);
  const auto rw = make_nearest_rule(top_w, grad.size(3), scale_w, /*cpu_shortcuts=*/true);
  FPNOPS_CPU_DISPATCH(upsample_add_backward_top_kernel, gtop, grad, rh, rw);
  return gtop;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("upsample_add_backward_top", &upsample_add_backward_top_cpu);
}

}  // namespace fpnops
