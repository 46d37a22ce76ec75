// FPNOPS_HOST_DEVICE: code that runs in CUDA kernels and on the host (the CPU kernels, and the
// test-only CPU emulation of the CUDA kernels, tests/cuda_emulation).
#pragma once

#ifdef __CUDACC__
#define FPNOPS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FPNOPS_HOST_DEVICE inline
#endif
