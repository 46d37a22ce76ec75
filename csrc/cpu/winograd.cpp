// conv3x3_winograd on the CPU: a 3x3 convolution (stride 1, padding 1, no dilation, no groups)
// as Winograd's F(4x4, 3x3): 36 multiplications per 16 outputs and input channel where the
// direct convolution takes 144 (at::bmm's: 36 matrix products (tiles x C) @ (C x K)), for two
// transforms that read and write each value a few times (winograd_kernel.h). Used by the fused
// modules for CPU float32 inference where it is faster than oneDNN's direct convolution, which
// on CPUs without AVX-512 has no Winograd of its own. It rounds differently from the direct
// convolution (the transformed values are sums of up to 36 terms), within the fused modules'
// float32 tolerance.
// No NaN check: the fused modules run it only on inputs with a proven finite bound (see
// fpnops/ops/winograd.py).
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "cpu_dispatch.h"

#define CPU_CAPABILITY DEFAULT
#include "winograd_kernel.h"
#undef CPU_CAPABILITY

namespace fpnops {

#if FPNOPS_HAVE_AVX2
namespace AVX2 {  // kernels_avx2.cpp
void winograd_input_kernel(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, float*);
void winograd_output_kernel(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                            const float*, const float*, bool, float*);
}  // namespace AVX2
#endif

namespace {

at::Tensor conv3x3_winograd_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& residual, bool relu) {
  constexpr const char* who = "conv3x3_winograd";
  TORCH_CHECK(x.layout() == at::kStrided && x.device().is_cpu() && x.scalar_type() == at::kFloat &&
                  x.dim() == 4,
              who, ": x must be a 4-D strided float32 CPU tensor, got ", x.dim(), "-D ",
              x.scalar_type(), " ", x.layout(), " on ", x.device());
  TORCH_CHECK(weight.layout() == at::kStrided && weight.device().is_cpu() && weight.dim() == 3 &&
                  weight.scalar_type() == at::kFloat && weight.size(0) == 36,
              who, ": weight must be a (36, C, K) float32 CPU tensor (winograd_weight's), got ",
              weight.sizes(), " ", weight.scalar_type(), " ", weight.layout(), " on ",
              weight.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weight.size(2);
  TORCH_CHECK(weight.size(1) == C, who, ": x has ", C, " channels, weight expects ",
              weight.size(1));
  if (bias.has_value()) {
    TORCH_CHECK(bias->layout() == at::kStrided && bias->device().is_cpu() &&
                    bias->scalar_type() == at::kFloat && bias->dim() == 1 && bias->size(0) == K,
                who, ": bias must be a strided float32 CPU vector of ", K, " values, got ",
                bias->sizes(), " ", bias->scalar_type(), " ", bias->layout(), " on ",
                bias->device());
  }
  const auto cl = at::MemoryFormat::ChannelsLast;
  at::Tensor out = at::empty({N, K, H, W}, x.options().memory_format(cl));
  at::Tensor res;
  if (residual.has_value()) {
    TORCH_CHECK(residual->layout() == at::kStrided && residual->device().is_cpu() &&
                    residual->scalar_type() == at::kFloat && residual->sizes() == out.sizes(),
                who, ": residual must be a strided float32 CPU tensor of shape ", out.sizes(),
                ", got ", residual->sizes(), " ", residual->scalar_type(), " ",
                residual->layout(), " on ", residual->device());
    res = residual->contiguous(cl);
  }
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous(cl), wc = weight.contiguous();
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  // The tiles in chunks whose transformed values (U and M, 36 * chunk * (C + K) floats) stay
  // near 4 MiB: they are then still in cache when the product and the output transform read
  // them, and come from memory malloc keeps (whole-map buffers of tens of MiB were mapped
  // afresh at every call: page faults cost more than the convolution). At least 128 tiles, so
  // that each product reads the (36, C, K) weight for enough rows.
  const int64_t T = N * ((H + 3) / 4) * ((W + 3) / 4);
  const int64_t chunk = std::min(T, std::max<int64_t>(128, (int64_t{4} << 20) / (144 * (C + K))));
  for (int64_t first = 0; first < T; first += chunk) {
    const int64_t count = std::min(chunk, T - first);
    at::Tensor u = at::empty({36, count, C}, x.options());
    FPNOPS_CPU_DISPATCH(winograd_input_kernel, xc.const_data_ptr<float>(), H, W, C, first, count,
                        u.mutable_data_ptr<float>());
    const at::Tensor m = at::bmm(u, wc);  // (36, count, K)
    FPNOPS_CPU_DISPATCH(winograd_output_kernel, m.const_data_ptr<float>(), H, W, K, first, count,
                        b.defined() ? b.const_data_ptr<float>() : nullptr,
                        res.defined() ? res.const_data_ptr<float>() : nullptr, relu,
                        out.mutable_data_ptr<float>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CPU, m) { m.impl("conv3x3_winograd", &conv3x3_winograd_cpu); }

// Only so that a sparse or mkldnn argument gets the checks' message rather than the dispatcher's.
TORCH_LIBRARY_IMPL(fpnops, SparseCPU, m) { m.impl("conv3x3_winograd", &conv3x3_winograd_cpu); }
TORCH_LIBRARY_IMPL(fpnops, MkldnnCPU, m) { m.impl("conv3x3_winograd", &conv3x3_winograd_cpu); }

}  // namespace fpnops
