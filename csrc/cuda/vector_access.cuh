// 16-byte vector loads and stores shared by the CUDA kernels (and their CPU emulation).
#pragma once
#include <cstdint>

#include "../host_device.h"

namespace fpnops {

// N elements moved as one aligned access (N * sizeof(T) == 16 for the vector paths).
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

inline bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace fpnops
