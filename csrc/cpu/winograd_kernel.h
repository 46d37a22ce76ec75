// The two transforms of the Winograd F(4x4, 3x3) convolution (winograd.cpp), compiled once per
// CPU capability (see upsample_add_kernel.h for the scheme). The matrix products between them
// are at::bmm's.
//
// Each output tile of 4x4 pixels reads a 6x6 input tile (stride 1, padding 1: the rows
// 4*ty-1 .. 4*ty+4, zero outside the image). With the points 0, +-1, +-2 and infinity:
//   U = B^T d B (6x6 per channel), M[p] = U[p] @ V[p] over channels (p = one of the 36
//   positions; V = G g G^T, the transformed weight, made in float64 in Python), Y = A^T M A.
// Layouts: x and the output channels_last (N, H, W, C); T = N * ceil(H/4) * ceil(W/4) tiles in
// (n, ty, tx) order, of which one call transforms `count` from tile `first`: U (36, count, C)
// and M (36, count, K).
// Channels go through in at::vec vectors (8 floats with AVX2), the last one partial where the
// channel count is not a multiple: every value below is such a vector of channels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

namespace fpnops {
namespace CPU_CAPABILITY {
namespace {

using Vec = at::vec::Vectorized<float>;
constexpr int kLanes = Vec::size();

inline Vec load(const float* p, int n) { return n == kLanes ? Vec::loadu(p) : Vec::loadu(p, n); }
inline void store(const Vec& v, float* p, int n) {
  if (n == kLanes) v.store(p); else v.store(p, n);
}

// B^T d for one column d[0..5] (a vector of channels each):
// B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
inline void bt(const Vec* d, Vec* o) {
  const Vec four(4.f), five(5.f), two(2.f);
  o[0] = four * d[0] - five * d[2] + d[4];
  o[1] = (d[3] + d[4]) - four * (d[1] + d[2]);
  o[2] = four * (d[1] - d[2]) + (d[4] - d[3]);
  o[3] = two * (d[3] - d[1]) + (d[4] - d[2]);
  o[4] = two * (d[1] - d[3]) + (d[4] - d[2]);
  o[5] = four * d[1] - five * d[3] + d[5];
}

// A^T m for one column m[0..5]: A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]
inline void at(const Vec* m, Vec* o) {
  const Vec s12 = m[1] + m[2], d12 = m[1] - m[2], s34 = m[3] + m[4], d34 = m[3] - m[4];
  o[0] = m[0] + s12 + s34;
  o[1] = d12 + Vec(2.f) * d34;
  o[2] = s12 + Vec(4.f) * s34;
  o[3] = d12 + Vec(8.f) * d34 + m[5];
}

}  // namespace

// x (N, H, W, C) dense -> u (36, count, C): tiles first .. first + count - 1.
void winograd_input_kernel(const float* x, int64_t H, int64_t W, int64_t C, int64_t first,
                           int64_t count, float* u) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, T = count;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    Vec t[36];  // B^T d, row-major
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t n = (first + ti) / (th * tw), r = (first + ti) % (th * tw);
      const int64_t h0 = 4 * (r / tw) - 1, w0 = 4 * (r % tw) - 1;
      for (int64_t c0 = 0; c0 < C; c0 += kLanes) {
        const int cb = static_cast<int>(std::min<int64_t>(kLanes, C - c0));
        for (int j = 0; j < 6; ++j) {
          const int64_t w = w0 + j;
          Vec d[6], o[6];
          for (int i = 0; i < 6; ++i) {
            const int64_t h = h0 + i;
            d[i] = (h < 0 || h >= H || w < 0 || w >= W)
                       ? Vec(0.f) : load(x + ((n * H + h) * W + w) * C + c0, cb);
          }
          bt(d, o);
          for (int i = 0; i < 6; ++i) t[i * 6 + j] = o[i];
        }
        for (int i = 0; i < 6; ++i) {
          Vec o[6];
          bt(t + i * 6, o);
          for (int j = 0; j < 6; ++j) store(o[j], u + ((i * 6 + j) * T + ti) * C + c0, cb);
        }
      }
    }
  });
}

// m (36, count, K) of tiles first .. first + count - 1 -> their pixels of out (N, H, W, K) =
// A^T m A + bias (+ residual), then ReLU if asked (NaN kept); residual (N, H, W, K) dense or
// null; it may be out itself (each element read before written).
void winograd_output_kernel(const float* m, int64_t H, int64_t W, int64_t K, int64_t first,
                            int64_t count, const float* bias, const float* residual, bool relu,
                            float* out) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, T = count;
  at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
    Vec s[24];  // A^T m, 4 rows of 6
    for (int64_t ti = begin; ti < end; ++ti) {
      const int64_t n = (first + ti) / (th * tw), r = (first + ti) % (th * tw);
      const int64_t h0 = 4 * (r / tw), w0 = 4 * (r % tw);
      for (int64_t k0 = 0; k0 < K; k0 += kLanes) {
        const int kb = static_cast<int>(std::min<int64_t>(kLanes, K - k0));
        for (int j = 0; j < 6; ++j) {
          Vec a[6], o[4];
          for (int i = 0; i < 6; ++i) a[i] = load(m + ((i * 6 + j) * T + ti) * K + k0, kb);
          at(a, o);
          for (int i = 0; i < 4; ++i) s[i * 6 + j] = o[i];
        }
        const Vec b = bias ? load(bias + k0, kb) : Vec(0.f);
        for (int i = 0; i < 4 && h0 + i < H; ++i) {
          Vec y[4];
          at(s + i * 6, y);
          for (int j = 0; j < 4 && w0 + j < W; ++j) {
            const int64_t at_ = ((n * H + h0 + i) * W + w0 + j) * K + k0;
            Vec v = y[j] + b;
            if (residual) v = v + load(residual + at_, kb);
            if (relu) v = Vec::blendv(v, Vec(0.f), v < Vec(0.f));  // NaN < 0 is false: NaN stays
            store(v, out + at_, kb);
          }
        }
      }
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace fpnops
