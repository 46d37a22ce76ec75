// conv_bn_act's CUDA epilogue, y = relu(y + bias[c] + residual) in place, and its launch plan,
// as host-and-device code: csrc/cuda/conv_bn_act.cu launches it after cuDNN's convolution, and
// tests/cuda_emulation runs the same code on the CPU over the same grid (launch.cuh).
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

#include <optional>

#include "launch.cuh"
#include "vector_access.cuh"

namespace fpnops {

template <typename scalar_t, typename index_t>
struct ConvEpilogueArgs {
  scalar_t* __restrict__ y;
  const scalar_t* __restrict__ bias;  // nullptr: none; else dense and 16-byte aligned
  const scalar_t* __restrict__ res;   // nullptr: none; else y's layout
  Divider<index_t> channel_items;     // items per channel plane: HW / V (NCHW); C / V (NHWC)
  Divider<index_t> channels;          // C (NCHW)
  index_t num_items;
  bool relu;
};

// V consecutive elements an item, in y's memory order: one channel (NCHW, HW % V == 0: the
// channel is computed once per item) or V consecutive channels (NHWC, C % V == 0: the bias is
// one Pack). The sum in opmath, in eager's order (y + bias, + residual), rounded once; relu
// as eager's (v < 0 ? 0 : v: NaN stays NaN).
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
          b = load_pack<V>(a.bias + a.channel_items.mod(p) * V);
        } else {
          const scalar_t bc = a.bias[a.channels.mod(a.channel_items.div(p))];
#pragma unroll
          for (int k = 0; k < V; ++k) b.v[k] = bc;
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

// y dense in its suggested memory format; bias and res as conv_epilogue_launch passes them.
inline LaunchPlan plan_conv_epilogue(const at::Tensor& y, const at::Tensor* res, int V,
                                     const LaunchLimits& limits) {
  LaunchPlan plan;
  plan.channels_last = y.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const int64_t inner = plan.channels_last ? y.size(1) : y.size(2) * y.size(3);
  const bool packed = inner % V == 0 && aligned16(y.const_data_ptr()) &&
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
  const auto fmt = y.suggest_memory_format();
  TORCH_CHECK(y.is_contiguous(fmt), "conv_bn_act epilogue: y must be dense, got strides ", y.strides());
  // The kernel reads bias[c] (NHWC: as Packs): dense and aligned; a copy only for a bias view
  // that is not.
  std::optional<at::Tensor> b;
  if (bias.has_value()) {
    b = bias->contiguous();
    if (!aligned16(b->const_data_ptr())) b = b->clone();
  }
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
                         Divider<index_t>(static_cast<index_t>((plan.channels_last ? C : HW) / plan.vec)),
                         Divider<index_t>(static_cast<index_t>(C)), static_cast<index_t>(plan.work),
                         relu};
      launch(K{}, plan, a);
    });
  });
  return plan;
}

}  // namespace fpnops
