// 16-byte vector loads and stores shared by the CUDA kernels.
#pragma once
#include <cstdint>

namespace fpnops {

// N elements moved as one aligned access (N * sizeof(T) == 16 for the vector paths).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Grid-stride loops: a few waves of 256-thread blocks are plenty for memory-bound kernels.
constexpr int kThreads = 256;
inline int64_t num_blocks(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > 65535LL * 8 ? 65535LL * 8 : blocks);
}

}  // namespace fpnops
