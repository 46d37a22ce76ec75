// upsample_add on CUDA: the launchers. The kernels and their launch plans (16-byte Packs
// where the layout allows, 32-bit index math where every offset fits) are in
// upsample_add_kernel.cuh, shared with the CPU emulation that tests them without a GPU.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../upsample_add.h"
#include "upsample_add_kernel.cuh"

namespace fpnops {
namespace {

at::Tensor upsample_add_cuda(const at::Tensor& top, const at::Tensor& lateral,
                             std::optional<double> scale_h, std::optional<double> scale_w) {
  check_upsample_add(top, lateral, scale_h, scale_w);
  TORCH_CHECK(lateral.is_cuda(), "upsample_add (CUDA kernel): expected CUDA tensors, got ",
              lateral.device());
  const c10::cuda::CUDAGuard guard(lateral.device());
  at::Tensor out = empty_like_lateral(lateral);
  upsample_add_launch(out, top, lateral, scale_h, scale_w, GpuLaunch{}, gpu_launch_limits());
  return out;
}

at::Tensor upsample_add_backward_top_cuda(const at::Tensor& grad, int64_t top_h, int64_t top_w,
                                          std::optional<double> scale_h,
                                          std::optional<double> scale_w) {
  check_upsample_add_backward(grad, top_h, top_w, scale_h, scale_w);
  TORCH_CHECK(grad.is_cuda(), "upsample_add_backward_top (CUDA kernel): expected a CUDA tensor, got ",
              grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  at::Tensor gtop = backward_top_output(grad, top_h, top_w);
  upsample_add_backward_top_launch(gtop, grad, scale_h, scale_w, GpuLaunch{},
                                   gpu_launch_limits());
  return gtop;
}

// Tests only: lowers the GPU launchers' limits (-1: the real launch's), as the emulation's
// max_blocks and max_index32 do, so small tensors reach every variant on the GPU too.
void set_cuda_launch_limits(int64_t max_blocks, int64_t max_index32) {
  gpu_launch_limits() = lowered_limits(max_blocks, max_index32);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fpnops, m) {
  m.def("_set_cuda_launch_limits(int max_blocks, int max_index32) -> ()", &set_cuda_launch_limits);
}

TORCH_LIBRARY_IMPL(fpnops, CUDA, m) {
  m.impl("upsample_add", &upsample_add_cuda);
  m.impl("upsample_add_backward_top", &upsample_add_backward_top_cuda);
}

}  // namespace fpnops
