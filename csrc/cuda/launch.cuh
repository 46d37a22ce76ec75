// How fpnops' CUDA kernels are launched, and how the same kernel code runs on the CPU for tests.
//
// A kernel is a struct K with `using Args = ...` (its arguments, one trivially copyable struct)
// and `static void run(const Args&, const ThreadPos&)`: the body of one thread, told where it
// is in the grid instead of reading blockIdx/threadIdx. On the GPU, grid_kernel<K> calls it
// from the hardware's registers; in the test-only CPU build (tests/cuda_emulation) the same
// run() is called for every thread of every block of the same grid. Each op's launcher
// (csrc/cuda/<op>_kernel.cuh) picks the kernel variant, the grid and the index width on the
// host in one function that both call, so the emulation runs what the GPU would.
#pragma once
#include <c10/macros/Macros.h>

#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../host_device.h"

namespace fpnops {

struct Dim3 {
  uint32_t x = 1, y = 1, z = 1;
};

// Where the calling thread is: CUDA's blockIdx, threadIdx, blockDim, gridDim.
struct ThreadPos {
  Dim3 block_idx, thread_idx, block_dim, grid_dim;

  // The first work item of a 1-D grid-stride loop, and its stride.
  template <typename index_t>
  FPNOPS_HOST_DEVICE index_t first() const {
    return static_cast<index_t>(block_idx.x) * block_dim.x + thread_idx.x;
  }
  template <typename index_t>
  FPNOPS_HOST_DEVICE index_t stride() const {
    return static_cast<index_t>(grid_dim.x) * block_dim.x;
  }
};

// Integer division by a divisor fixed per launch, as a multiply-high, an add and a shift
// (Granlund and Montgomery's method): ATen's IntDivider for 32-bit indices (dividends <=
// INT32_MAX), the same in 64 bits below (dividends < 2^63), where ATen's falls back to a
// division (a ~70-instruction subroutine on the GPU).
struct Divider64 {
  uint64_t divisor, m1;
  uint32_t shift;

  Divider64() = default;
  explicit Divider64(uint64_t d) : divisor(d) {
    TORCH_CHECK(d >= 1 && d <= (uint64_t(1) << 63), "Divider64: divisor out of range: ", d);
    for (shift = 0; shift < 64 && (uint64_t(1) << shift) < d; ++shift) {
    }
    using u128 = unsigned __int128;
    m1 = static_cast<uint64_t>(((u128(1) << 64) * ((u128(1) << shift) - d)) / d + 1);
  }

  FPNOPS_HOST_DEVICE uint64_t div(uint64_t n) const {
#ifdef __CUDA_ARCH__
    const uint64_t t = __umul64hi(n, m1);
#else
    const uint64_t t = static_cast<uint64_t>((static_cast<unsigned __int128>(n) * m1) >> 64);
#endif
    return (t + n) >> shift;  // t <= n < 2^63: no overflow
  }
  FPNOPS_HOST_DEVICE uint64_t mod(uint64_t n) const { return n - div(n) * divisor; }
  FPNOPS_HOST_DEVICE at::cuda::detail::DivMod<uint64_t> divmod(uint64_t n) const {
    const uint64_t q = div(n);
    return {q, n - q * divisor};
  }
};

template <typename index_t>
using Divider = std::conditional_t<sizeof(index_t) == 4, at::cuda::detail::IntDivider<uint32_t>,
                                   Divider64>;

// Grid-stride loops over 256-thread blocks; a few waves are plenty for memory-bound kernels.
constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 8;

// What a launcher may choose: the defaults are the real launch's; the CPU emulation lowers
// them to reach the grid-stride loop and the 64-bit kernels with small tensors.
struct LaunchLimits {
  int64_t max_blocks = kMaxBlocks;
  int64_t max_index32 = std::numeric_limits<int32_t>::max();  // largest offset for 32-bit math
};

// Limits lowered for tests (-1: the real launch's): the emulation's, and the GPU launchers' via
// fpnops::_set_cuda_launch_limits.
inline LaunchLimits lowered_limits(int64_t max_blocks, int64_t max_index32) {
  TORCH_CHECK(max_blocks == -1 || (max_blocks >= 1 && max_blocks <= kMaxBlocks),
              "max_blocks must be -1 or in [1, ", kMaxBlocks, "], got ", max_blocks);
  TORCH_CHECK(max_index32 >= -1 && max_index32 <= std::numeric_limits<int32_t>::max(),
              "max_index32 must be -1 or in [0, 2**31 - 1], got ", max_index32);
  LaunchLimits l;
  if (max_blocks > 0) l.max_blocks = max_blocks;
  if (max_index32 >= 0) l.max_index32 = max_index32;
  return l;
}

inline int64_t num_blocks(int64_t work, const LaunchLimits& limits) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return blocks < 1 ? 1 : (blocks > limits.max_blocks ? limits.max_blocks : blocks);
}

// The largest element offset a kernel can form from `t`'s sizes and strides (0 when empty):
// 32-bit index math is exact when this, and every work-item count, fits (as ATen's
// canUse32BitIndexMath decides).
inline int64_t max_offset(const at::Tensor& t) {
  int64_t off = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 0) return 0;
    off += (t.size(d) - 1) * t.stride(d);
  }
  return off;
}

// The variant a launcher chose, the same for the GPU and the emulation (the tests read it).
struct LaunchPlan {
  int vec = 1;                  // elements per work item: 16 bytes' worth (packed), a narrower
                                // power of two (upsample_add, where rows are not 16-byte
                                // multiples) or 1 (scalar)
  bool channels_last = false;   // the work items' order: the output's memory format
  bool operand_packed = false;  // forward: top read as packs; backward: grad read as packs
  bool index32 = true;          // 32-bit index math (else 64-bit)
  int64_t work = 0;             // work items (packs)
  int64_t blocks = 0;           // grid size (1-D, kThreads threads a block)
};

// Calls f(std::integral_constant<int, plan.vec>, std::bool_constant<channels_last>, index_t{})
// for the plan's variant: the one place the template arguments are chosen. The widths compiled:
// V (16 bytes) and 1; with Narrow, also every power of two between (V / 2, ..., 2).
template <int V, bool Narrow = false, typename F>
void with_variant(const LaunchPlan& plan, F&& f) {
  auto index = [&](auto vec, auto cl) {
    if (plan.index32) {
      f(vec, cl, uint32_t{});
    } else {
      f(vec, cl, uint64_t{});
    }
  };
  auto layout = [&](auto vec) {
    if (plan.channels_last) {
      index(vec, std::true_type{});
    } else {
      index(vec, std::false_type{});
    }
  };
  if (plan.vec == V) {
    layout(std::integral_constant<int, V>{});
  } else if constexpr (Narrow && V > 2) {
    with_variant<V / 2, Narrow>(plan, f);
  } else {
    // A width the plan may not choose would run the scalar kernel over plan.work items.
    TORCH_INTERNAL_ASSERT(plan.vec == 1, "with_variant: no kernel for width ", plan.vec);
    layout(std::integral_constant<int, 1>{});
  }
}

#ifdef __CUDACC__
}  // namespace fpnops
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
namespace fpnops {

template <typename K>
__global__ void __launch_bounds__(kThreads) grid_kernel(const typename K::Args args) {
  const ThreadPos pos{{blockIdx.x, blockIdx.y, blockIdx.z}, {threadIdx.x, threadIdx.y, threadIdx.z},
                      {blockDim.x, blockDim.y, blockDim.z}, {gridDim.x, gridDim.y, gridDim.z}};
  K::run(args, pos);
}

// Launches kernel K on the current stream with the plan's grid.
template <typename K>
void launch_on_gpu(const LaunchPlan& plan, const typename K::Args& args) {
  grid_kernel<K><<<static_cast<unsigned>(plan.blocks), kThreads, 0,
                   c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The limits the GPU launchers use: the real launch's, unless a test lowered them
// (fpnops::_set_cuda_launch_limits) to reach the 64-bit kernels and the grid-stride loop on the
// GPU with small tensors, as the emulation does. Not thread-safe: for tests only.
inline LaunchLimits& gpu_launch_limits() {
  static LaunchLimits limits;
  return limits;
}

// The `launch` argument of the <op>_launch functions, on the GPU.
struct GpuLaunch {
  template <typename K>
  void operator()(K, const LaunchPlan& plan, const typename K::Args& args) const {
    launch_on_gpu<K>(plan, args);
  }
};
#endif

}  // namespace fpnops
