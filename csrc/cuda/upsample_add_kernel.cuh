// upsample_add's CUDA kernels (forward, and the gradient of top) and their launch plans, as
// host-and-device code: csrc/cuda/upsample_add.cu launches them on the GPU, and
// tests/cuda_emulation runs the same code on the CPU over the same grid (launch.cuh).
//
// Work items follow the output's memory order (NCHW, or channels_last): V consecutive
// elements along its innermost dimension (W, or C) per item, V = 16 bytes' worth where the
// layout allows (packed); where the row (W or C elements) is not a multiple of 16 bytes, the
// widest power of two that divides it (fp16 W = 100: 4 elements, 8 bytes; W = 50: 2), so that
// an item never straddles a row and every row starts aligned; 1 (scalar) where none does.
// Each item splits its index into (row, pack in row) and the row into the other three
// coordinates with fixed divisors (Divider: multiply and shift with 32-bit indices, used
// whenever every offset fits in int32).
#pragma once
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <initializer_list>
#include <optional>

#include "../nearest_index.h"
#include "launch.cuh"
#include "vector_access.cuh"

namespace fpnops {

template <typename index_t>
struct Strides4 {
  index_t n, c, h, w;
};

template <typename index_t>
Strides4<index_t> strides_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)),
          static_cast<index_t>(t.stride(2)), static_cast<index_t>(t.stride(3))};
}

// (n, c, h, w) of work item p over a (N, C, H, W) tensor in NCHW or NHWC order, `inner` / V
// items a row: three fixed divisions.
template <typename index_t>
struct ItemCoords {
  Divider<index_t> row_items;  // items per row: W / V (NCHW) or C / V (NHWC)
  Divider<index_t> mid;        // H (NCHW) or W (NHWC)
  Divider<index_t> outer;      // C (NCHW) or H (NHWC)

  template <int V, bool CL>
  FPNOPS_HOST_DEVICE void split(index_t p, index_t& n, index_t& c, index_t& h, index_t& w) const {
    const auto in_row = row_items.divmod(p);
    const auto q1 = mid.divmod(in_row.div);
    const auto q2 = outer.divmod(q1.div);
    const index_t i0 = in_row.mod * V;
    n = q2.div;
    c = CL ? i0 : q2.mod;
    h = CL ? q2.mod : q1.mod;
    w = CL ? q1.mod : i0;
  }
};

template <typename index_t>
ItemCoords<index_t> item_coords(int64_t C, int64_t H, int64_t W, bool channels_last, int vec) {
  return {Divider<index_t>(static_cast<index_t>((channels_last ? C : W) / vec)),
          Divider<index_t>(static_cast<index_t>(channels_last ? W : H)),
          Divider<index_t>(static_cast<index_t>(channels_last ? H : C))};
}

// --- forward: out = lat + top[nearest] ------------------------------------------------------

template <typename scalar_t, typename index_t>
struct UpsampleAddArgs {
  scalar_t* __restrict__ out;
  const scalar_t* __restrict__ lat;
  const scalar_t* __restrict__ top;
  ItemCoords<index_t> coords;  // over the output
  Strides4<index_t> ls, ts;    // lateral's (read only by the scalar path) and top's
  NearestRule rh, rw;          // eager's CUDA forward rule (kCuda)
  index_t num_items;
  bool top_packed;  // channels_last: top's V channels are one aligned Pack too
};

// V > 1 (packed): lateral has the output's layout, both V-element aligned, and move as Packs;
// top is gathered per element (NCHW: along W the nearest gather repeats and skips columns)
// or, channels_last with top_packed, read as one Pack of V channels.
template <typename scalar_t, int V, bool CL, typename index_t>
struct UpsampleAddKernel {
  using Args = UpsampleAddArgs<scalar_t, index_t>;

  static FPNOPS_HOST_DEVICE void run(const Args& a, const ThreadPos& pos) {
    using opmath_t = at::opmath_type<scalar_t>;
    using P = Pack<scalar_t, V>;
    constexpr auto kCuda = NearestKind::kCuda;
    for (index_t p = pos.first<index_t>(); p < a.num_items; p += pos.stride<index_t>()) {
      index_t n, c, oh, ow;
      a.coords.template split<V, CL>(p, n, c, oh, ow);
      const index_t ih = a.rh.template src_as<kCuda>(oh);
      P l, t, o;
      if (V > 1) {
        l = load_pack<V>(a.lat + p * V);
      } else {
        l.v[0] = a.lat[n * a.ls.n + c * a.ls.c + oh * a.ls.h + ow * a.ls.w];
      }
      if (CL) {
        const index_t iw = a.rw.template src_as<kCuda>(ow);
        const scalar_t* tv = a.top + n * a.ts.n + ih * a.ts.h + iw * a.ts.w + c * a.ts.c;
        if (V > 1 && a.top_packed) {
          t = load_pack<V>(tv);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) t.v[k] = tv[k * a.ts.c];
        }
      } else {
        const scalar_t* trow = a.top + n * a.ts.n + c * a.ts.c + ih * a.ts.h;
#pragma unroll
        for (int k = 0; k < V; ++k) t.v[k] = trow[a.rw.template src_as<kCuda>(ow + k) * a.ts.w];
      }
#pragma unroll
      for (int k = 0; k < V; ++k) {
        o.v[k] = static_cast<scalar_t>(static_cast<opmath_t>(l.v[k]) + static_cast<opmath_t>(t.v[k]));
      }
      store_pack<V>(a.out + p * V, o);
    }
  }
};

// The widest item (a power of two <= V elements) that divides a row of `inner` elements and
// at which every tensor in `ts` starts aligned (1: scalar).
inline int pack_width(int V, int64_t inner, std::initializer_list<const at::Tensor*> ts) {
  int v = V;
  const auto aligned = [&] {
    for (const at::Tensor* t : ts) {
      if (!aligned_to(t->const_data_ptr(), v * t->element_size())) return false;
    }
    return true;
  };
  while (v > 1 && (inner % v != 0 || !aligned())) v /= 2;
  return v;
}

// Whether t's V channels at every pixel are one aligned Pack (channels_last reads of top/grad).
inline bool channel_packs(const at::Tensor& t, int v) {
  return v > 1 && t.stride(1) == 1 && t.stride(3) % v == 0 && t.stride(2) % v == 0 &&
         t.stride(0) % v == 0 && aligned_to(t.const_data_ptr(), v * t.element_size());
}

// The variant for `out` (dense, the lateral's memory format): the host decision both the GPU
// launch and the emulation use.
inline LaunchPlan plan_upsample_add(const at::Tensor& out, const at::Tensor& top,
                                    const at::Tensor& lat, int V, const LaunchLimits& limits) {
  LaunchPlan plan;
  plan.channels_last = !out.is_contiguous();
  const auto fmt = plan.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t inner = plan.channels_last ? out.size(1) : out.size(3);
  // The lateral moves as Packs at the output's offsets: it needs the output's layout.
  plan.vec = lat.is_contiguous(fmt) ? pack_width(V, inner, {&lat, &out}) : 1;
  plan.operand_packed = plan.channels_last && channel_packs(top, plan.vec);
  plan.index32 = std::max({max_offset(out), max_offset(lat), max_offset(top)}) <= limits.max_index32;
  plan.work = out.numel() / plan.vec;
  plan.blocks = num_blocks(plan.work, limits);
  return plan;
}

// out = lateral + top[nearest] with eager's CUDA rules; `launch(K{}, plan, args)` runs kernel
// K (on the GPU: launch_on_gpu). Returns the plan it ran.
template <typename Launch>
LaunchPlan upsample_add_launch(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat,
                               std::optional<double> scale_h, std::optional<double> scale_w,
                               Launch&& launch, const LaunchLimits& limits = {}) {
  LaunchPlan plan;
  if (out.numel() == 0) return plan;
  const auto rh = make_nearest_rule(top.size(2), lat.size(2), scale_h, NearestKind::kCuda);
  const auto rw = make_nearest_rule(top.size(3), lat.size(3), scale_w, NearestKind::kCuda);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lat.scalar_type(), "upsample_add_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    plan = plan_upsample_add(out, top, lat, V, limits);
    with_variant<V, /*Narrow=*/true>(plan, [&](auto vec, auto cl, auto index) {
      using index_t = decltype(index);
      using K = UpsampleAddKernel<scalar_t, decltype(vec)::value, decltype(cl)::value, index_t>;
      typename K::Args a{out.mutable_data_ptr<scalar_t>(), lat.const_data_ptr<scalar_t>(),
                         top.const_data_ptr<scalar_t>(),
                         item_coords<index_t>(out.size(1), out.size(2), out.size(3),
                                              plan.channels_last, plan.vec),
                         strides_of<index_t>(lat), strides_of<index_t>(top), rh, rw,
                         static_cast<index_t>(plan.work), plan.operand_packed};
      launch(K{}, plan, a);
    });
  });
  return plan;
}

// --- backward: the gradient of top ---------------------------------------------------------

template <typename scalar_t, typename index_t>
struct BackwardTopArgs {
  scalar_t* __restrict__ gtop;
  const scalar_t* __restrict__ grad;
  ItemCoords<index_t> coords;  // over gtop
  Strides4<index_t> gs;
  NearestWindowsCuda rh, rw;   // eager's CUDA backward windows
  index_t num_items;
  bool grad_packed;  // channels_last: grad's V channels are one aligned Pack; NCHW: every
                     // column window is 2 wide and grad's rows are aligned (a 2x upsample)
};

// Each top cell sums grad over its window in opmath from 0, rows then columns, as eager's CUDA
// backward does (deterministic, no atomics); V top cells per item along gtop's inner dim.
template <typename scalar_t, int V, bool CL, typename index_t>
struct UpsampleAddBackwardTopKernel {
  using Args = BackwardTopArgs<scalar_t, index_t>;

  static FPNOPS_HOST_DEVICE void run(const Args& a, const ThreadPos& pos) {
    using opmath_t = at::opmath_type<scalar_t>;
    using P = Pack<scalar_t, V>;
    for (index_t p = pos.first<index_t>(); p < a.num_items; p += pos.stride<index_t>()) {
      index_t n, c, ih, iw;
      a.coords.template split<V, CL>(p, n, c, ih, iw);
      const index_t h0 = a.rh.start(ih), h1 = a.rh.start(ih + 1);
      const scalar_t* g = a.grad + n * a.gs.n + c * a.gs.c;
      opmath_t acc[V];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = opmath_t(0);
      if (CL) {  // V channels of one cell
        const index_t w0 = a.rw.start(iw), w1 = a.rw.start(iw + 1);
        for (index_t oh = h0; oh < h1; ++oh) {
          for (index_t ow = w0; ow < w1; ++ow) {
            const scalar_t* e = g + oh * a.gs.h + ow * a.gs.w;
            if (V > 1 && a.grad_packed) {
              const P x = load_pack<V>(e);
#pragma unroll
              for (int k = 0; k < V; ++k) acc[k] += static_cast<opmath_t>(x.v[k]);
            } else {
#pragma unroll
              for (int k = 0; k < V; ++k) acc[k] += static_cast<opmath_t>(e[k * a.gs.c]);
            }
          }
        }
      } else if (V > 1 && a.grad_packed) {  // cells iw + k read columns 2(iw + k), 2(iw + k) + 1
        for (index_t oh = h0; oh < h1; ++oh) {
          const scalar_t* row = g + oh * a.gs.h + 2 * iw;
          const P x = load_pack<V>(row), y = load_pack<V>(row + V);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[j / 2] += static_cast<opmath_t>(x.v[j]);
#pragma unroll
          for (int j = 0; j < V; ++j) acc[(V + j) / 2] += static_cast<opmath_t>(y.v[j]);
        }
      } else {  // V cells along W, each its own column window
        index_t w[V + 1];
#pragma unroll
        for (int k = 0; k <= V; ++k) w[k] = a.rw.start(iw + k);
        for (index_t oh = h0; oh < h1; ++oh) {
          const scalar_t* row = g + oh * a.gs.h;
#pragma unroll
          for (int k = 0; k < V; ++k) {
            for (index_t ow = w[k]; ow < w[k + 1]; ++ow) acc[k] += static_cast<opmath_t>(row[ow * a.gs.w]);
          }
        }
      }
      P o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = static_cast<scalar_t>(acc[k]);
      store_pack<V>(a.gtop + p * V, o);
    }
  }
};

// As eager: the gradient of top in grad's memory format.
inline at::Tensor backward_top_output(const at::Tensor& grad, int64_t top_h, int64_t top_w) {
  return at::empty({grad.size(0), grad.size(1), top_h, top_w},
                   grad.options().memory_format(grad.suggest_memory_format()));
}

inline LaunchPlan plan_backward_top(const at::Tensor& gtop, const at::Tensor& grad,
                                    const NearestWindowsCuda& rw, int V, const LaunchLimits& limits) {
  LaunchPlan plan;
  plan.channels_last = !gtop.is_contiguous();
  const int64_t TW = gtop.size(3);
  const int64_t inner = plan.channels_last ? gtop.size(1) : TW;
  const int v = plan.vec = pack_width(V, inner, {&gtop});
  if (plan.channels_last) {
    plan.operand_packed = channel_packs(grad, v);
  } else {  // windows [2i, 2i + 2): s == 2 exactly and float(i) exact (i <= 2^24)
    plan.operand_packed = v > 1 && aligned_to(grad.const_data_ptr(), v * grad.element_size()) &&
                          rw.scale == 2.0f && 2 * TW <= grad.size(3) &&
                          TW <= (int64_t(1) << 24) && grad.stride(3) == 1 &&
                          grad.stride(2) % v == 0 && grad.stride(1) % v == 0 &&
                          grad.stride(0) % v == 0;
  }
  plan.index32 = std::max(max_offset(gtop), max_offset(grad)) <= limits.max_index32;
  plan.work = gtop.numel() / plan.vec;
  plan.blocks = num_blocks(plan.work, limits);
  return plan;
}

// gtop (from backward_top_output) = the gradient of top; returns the plan (blocks == 0: no
// kernel ran: empty, zero, or a copy where eager copies).
template <typename Launch>
LaunchPlan upsample_add_backward_top_launch(at::Tensor& gtop, const at::Tensor& grad,
                                            std::optional<double> scale_h,
                                            std::optional<double> scale_w, Launch&& launch,
                                            const LaunchLimits& limits = {}) {
  LaunchPlan plan;
  if (gtop.numel() == 0) return plan;
  if (grad.size(2) == 0 || grad.size(3) == 0) {
    gtop.zero_();
    return plan;
  }
  // Eager copies when all sizes are equal (a sum from 0 would turn -0.0 into +0.0).
  if (grad.size(2) == gtop.size(2) && grad.size(3) == gtop.size(3)) {
    gtop.copy_(grad);
    return plan;
  }
  const auto rh = make_nearest_windows_cuda(gtop.size(2), grad.size(2), scale_h);
  const auto rw = make_nearest_windows_cuda(gtop.size(3), grad.size(3), scale_w);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "upsample_add_backward_top_cuda", [&] {
    constexpr int V = 16 / sizeof(scalar_t);
    plan = plan_backward_top(gtop, grad, rw, V, limits);
    with_variant<V, /*Narrow=*/true>(plan, [&](auto vec, auto cl, auto index) {
      using index_t = decltype(index);
      using K = UpsampleAddBackwardTopKernel<scalar_t, decltype(vec)::value, decltype(cl)::value, index_t>;
      typename K::Args a{gtop.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                         item_coords<index_t>(gtop.size(1), gtop.size(2), gtop.size(3),
                                              plan.channels_last, plan.vec),
                         strides_of<index_t>(grad), rh, rw, static_cast<index_t>(plan.work),
                         plan.operand_packed};
      launch(K{}, plan, a);
    });
  });
  return plan;
}

}  // namespace fpnops
