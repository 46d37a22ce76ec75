// upsample_add on CUDA: one pass over the output, 16-byte loads/stores where the layout allows,
// 64-bit indices, on the current stream of the input's device.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../nearest_index.h"
#include "../upsample_add.h"
#include "vector_access.cuh"

namespace fpnops {
namespace {

struct Strides4 {
  int64_t n, c, h, w;
};

Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The rules are eager's CUDA forward rule (kCuda, nearest_index.h), fixed at compile time.
// Each thread handles V consecutive elements along the output's innermost dimension (W for
// NCHW, C for channels_last). With V > 1 the lateral has the output's layout and both are
// 16-byte aligned, so lateral and output move as one Pack; `top_packed` says the same of top
// (channels_last only: along W, the nearest gather makes top's reads scattered).
template <typename scalar_t, int V, bool CHANNELS_LAST>
__global__ void upsample_add_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ lat,
                                    const scalar_t* __restrict__ top, int64_t C, int64_t H,
                                    int64_t W, Strides4 ls, Strides4 ts, NearestRule rh,
                                    NearestRule rw, bool top_packed, int64_t num_packs) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t inner = CHANNELS_LAST ? C : W;
  const int64_t packs_per_row = inner / V;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < num_packs;
       p += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i0 = (p % packs_per_row) * V;
    int64_t rest = p / packs_per_row;
    int64_t n, c, oh, ow;
    if (CHANNELS_LAST) {
      c = i0; ow = rest % W; rest /= W; oh = rest % H; n = rest / H;
    } else {
      ow = i0; oh = rest % H; rest /= H; c = rest % C; n = rest / C;
    }
    const int64_t ih = rh.src_as<NearestKind::kCuda>(oh);
    Pack<scalar_t, V> l, t, o;
    if (V > 1) {
      l = *reinterpret_cast<const Pack<scalar_t, V>*>(lat + p * V);
    } else {
      l.v[0] = lat[n * ls.n + c * ls.c + oh * ls.h + ow * ls.w];
    }
    if (CHANNELS_LAST) {
      const int64_t iw = rw.src_as<NearestKind::kCuda>(ow);
      const scalar_t* tv = top + n * ts.n + ih * ts.h + iw * ts.w + c * ts.c;
      if (V > 1 && top_packed) {
        t = *reinterpret_cast<const Pack<scalar_t, V>*>(tv);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) t.v[k] = tv[k * ts.c];
      }
    } else {
      const scalar_t* trow = top + n * ts.n + c * ts.c + ih * ts.h;
#pragma unroll
      for (int k = 0; k < V; ++k) t.v[k] = trow[rw.src_as<NearestKind::kCuda>(ow + k) * ts.w];
    }
#pragma unroll
    for (int k = 0; k < V; ++k) {
      o.v[k] = static_cast<scalar_t>(static_cast<opmath_t>(l.v[k]) + static_cast<opmath_t>(t.v[k]));
    }
    *reinterpret_cast<Pack<scalar_t, V>*>(out + p * V) = o;
  }
}

template <typename scalar_t, bool CHANNELS_LAST>
void launch_forward(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat,
                    const NearestRule& rh, const NearestRule& rw) {
  constexpr int V = 16 / sizeof(scalar_t);
  const int64_t C = out.size(1), H = out.size(2), W = out.size(3);
  const auto fmt = CHANNELS_LAST ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const int64_t inner = CHANNELS_LAST ? C : W;
  const bool packed = inner % V == 0 && lat.is_contiguous(fmt) && aligned16(lat.const_data_ptr());
  const bool top_packed = CHANNELS_LAST && top.stride(1) == 1 && top.stride(3) % V == 0 &&
                          top.stride(2) % V == 0 && top.stride(0) % V == 0 &&
                          aligned16(top.const_data_ptr());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (packed) {
    const int64_t num_packs = out.numel() / V;
    upsample_add_kernel<scalar_t, V, CHANNELS_LAST><<<num_blocks(num_packs), kThreads, 0, stream>>>(
        out.mutable_data_ptr<scalar_t>(), lat.const_data_ptr<scalar_t>(),
        top.const_data_ptr<scalar_t>(), C, H, W, strides_of(lat), strides_of(top), rh, rw,
        top_packed, num_packs);
  } else {
    upsample_add_kernel<scalar_t, 1, CHANNELS_LAST><<<num_blocks(out.numel()), kThreads, 0, stream>>>(
        out.mutable_data_ptr<scalar_t>(), lat.const_data_ptr<scalar_t>(),
        top.const_data_ptr<scalar_t>(), C, H, W, strides_of(lat), strides_of(top), rh, rw,
        false, out.numel());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor upsample_add_cuda(const at::Tensor& top, const at::Tensor& lateral,
                             std::optional<double> scale_h, std::optional<double> scale_w) {
  check_upsample_add(top, lateral, scale_h, scale_w);
  TORCH_CHECK(lateral.is_cuda(), "upsample_add (CUDA kernel): expected CUDA tensors, got ",
              lateral.device());
  const c10::cuda::CUDAGuard guard(lateral.device());
  at::Tensor out = empty_like_lateral(lateral);
  if (out.numel() == 0) return out;
  const auto rh = make_nearest_rule(top.size(2), lateral.size(2), scale_h, NearestKind::kCuda);
  const auto rw = make_nearest_rule(top.size(3), lateral.size(3), scale_w, NearestKind::kCuda);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lateral.scalar_type(), "upsample_add_cuda", [&] {
    if (out.is_contiguous()) {
      launch_forward<scalar_t, false>(out, top, lateral, rh, rw);
    } else {
      launch_forward<scalar_t, true>(out, top, lateral, rh, rw);
    }
  });
  return out;
}

// One thread per top cell, in gtop's own (dense) memory order: sum grad over the cell's window
// (eager's CUDA windows, nearest_index.h), in opmath from 0, row-major, as eager's CUDA backward
// does. No atomics: deterministic.
template <typename scalar_t>
__global__ void backward_top_kernel(scalar_t* __restrict__ gtop, const scalar_t* __restrict__ grad,
                                    int64_t C, int64_t TH, int64_t TW, Strides4 gs, bool channels_last,
                                    NearestWindowsCuda rh, NearestWindowsCuda rw, int64_t numel) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < numel;
       e += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c, ih, iw;
    if (channels_last) {
      c = e % C; iw = (e / C) % TW; ih = (e / (C * TW)) % TH; n = e / (C * TW * TH);
    } else {
      iw = e % TW; ih = (e / TW) % TH; c = (e / (TW * TH)) % C; n = e / (TW * TH * C);
    }
    const int64_t h0 = rh.start(ih), h1 = rh.start(ih + 1);
    const int64_t w0 = rw.start(iw), w1 = rw.start(iw + 1);
    const scalar_t* g = grad + n * gs.n + c * gs.c;
    opmath_t acc = 0;
    for (int64_t oh = h0; oh < h1; ++oh) {
      for (int64_t ow = w0; ow < w1; ++ow) acc += static_cast<opmath_t>(g[oh * gs.h + ow * gs.w]);
    }
    gtop[e] = static_cast<scalar_t>(acc);
  }
}

at::Tensor upsample_add_backward_top_cuda(const at::Tensor& grad, int64_t top_h, int64_t top_w,
                                          std::optional<double> scale_h,
                                          std::optional<double> scale_w) {
  check_upsample_add_backward(grad, top_h, top_w, scale_h, scale_w);
  TORCH_CHECK(grad.is_cuda(), "upsample_add_backward_top (CUDA kernel): expected a CUDA tensor, got ",
              grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  const auto fmt = grad.suggest_memory_format();
  at::Tensor gtop = at::empty({grad.size(0), grad.size(1), top_h, top_w}, grad.options().memory_format(fmt));
  if (gtop.numel() == 0) return gtop;
  if (grad.size(2) == 0 || grad.size(3) == 0) return gtop.zero_();
  // Eager copies when all sizes are equal (a sum from 0 would turn -0.0 into +0.0).
  if (grad.size(2) == top_h && grad.size(3) == top_w) return gtop.copy_(grad);
  const auto rh = make_nearest_windows_cuda(top_h, grad.size(2), scale_h);
  const auto rw = make_nearest_windows_cuda(top_w, grad.size(3), scale_w);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "upsample_add_backward_top_cuda", [&] {
    backward_top_kernel<scalar_t><<<num_blocks(gtop.numel()), kThreads, 0, stream>>>(
        gtop.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), gtop.size(1), top_h,
        top_w, strides_of(grad), fmt == at::MemoryFormat::ChannelsLast, rh, rw, gtop.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gtop;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpnops, CUDA, m) {
  m.impl("upsample_add", &upsample_add_cuda);
  m.impl("upsample_add_backward_top", &upsample_add_backward_top_cuda);
}

}  // namespace fpnops
