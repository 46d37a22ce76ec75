"""Triton kernels, one file per op. TRITON_INTERPRET=1 (run them on CPU tensors) must be set
before fpnops is imported: Triton reads it when a kernel is defined."""
