// The CPU kernels (<op>_kernel.h) compiled for AVX2 (+FMA, F16C), chosen at run time by the
// op files (<op>.cpp, through cpu_dispatch.h) when the CPU has them. Only the kernels and at::vec (whose AVX2 code lives in
// the at::vec::AVX2 namespace) are compiled for AVX2: every other header comes first, with the
// default target, so no shared inline function gets AVX2 code.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <vector>

#include "../nearest_index.h"

#if FPNOPS_HAVE_AVX2
// g++'s target pragma does not define the __AVX2__-style macros that sleef.h (included by
// at::vec) declares its AVX2 functions under, so they are defined here, as -mavx2 would.
#include <immintrin.h>
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "conv_bn_act_kernel.h"
#include "max_abs_kernel.h"
#include "upsample_add_kernel.h"
#include "winograd_kernel.h"
#pragma GCC pop_options
#endif
