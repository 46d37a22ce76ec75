// upsample_add on the CPU: the op (checks, output, dispatch to the best CPU capability).
// The kernels: upsample_add_kernel.h (one pass, parallel over rows, vectorised adds), compiled
// generic here and for AVX2 in kernels_avx2.cpp.
#include <ATen/ops/add.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/upsample_nearest2d.h>
#include <ATen/ops/upsample_nearest2d_backward.h>
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
bool upsample_add_kernel(at::Tensor&, const at::Tensor&, const at::Tensor&, const NearestRule&,
                         const NearestRule&);
bool upsample_add_backward_top_kernel(at::Tensor&, const at::Tensor&, const NearestRule&,
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

// Results that are NaN: which NaN eager writes depends on which of its loops wrote it (a
// bfloat16 NaN is 0xffff from at::vec's conversion but 0x7fc0 from the scalar one; of two NaN
// operands the vector and the scalar adds keep different payloads), and eager's loops are cut by
// TensorIterator and by the thread count. Rather than model that, an output with a NaN in it is
// recomputed by eager's own kernels, the same calls eager makes. The kernels only note whether
// they saw a NaN (a compare and an OR per vector), so NaN-free calls pay nothing for this.

at::Tensor upsample_add_cpu(const at::Tensor& top, const at::Tensor& lateral,
                            std::optional<double> scale_h, std::optional<double> scale_w) {
  check_upsample_add(top, lateral, scale_h, scale_w);
  TORCH_CHECK(lateral.device().is_cpu(), "upsample_add (CPU kernel): expected CPU tensors, got ",
              lateral.device());
  at::Tensor out = empty_like_lateral(lateral);
  if (out.numel() == 0) return out;
  advise_huge_pages(out);
  const int64_t H = lateral.size(2), W = lateral.size(3);
  const NearestKind kind = cpu_forward_kind(top.is_contiguous(at::MemoryFormat::ChannelsLast),
                                            top.size(1), H, W, top.scalar_type() == at::kDouble);
  const auto rh = make_nearest_rule(top.size(2), H, scale_h, kind);
  const auto rw = make_nearest_rule(top.size(3), W, scale_w, kind);
  if (FPNOPS_CPU_DISPATCH(upsample_add_kernel, out, top, lateral, rh, rw)) {
    out.copy_(at::add(lateral, at::upsample_nearest2d(top, {H, W}, scale_h, scale_w)));
  }
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
  const int64_t H = grad.size(2), W = grad.size(3);
  const auto rh = make_nearest_rule(top_h, H, scale_h, NearestKind::kNearestIdx);
  const auto rw = make_nearest_rule(top_w, W, scale_w, NearestKind::kNearestIdx);
  if (FPNOPS_CPU_DISPATCH(upsample_add_backward_top_kernel, gtop, grad, rh, rw)) {
    gtop.copy_(at::upsample_nearest2d_backward(grad, {H, W}, gtop.sizes(), scale_h, scale_w));
  }
  return gtop;
}

at::Tensor nearest_rule_table(int64_t in_size, int64_t out_size, std::optional<double> scale_factor,
                              c10::string_view rule) {
  TORCH_CHECK(in_size > 0 && out_size > 0, "_nearest_rule_table: in_size and out_size must be > 0, got ",
              in_size, " and ", out_size);
  if (rule == "cuda_backward") {
    const auto windows = make_nearest_windows_cuda(in_size, out_size, scale_factor);
    at::Tensor t = at::empty({in_size + 1}, at::kLong);
    for (int64_t i = 0; i <= in_size; ++i) t.data_ptr<int64_t>()[i] = windows.start(i);
    return t;
  }
  NearestKind kind;
  if (rule == "nearest_idx") kind = NearestKind::kNearestIdx;
  else if (rule == "generic_float") kind = NearestKind::kGenericFloat;
  else if (rule == "generic_double") kind = NearestKind::kGenericDouble;
  else if (rule == "cuda") kind = NearestKind::kCuda;
  else TORCH_CHECK_VALUE(false, "_nearest_rule_table: unknown rule '", rule, "'");
  const auto r = make_nearest_rule(in_size, out_size, scale_factor, kind);
  at::Tensor t = at::empty({out_size}, at::kLong);
  for (int64_t i = 0; i < out_size; ++i) t.data_ptr<int64_t>()[i] = r.src(i);
  return t;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) {
  m.impl("upsample_add", &upsample_add_cpu);
  m.impl("upsample_add_backward_top", &upsample_add_backward_top_cpu);
}

// No tensor arguments: registered for every dispatch key.
TORCH_LIBRARY_IMPL(fpnops, CompositeExplicitAutograd, m) {
  m.impl("_nearest_rule_table", &nearest_rule_table);
}

}  // namespace fpnops
