// max_abs on the CPU: max |x|, NaN if any element is NaN (inf if any is infinite, 0 if empty).
// The cheap test the fused convolutions run before a oneDNN ReLU post-op, which maps NaN to 0:
// a finite bound on the inputs proves no NaN can reach that ReLU. One read of x, vectorised.
#include <torch/library.h>

#include "cpu_dispatch.h"
#include "max_abs.h"

#define CPU_CAPABILITY DEFAULT
#include "max_abs_kernel.h"
#undef CPU_CAPABILITY

namespace fpnops {

#if FPNOPS_HAVE_AVX2
namespace AVX2 {  // kernels_avx2.cpp
double max_abs_kernel(const at::Tensor&);
}  // namespace AVX2
#endif

double max_abs_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided,
              "max_abs: expected a strided CPU tensor, got ", x.layout(), " on ", x.device());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "max_abs: expected a floating dtype, got ",
              x.scalar_type());
  if (x.numel() == 0) return 0.;
  const at::Tensor dense = x.is_non_overlapping_and_dense() ? x : x.contiguous();
  return FPNOPS_CPU_DISPATCH(max_abs_kernel, dense);
}

TORCH_LIBRARY_IMPL(fpnops, CPU, m) { m.impl("max_abs", &max_abs_cpu); }

// Only so that a sparse or mkldnn x gets the check's message rather than the dispatcher's.
TORCH_LIBRARY_IMPL(fpnops, SparseCPU, m) { m.impl("max_abs", &max_abs_cpu); }
TORCH_LIBRARY_IMPL(fpnops, MkldnnCPU, m) { m.impl("max_abs", &max_abs_cpu); }

}  // namespace fpnops
