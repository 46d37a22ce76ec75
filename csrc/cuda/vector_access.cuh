// Vector loads and stores (16 bytes, or narrower where a row is not a multiple of 16 bytes)
// shared by the CUDA kernels (and their CPU emulation).
#pragma once
#include <cstdint>

#include "../host_device.h"

namespace fpnops {

// N elements moved as one aligned access (N * sizeof(T): 16 bytes for the full-width paths,
// 8 or 4 for the narrower ones).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
FPNOPS_HOST_DEVICE Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
FPNOPS_HOST_DEVICE void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

inline bool aligned_to(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}
inline bool aligned16(const void* ptr) { return aligned_to(ptr, 16); }

}  // namespace fpnops
