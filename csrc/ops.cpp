// Every fpnops schema, in one place. Backends register kernels in csrc/<backend>/<op>.*;
// the fake (meta) kernels and autograd live in fpnops/ops/<op>.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(fpnops, m) {
  // lateral + F.interpolate(top, size=lateral.shape[-2:] (or scale_factor=(scale_h, scale_w)),
  // mode="nearest"), in one pass. Output in the lateral's memory format.
  m.def("upsample_add(Tensor top, Tensor lateral, float? scale_h=None, float? scale_w=None) -> Tensor");
  // Gradient of upsample_add with respect to top: each top cell sums the gradient over the
  // output cells that read it (a gather: deterministic, no atomics).
  m.def("upsample_add_backward_top(Tensor grad, SymInt top_h, SymInt top_w, float? scale_h=None, "
        "float? scale_w=None) -> Tensor");
  // For tests: csrc/nearest_index.h's rule `rule` tabulated on the CPU (int64): src per output
  // index for "nearest_idx", "generic_float", "generic_double", "cuda"; the window starts per
  // top index (in_size + 1 of them) for "cuda_backward". Lets the CUDA rules run without a GPU.
  m.def("_nearest_rule_table(int in_size, int out_size, float? scale_factor, str rule) -> Tensor");
  // relu(conv2d(x, weight, bias, stride, padding, dilation, groups) + residual), the bias,
  // residual add and ReLU in the convolution's epilogue; weight and bias already BN-folded.
  // Output in x's memory format. NaN and inf propagate as in eager (relu(NaN) = NaN).
  m.def("conv_bn_act(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, Tensor? residual, bool relu) -> Tensor");
  // CPU inference only: conv_bn_act in channels_last with a weight oneDNN has already reordered
  // for this input shape (mkldnn::_reorder_convolution_weight; an opaque mkldnn tensor), as
  // Inductor's freezing does. The fused modules cache such weights; no autograd, no fake kernel.
  // Arguments checked as conv_bn_act's, but NOT for NaN: with relu=true its ReLU is oneDNN's
  // post-op, which maps NaN to 0. The caller must prove no NaN can reach it (a finite bound
  // max|x| * max_co sum|w[co]| + max|bias| + max|residual| well below float32's overflow, as
  // csrc/cpu/conv_bn_act.cpp's relu_post_op_is_safe) or pass relu=false and apply a
  // NaN-propagating ReLU itself.
  m.def("conv_bn_act_cpu_prepacked(Tensor x, Tensor packed_weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups, Tensor? residual, bool relu) -> Tensor");
  // max |x| over every element, NaN-propagating (NaN if any element is NaN, inf if any is
  // infinite; 0 when empty). CPU only: the fused convolutions' test that no NaN can reach a
  // oneDNN ReLU post-op (which maps NaN to 0).
  m.def("max_abs(Tensor x) -> float");
  // CPU float32 inference only: relu?(conv2d(x, w, bias, stride=1, padding=1) + residual) for a
  // 3x3 w, as Winograd's F(4x4, 3x3) (csrc/cpu/winograd.cpp): `weight` is w transformed,
  // (36, C, K), by fpnops/ops/winograd.py's winograd_weight. Output channels_last. Rounds
  // differently from the direct convolution; NOT for inputs with NaN or inf (the transforms
  // mix neighbouring pixels: an inf makes NaNs around it). No autograd, no fake kernel.
  m.def("conv3x3_winograd(Tensor x, Tensor weight, Tensor? bias, Tensor? residual, bool relu) -> Tensor");
}

// The module exists to load the registrations above; it also records how it was built so
// fpnops can refuse a _C built against another torch (see fpnops/_extension.py).
static struct PyModuleDef fpnops_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fpnops_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddStringConstant(m, "torch_version", FPNOPS_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "cuda_archs", FPNOPS_CUDA_ARCHS) < 0 ||
      PyModule_AddIntConstant(m, "with_cuda", FPNOPS_WITH_CUDA) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
