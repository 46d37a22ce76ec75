// conv_bn_act's CUDA epilogue, y = relu(y + bias[c] + residual) in place, and its launch plan,
// as host-and-device code: csrc/cuda/conv_bn_act.cu launches it after cuDNN's convolution, and
// tests/cuda_emulation runs the same code on the CPU over the same grid (launch.cuh).
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/convolution.h>

#include <optional>
#include <utility>

#include "../conv_bn_act.h"
#include "launch.cuh"
#include "vector_access.cuh"

namespace fpnops {

template <typename scalar_t, typename index_t>
struct ConvEpilogueArgs {
  scalar_t* __restrict__ y;
  const scalar_t* __restrict__ bias;  // nullptr: none; else dense and 16-byte aligned
  const scalar_t* __restrict__ res;   // nullptr: none; else y's layout
  Divider<index_t> inner;             // NCHW: HW (a channel plane); NHWC: C / V (items a pixel)
  Divider<index_t> channels;          // C (NCHW)
  index_t num_items;
  bool relu;
};

// V consecutive elements an item, in y's memory order (y flat: NCHW packs may cross channel
// planes): NHWC (C % V == 0), V consecutive channels, the bias one Pack; NCHW, the channel of
// the item's first element, the same for all V (one bias load) unless the item crosses into
// the next plane (HW % V != 0, or HW < V), where each element takes its own. The sum in
// opmath, in eager's order (y + bias, + residual), rounded once; relu as eager's (v < 0 ? 0 :
// v: NaN stays NaN).
template <typename scalar_t, int V, bool CL, typename index_t>
struct ConvEpilogueKernel {
  using Args = ConvEpilogueArgs<scalar_t, index_t>;

  static FPNOPS_HOST_DEVICE void run(const Args& a, const ThreadPos& pos) {
    using opmath_t = at::opmath_type<scalar_t>;
    using P = Pack<scalar_t, V>;
    for (index_t p = pos.first<index_t>(); p < a.num_items; p += pos.stride<index_t>()) {
      P o = load_pack<V>(a.y + p * V);
      P r;
      if (a.res) r = load_pack<V>(a.res + p * V);
      P b;
      if (a.bias) {
        if (CL) {
          b = load_pack<V>(a.bias + a.inner.mod(p) * V);
        } else {
          const auto plane = a.inner.divmod(p * V);  // (n * C + c, offset in the plane)
          index_t c = a.channels.mod(plane.div);
          if (V == 1 || plane.mod + V <= a.inner.divisor) {
            const scalar_t bc = a.bias[c];
#pragma unroll
            for (int k = 0; k < V; ++k) b.v[k] = bc;
          } else {
            index_t off = plane.mod;
#pragma unroll
            for (int k = 0; k < V; ++k) {
              b.v[k] = a.bias[c];
              if (++off == a.inner.divisor) {  // the next plane: channel c + 1 (0: next sample)
                off = 0;
                c = c + 1 == a.channels.divisor ? 0 : c + 1;
              }
            }
          }
        }
      }
#pragma unroll
      for (int k = 0; k < V; ++k) {
        opmath_t v = static_cast<opmath_t>(o.v[k]);
        if (a.bias) v += static_cast<opmath_t>(b.v[k]);
        if (a.res) v += static_cast<opmath_t>(r.v[k]);
        if (a.relu && v < opmath_t(0)) v = opmath_t(0);
        o.v[k] = static_cast<scalar_t>(v);
      }
      store_pack<V>(a.y + p * V, o);
    }
  }
};

// y dense (NCHW, else channels_last); bias and res as conv_epilogue_launch passes them.
inline LaunchPlan plan_conv_epilogue(const at::Tensor& y, const at::Tensor* res, int V,
                                     const LaunchLimits& limits) {
  LaunchPlan plan;
  plan.channels_last = !y.is_contiguous();
  // NHWC: an item is V channels of one pixel; NCHW: any V elements of the flat tensor.
  const int64_t whole = plan.channels_last ? y.size(1) : y.numel();
  const bool packed = whole % V == 0 && aligned16(y.const_data_ptr()) &&
                      (res == nullptr || aligned16(res->const_data_ptr()));
  plan.vec = packed ? V : 1;
  plan.index32 = max_offset(y) <= limits.max_index32;  // res: y's layout; bias: < C
  plan.work = y.numel() / plan.vec;
  plan.blocks = num_blocks(plan.work, limits);
  return plan;
}

// y = relu(y + bias[c] + residual) in place (each part optional). Returns the plan it ran.
template <typename Launch>
LaunchPlan conv_epilogue_launch(at::Tensor& y, const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& residual, bool relu,
                                Launch&& launch, const LaunchLimits& limits = {}) {
  LaunchPlan plan;
  if (y.numel() == 0 || !(bias.has_value() || residual.has_value() || relu)) return plan;
  const auto fmt = y.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  TORCH_CHECK(y.is_contiguous(fmt), "conv_bn_act epilogue: y must be dense, got strides ", y.strides());
  // The kernel reads bias[c] (NHWC: as Packs): dense and aligned; a copy only for a bias view
  // that is not.
  std::optional<at::Tensor> b;
  if (bias.has_value()) {
    b = bias->contiguous();
    if (!aligned16(b->const_data_ptr())) b = b->clone();
  }
  // The residual is read at y's offsets: a copy where its layout is not y's.
  std::optional<at::Tensor> r;
  if (residual.has_value()) r = residual->contiguous(fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "conv_bn_act_epilogue", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    plan = plan_conv_epilogue(y, r.has_value() ? &*r : nullptr, V, limits);
    with_variant<V>(plan, [&](auto vec, auto cl, auto index) {
      using index_t = decltype(index);
      using K = ConvEpilogueKernel<scalar_t, decltype(vec)::value, decltype(cl)::value, index_t>;
      const int64_t C = y.size(1), HW = y.size(2) * y.size(3);
      typename K::Args a{y.mutable_data_ptr<scalar_t>(),
                         b.has_value() ? b->const_data_ptr<scalar_t>() : nullptr,
                         r.has_value() ? r->const_data_ptr<scalar_t>() : nullptr,
                         Divider<index_t>(static_cast<index_t>(plan.channels_last ? C / plan.vec : HW)),
                         Divider<index_t>(static_cast<index_t>(C)), static_cast<index_t>(plan.work),
                         relu};
      launch(K{}, plan, a);
    });
  });
  return plan;
}

// conv_bn_act_cuda's body (csrc/cuda/conv_bn_act.cu), which the CPU emulation runs on CPU
// tensors (ATen's CPU convolution standing in for cuDNN): ATen's convolution without bias, in
// eager's CUDA output layout (conv_output_format_cuda), then the epilogue in place. Returns
// the output and the epilogue's plan.
template <typename Launch>
std::pair<at::Tensor, LaunchPlan> conv_bn_act_launch(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    const std::optional<at::Tensor>& residual, bool relu, Launch&& launch,
    const LaunchLimits& limits = {}) {
  check_conv_bn_act("conv_bn_act", x, weight, /*packed_weight=*/false, bias, stride, padding,
                    dilation, groups, residual);
  const auto fmt = conv_output_format_cuda(x, weight);
  at::Tensor out = at::convolution(x, weight, std::nullopt, stride, padding, dilation, false,
                                   {0, 0}, groups);
  // cuDNN returns `fmt` already (the rule is the one it runs under); a copy only where another
  // of ATen's convolutions ran (the emulation's CPU ones; on the GPU, e.g. one past cuDNN's
  // 32-bit indexing).
  if (!out.is_contiguous(fmt)) out = out.contiguous(fmt);
  // The residual, in either layout: conv_epilogue_launch copies it where it is not out's.
  const LaunchPlan plan = conv_epilogue_launch(out, bias, residual, relu, launch, limits);
  return {out, plan};
}

}  // namespace fpnops
