import os

import pytest
import torch

# Triton kernels run on CPU tensors in Triton's interpreter, which must be chosen before the
# kernels are defined (when fpnops is imported). With a GPU, they run compiled on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fpnops  # noqa: E402,F401

# float32 convolutions (eager's and cuDNN's fused ones) run in TF32 on Ampere+ GPUs by
# default, ~1e-3 relative; the tests compare against float64 at float32 precision.
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

GPU_REASON = "needs a CUDA GPU (none visible)"
CUDA_SKIP = pytest.mark.skipif(not torch.cuda.is_available(), reason=GPU_REASON)


def devices():
    return ["cpu", pytest.param("cuda", marks=CUDA_SKIP)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """Marks `gpu` every test that a CPU machine skips for want of a GPU (a skipif with
    GPU_REASON, as CUDA_SKIP): the GPU check runs just those, `pytest -m gpu`
    (benchmarks/gpu_check.sh), and tests/test_gpu_check.py checks that they are many."""
    for item in items:
        if any(m.name == "skipif" and m.kwargs.get("reason") == GPU_REASON for m in item.iter_markers()):
            item.add_marker(pytest.mark.gpu)
