import os

import pytest
import torch

# Triton kernels run on CPU tensors in Triton's interpreter, which must be chosen before the
# kernels are defined (when fpnops is imported). With a GPU, they run compiled on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fpnops  # noqa: E402,F401

CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")


def devices():
    return ["cpu", pytest.param("cuda", marks=CUDA_SKIP)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
