// Test-only CPU build of fpnops' CUDA kernels (tests/test_cuda_emulation.py loads it): the
// kernel bodies and launch plans of csrc/cuda/*_kernel.cuh, compiled as host code, each run
// over every thread of every block of the grid the GPU launch would use. Ops (fpnops_emu::*)
// take tensors and return the result with the plan that ran; with run=false they only plan
// (any device: the GPU tests ask which variant fpnops' CUDA kernels take for their inputs).
// conv_bn_act runs the CUDA launcher's host code too (layout choice, convolution, epilogue).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "../../csrc/cuda/conv_epilogue_kernel.cuh"
#include "../../csrc/cuda/upsample_add_kernel.cuh"
#include "../../csrc/upsample_add.h"

namespace fpnops {
namespace {

// Runs kernel K's thread body for every thread of every block of the plan's grid, one thread
// after another. Exact for these kernels: their threads share nothing (no shared memory, no
// barriers, no atomics; each output element is written by one thread), so any order of
// threads gives the GPU's result. A kernel that uses shared memory or __syncthreads() must
// instead be emulated block by block, with one shared-memory buffer per block and the block's
// threads interleaved at each barrier (every thread runs up to the barrier before any runs past
// it: the body split at its barriers, or each thread a coroutine).
struct Emulate {
  template <typename K>
  void operator()(K, const LaunchPlan& plan, const typename K::Args& args) const {
    const Dim3 grid{static_cast<uint32_t>(plan.blocks), 1, 1};
    const Dim3 block{kThreads, 1, 1};
    for (uint32_t bz = 0; bz < grid.z; ++bz)
      for (uint32_t by = 0; by < grid.y; ++by)
        for (uint32_t bx = 0; bx < grid.x; ++bx)
          for (uint32_t tz = 0; tz < block.z; ++tz)
            for (uint32_t ty = 0; ty < block.y; ++ty)
              for (uint32_t tx = 0; tx < block.x; ++tx)
                K::run(args, ThreadPos{{bx, by, bz}, {tx, ty, tz}, block, grid});
  }
};

struct PlanOnly {
  template <typename K>
  void operator()(K, const LaunchPlan&, const typename K::Args&) const {}
};

// An output with `like`'s sizes and strides inside a buffer whose other bytes (kGuard elements
// on either side) hold a pattern: a write out of bounds changes it.
constexpr int64_t kGuard = 64;  // elements: a multiple of 16 bytes for every dtype
constexpr uint8_t kPattern = 0x5a;

struct Guarded {
  at::Tensor buffer, view;
  int64_t begin, end;  // the view's bytes in the buffer
};

Guarded guarded_like(const at::Tensor& like) {
  const int64_t span = like.numel() == 0 ? 0 : max_offset(like) + 1;
  at::Tensor buffer = at::empty({span + 2 * kGuard}, like.options());
  buffer.view(at::kByte).fill_(kPattern);
  at::Tensor view = buffer.as_strided(like.sizes(), like.strides(), kGuard);
  return {buffer, view, kGuard * buffer.element_size(), (kGuard + span) * buffer.element_size()};
}

void check_guards(const Guarded& g) {
  const at::Tensor bytes = g.buffer.view(at::kByte);
  const bool ok = bytes.slice(0, 0, g.begin).eq(kPattern).all().item<bool>() &&
                  bytes.slice(0, g.end).eq(kPattern).all().item<bool>();
  TORCH_CHECK(ok, "emulated kernel wrote outside its output");
}

std::vector<int64_t> plan_list(const LaunchPlan& p) {
  return {p.vec, p.channels_last, p.operand_packed, p.index32, p.work, p.blocks};
}

using Result = std::tuple<at::Tensor, std::vector<int64_t>>;

// As upsample_add_cuda (csrc/cuda/upsample_add.cu).
Result upsample_add(const at::Tensor& top, const at::Tensor& lateral, std::optional<double> scale_h,
                    std::optional<double> scale_w, bool run, int64_t max_blocks, int64_t max_index32) {
  check_upsample_add(top, lateral, scale_h, scale_w);
  const LaunchLimits limits = lowered_limits(max_blocks, max_index32);
  at::Tensor out = empty_like_lateral(lateral);
  if (!run) {
    const auto plan = upsample_add_launch(out, top, lateral, scale_h, scale_w, PlanOnly{}, limits);
    return {out, plan_list(plan)};
  }
  TORCH_CHECK(lateral.is_cpu(), "fpnops_emu.upsample_add: run=True needs CPU tensors");
  Guarded g = guarded_like(out);
  const auto plan = upsample_add_launch(g.view, top, lateral, scale_h, scale_w, Emulate{}, limits);
  check_guards(g);
  return {g.view, plan_list(plan)};
}

// As upsample_add_backward_top_cuda.
Result upsample_add_backward_top(const at::Tensor& grad, int64_t top_h, int64_t top_w,
                                 std::optional<double> scale_h, std::optional<double> scale_w,
                                 bool run, int64_t max_blocks, int64_t max_index32) {
  check_upsample_add_backward(grad, top_h, top_w, scale_h, scale_w);
  const LaunchLimits limits = lowered_limits(max_blocks, max_index32);
  at::Tensor gtop = backward_top_output(grad, top_h, top_w);
  if (!run) {
    const auto plan = upsample_add_backward_top_launch(gtop, grad, scale_h, scale_w, PlanOnly{}, limits);
    return {gtop, plan_list(plan)};
  }
  TORCH_CHECK(grad.is_cpu(), "fpnops_emu.upsample_add_backward_top: run=True needs CPU tensors");
  Guarded g = guarded_like(gtop);
  const auto plan = upsample_add_backward_top_launch(g.view, grad, scale_h, scale_w, Emulate{}, limits);
  check_guards(g);
  return {g.view, plan_list(plan)};
}

// conv_bn_act_cuda's epilogue on y (standing for the convolution's output: dense), on a fresh
// copy of y as the convolution's output is fresh.
Result conv_epilogue(const at::Tensor& y, const std::optional<at::Tensor>& bias,
                     const std::optional<at::Tensor>& residual, bool relu, bool run,
                     int64_t max_blocks, int64_t max_index32) {
  TORCH_CHECK(y.dim() == 4, "fpnops_emu.conv_epilogue: y must be 4-D, got ", y.sizes());
  const LaunchLimits limits = lowered_limits(max_blocks, max_index32);
  at::Tensor out = at::empty(y.sizes(), y.options().memory_format(y.suggest_memory_format()));
  if (!run) {
    const auto plan = conv_epilogue_launch(out, bias, residual, relu, PlanOnly{}, limits);
    return {out, plan_list(plan)};
  }
  TORCH_CHECK(y.is_cpu(), "fpnops_emu.conv_epilogue: run=True needs CPU tensors");
  Guarded g = guarded_like(out);
  g.view.copy_(y);
  const auto plan = conv_epilogue_launch(g.view, bias, residual, relu, Emulate{}, limits);
  check_guards(g);
  return {g.view, plan_list(plan)};
}

// conv_bn_act_cuda's whole body (conv_bn_act_launch) on CPU tensors: ATen's CPU convolution
// standing in for cuDNN, the output in eager's CUDA layout, the epilogue emulated in place.
Result conv_bn_act(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                   int64_t groups, const std::optional<at::Tensor>& residual, bool relu,
                   int64_t max_blocks, int64_t max_index32) {
  TORCH_CHECK(x.is_cpu(), "fpnops_emu.conv_bn_act: needs CPU tensors");
  const auto [out, plan] = conv_bn_act_launch(x, weight, bias, stride, padding, dilation, groups,
                                              residual, relu, Emulate{},
                                              lowered_limits(max_blocks, max_index32));
  return {out, plan_list(plan)};
}

// The layout conv_bn_act's CUDA kernel returns for (x, weight): conv_output_format_cuda.
std::string conv_output_format(const at::Tensor& x, const at::Tensor& weight) {
  switch (conv_output_format_cuda(x, weight)) {
    case at::MemoryFormat::Contiguous: return "contiguous_format";
    case at::MemoryFormat::ChannelsLast: return "channels_last";
    case at::MemoryFormat::ChannelsLast3d: return "channels_last_3d";
    default: return "preserve_format";
  }
}

// (n // d, n % d) by the kernels' Divider (32-bit: n <= INT32_MAX; 64-bit: n < 2^63).
at::Tensor divide(const at::Tensor& n, int64_t d, bool wide) {
  TORCH_CHECK(n.scalar_type() == at::kLong && n.is_contiguous() && n.is_cpu(),
              "fpnops_emu.divide: n must be a contiguous CPU int64 tensor");
  at::Tensor out = at::empty({2, n.numel()}, n.options());
  const int64_t* in = n.const_data_ptr<int64_t>();
  int64_t* q = out.mutable_data_ptr<int64_t>();
  int64_t* r = q + n.numel();
  if (wide) {
    const Divider<uint64_t> div(static_cast<uint64_t>(d));
    for (int64_t i = 0; i < n.numel(); ++i) {
      const auto qr = div.divmod(static_cast<uint64_t>(in[i]));
      q[i] = static_cast<int64_t>(qr.div);
      r[i] = static_cast<int64_t>(qr.mod);
    }
  } else {
    const Divider<uint32_t> div(static_cast<uint32_t>(d));
    for (int64_t i = 0; i < n.numel(); ++i) {
      const auto qr = div.divmod(static_cast<uint32_t>(in[i]));
      q[i] = qr.div;
      r[i] = qr.mod;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(fpnops_emu, m) {
  // max_blocks, max_index32: -1 for the real launch's limits (launch.cuh: lowered_limits).
  m.def("upsample_add(Tensor top, Tensor lateral, float? scale_h, float? scale_w, bool run, "
        "int max_blocks, int max_index32) -> (Tensor, int[])");
  m.def("upsample_add_backward_top(Tensor grad, int top_h, int top_w, float? scale_h, "
        "float? scale_w, bool run, int max_blocks, int max_index32) -> (Tensor, int[])");
  m.def("conv_epilogue(Tensor y, Tensor? bias, Tensor? residual, bool relu, bool run, "
        "int max_blocks, int max_index32) -> (Tensor, int[])");
  m.def("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
        "int[] dilation, int groups, Tensor? residual, bool relu, int max_blocks, "
        "int max_index32) -> (Tensor, int[])");
  m.def("conv_output_format(Tensor x, Tensor weight) -> str");
  m.def("divide(Tensor n, int d, bool wide) -> Tensor");
  m.impl("upsample_add", c10::DispatchKey::CompositeExplicitAutograd, &upsample_add);
  m.impl("upsample_add_backward_top", c10::DispatchKey::CompositeExplicitAutograd,
         &upsample_add_backward_top);
  m.impl("conv_epilogue", c10::DispatchKey::CompositeExplicitAutograd, &conv_epilogue);
  m.impl("conv_bn_act", c10::DispatchKey::CompositeExplicitAutograd, &conv_bn_act);
  m.impl("conv_output_format", c10::DispatchKey::CompositeExplicitAutograd, &conv_output_format);
  m.impl("divide", c10::DispatchKey::CompositeExplicitAutograd, &divide);
}

}  // namespace fpnops
