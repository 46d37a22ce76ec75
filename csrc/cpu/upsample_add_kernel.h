// The CPU kernels of upsample_add, compiled once per CPU capability: included by
// upsample_add.cpp (generic at::vec) and upsample_add_avx2.cpp (AVX2 at::vec), which
// define CPU_CAPABILITY first. No include guard on purpose: one copy per capability namespace.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "../nearest_index.h"

namespace fpnops {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Elements per parallel task (ATen uses the same 32768 for its elementwise kernels).
constexpr int64_t kGrainElements = 32768;

// Whether any result was NaN (upsample_add.cpp says why it asks): an OR of isnan masks in the
// vector loops and a flag in the scalar ones, read once per task; no branch in the loops.
template <typename opmath_t>
struct NanSeen {
  Vectorized<opmath_t> mask = Vectorized<opmath_t>(opmath_t(0));
  bool scalar = false;

  void note(const Vectorized<opmath_t>& v) { mask = mask | v.isnan(); }
  void note(opmath_t v) { scalar |= v != v; }
  bool any() const {
    opmath_t lanes[Vectorized<opmath_t>::size()];
    mask.store(lanes);
    bool seen = scalar;
    for (const opmath_t x : lanes) seen |= x != opmath_t(0);  // a set lane is all ones: a NaN
    return seen;
  }
};

// out[i] = a[i * sa] + b[i * sb] in opmath, rounded once: add_row for strided operands.
template <typename scalar_t>
void add_strided(scalar_t* out, const scalar_t* a, int64_t sa, const scalar_t* b, int64_t sb,
                 int64_t n, NanSeen<at::opmath_type<scalar_t>>& nan) {
  using opmath_t = at::opmath_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const opmath_t r = static_cast<opmath_t>(a[i * sa]) + static_cast<opmath_t>(b[i * sb]);
    nan.note(r);
    out[i] = static_cast<scalar_t>(r);
  }
}

// out[i] = a[i] + b[i] for contiguous rows, in opmath (float for half types), rounded once.
template <typename scalar_t>
void add_row(scalar_t* out, const scalar_t* a, const scalar_t* b, int64_t n,
             NanSeen<at::opmath_type<scalar_t>>& nan) {
  using Vec = Vectorized<scalar_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    if constexpr (std::is_same_v<scalar_t, at::opmath_type<scalar_t>>) {
      const Vec r = Vec::loadu(a + i) + Vec::loadu(b + i);
      nan.note(r);
      r.store(out + i);
    } else {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(a + i));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(b + i));
      const auto r0 = a0 + b0, r1 = a1 + b1;
      nan.note(r0);
      nan.note(r1);
      at::vec::convert_from_float<scalar_t>(r0, r1).store(out + i);
    }
  }
  add_strided(out + i, a + i, 1, b + i, 1, n - i, nan);
}

std::vector<int64_t> source_table(const NearestRule& rule) {
  std::vector<int64_t> t(rule.out_size);
  for (int64_t i = 0; i < rule.out_size; ++i) t[i] = rule.src(i);
  return t;
}

// starts[i] = the first output index whose source is >= i: src() never decreases, so top cell i
// is read by outputs [starts[i], starts[i + 1]) and by no others (eager's CPU backward, a
// scatter over the forward rule, sums exactly these).
std::vector<int64_t> window_starts(const NearestRule& rule) {
  std::vector<int64_t> starts(rule.in_size + 1);
  int64_t dst = 0;
  for (int64_t i = 0; i <= rule.in_size; ++i) {
    while (dst < rule.out_size && rule.src(dst) < i) ++dst;
    starts[i] = dst;
  }
  return starts;
}

// What both forward kernels read: data pointers, input strides, and src_h / src_w per output
// index.
template <typename scalar_t>
struct Operands {
  const scalar_t* tp;
  const scalar_t* lp;
  scalar_t* op;
  at::IntArrayRef ts, ls;  // top's and lateral's strides
  std::vector<int64_t> ih_of, iw_of;

  Operands(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat, const NearestRule& rh,
           const NearestRule& rw)
      : tp(top.const_data_ptr<scalar_t>()), lp(lat.const_data_ptr<scalar_t>()),
        op(out.mutable_data_ptr<scalar_t>()), ts(top.strides()), ls(lat.strides()),
        ih_of(source_table(rh)), iw_of(source_table(rw)) {}
};

// Output NCHW-contiguous. Work comes in tiles of whole rows of one (n, c) plane, up to ~4096
// elements: the upsampled top tile is built in a per-thread buffer (a top row gathered once,
// then copied for each further output row that reads it) and added to the lateral tile in one
// vectorised pass when the lateral's rows are contiguous, so short rows (P5's 25) do not pay
// per-row overhead.
template <typename scalar_t>
bool forward_nchw(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat,
                  const NearestRule& rh, const NearestRule& rw) {
  const int64_t C = out.size(1), H = out.size(2), W = out.size(3);
  const Operands<scalar_t> o(out, top, lat, rh, rw);
  const auto &ts = o.ts, &ls = o.ls;
  const int64_t rows_per_tile = std::max<int64_t>(1, 4096 / std::max<int64_t>(W, 1));
  const int64_t tiles_per_plane = (H + rows_per_tile - 1) / rows_per_tile;
  const bool lat_rows_contiguous = ls[3] == 1 && (H == 1 || ls[2] == W);
  const int64_t grain = std::max<int64_t>(1, kGrainElements / (rows_per_tile * std::max<int64_t>(W, 1)));
  std::atomic<bool> any_nan{false};
  at::parallel_for(0, out.size(0) * C * tiles_per_plane, grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> up(rows_per_tile * W);
    NanSeen<at::opmath_type<scalar_t>> nan;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t nc = t / tiles_per_plane, n = nc / C, c = nc % C;
      const int64_t oh0 = (t % tiles_per_plane) * rows_per_tile;
      const int64_t oh1 = std::min(H, oh0 + rows_per_tile);
      const scalar_t* tplane = o.tp + n * ts[0] + c * ts[1];
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        scalar_t* urow = up.data() + (oh - oh0) * W;
        if (oh > oh0 && o.ih_of[oh] == o.ih_of[oh - 1]) {
          std::copy(urow - W, urow, urow);
        } else {
          const scalar_t* trow = tplane + o.ih_of[oh] * ts[2];
          for (int64_t ow = 0; ow < W; ++ow) urow[ow] = trow[o.iw_of[ow] * ts[3]];
        }
      }
      const scalar_t* lrow0 = o.lp + n * ls[0] + c * ls[1] + oh0 * ls[2];
      scalar_t* orow0 = o.op + (nc * H + oh0) * W;
      if (lat_rows_contiguous) {
        add_row(orow0, lrow0, up.data(), (oh1 - oh0) * W, nan);
      } else {
        for (int64_t k = 0; k < oh1 - oh0; ++k) {
          add_strided(orow0 + k * W, lrow0 + k * ls[2], ls[3], up.data() + k * W, 1, W, nan);
        }
      }
    }
    if (nan.any()) any_nan.store(true, std::memory_order_relaxed);
  });
  return any_nan.load();
}

// Output channels_last: one task per output pixel (n, oh, ow), a C-vector each.
template <typename scalar_t>
bool forward_nhwc(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat,
                  const NearestRule& rh, const NearestRule& rw) {
  const int64_t C = out.size(1), H = out.size(2), W = out.size(3);
  const Operands<scalar_t> o(out, top, lat, rh, rw);
  const auto &ts = o.ts, &ls = o.ls;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(C, 1));
  std::atomic<bool> any_nan{false};
  at::parallel_for(0, out.size(0) * H * W, grain, [&](int64_t begin, int64_t end) {
    NanSeen<at::opmath_type<scalar_t>> nan;
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ow = p % W, oh = (p / W) % H, n = p / (W * H);
      const scalar_t* tv = o.tp + n * ts[0] + o.ih_of[oh] * ts[2] + o.iw_of[ow] * ts[3];
      const scalar_t* lv = o.lp + n * ls[0] + oh * ls[2] + ow * ls[3];
      scalar_t* ov = o.op + p * C;
      if (ts[1] == 1 && ls[1] == 1) {
        add_row(ov, lv, tv, C, nan);
      } else {
        add_strided(ov, lv, ls[1], tv, ts[1], C, nan);
      }
    }
    if (nan.any()) any_nan.store(true, std::memory_order_relaxed);
  });
  return any_nan.load();
}

// grad_top[n, c, ih, iw] = sum of grad over the output window that read (ih, iw), summed in
// opmath from 0 in row-major window order (the order eager's CPU backward adds in). The windows
// come from `rh`, `rw`: eager's CPU backward always uses nearest_idx, whatever its forward used.
template <typename scalar_t>
bool backward_top(at::Tensor& gtop, const at::Tensor& grad, const NearestRule& rh,
                  const NearestRule& rw) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t C = gtop.size(1), TH = gtop.size(2), TW = gtop.size(3);
  const std::vector<int64_t> h0 = window_starts(rh), w0 = window_starts(rw);
  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  scalar_t* op = gtop.mutable_data_ptr<scalar_t>();
  const auto gs = grad.strides();
  const auto os = gtop.strides();
  std::atomic<bool> any_nan{false};
  at::parallel_for(0, gtop.numel(), kGrainElements / 16, [&](int64_t begin, int64_t end) {
    NanSeen<opmath_t> nan;
    for (int64_t e = begin; e < end; ++e) {
      // e walks gtop in NCHW order; gtop may be channels_last, so store through its strides.
      const int64_t iw = e % TW, ih = (e / TW) % TH, c = (e / (TW * TH)) % C, n = e / (TW * TH * C);
      const scalar_t* g = gp + n * gs[0] + c * gs[1];
      opmath_t acc = 0;
      for (int64_t oh = h0[ih]; oh < h0[ih + 1]; ++oh) {
        for (int64_t ow = w0[iw]; ow < w0[iw + 1]; ++ow) {
          acc += static_cast<opmath_t>(g[oh * gs[2] + ow * gs[3]]);
        }
      }
      nan.note(acc);
      op[n * os[0] + c * os[1] + ih * os[2] + iw * os[3]] = static_cast<scalar_t>(acc);
    }
    if (nan.any()) any_nan.store(true, std::memory_order_relaxed);
  });
  return any_nan.load();
}

}  // namespace

// Both return whether any result is NaN.
bool upsample_add_kernel(at::Tensor& out, const at::Tensor& top, const at::Tensor& lat,
                         const NearestRule& rh, const NearestRule& rw) {
  bool nan = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, lat.scalar_type(), "upsample_add_cpu", [&] {
    nan = out.is_contiguous() ? forward_nchw<scalar_t>(out, top, lat, rh, rw)
                              : forward_nhwc<scalar_t>(out, top, lat, rh, rw);
  });
  return nan;
}

bool upsample_add_backward_top_kernel(at::Tensor& gtop, const at::Tensor& grad,
                                      const NearestRule& rh, const NearestRule& rw) {
  bool nan = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "upsample_add_backward_top_cpu", [&] {
    nan = backward_top<scalar_t>(gtop, grad, rh, rw);
  });
  return nan;
}

}  // namespace CPU_CAPABILITY
}  // namespace fpnops
