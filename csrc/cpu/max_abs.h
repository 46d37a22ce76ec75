// max_abs's C++ function, for the CPU kernels that bound their inputs before a oneDNN ReLU
// post-op (csrc/cpu/conv_bn_act.cpp) without a trip through the dispatcher.
#pragma once
#include <ATen/core/Tensor.h>

namespace fpnops {

// max |x| over every element of a strided CPU floating tensor: NaN if any element is NaN, inf
// if any is infinite, 0 if empty. One vectorised read of x (a copy first if x is not dense).
double max_abs_cpu(const at::Tensor& x);

}  // namespace fpnops
