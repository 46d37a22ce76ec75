"""upsample_add: bad input gets a clear error naming the argument, what was expected and what came."""
import pytest
import torch
from helpers import backends_for

import fpnops

T = torch.randn(2, 3, 5, 7)
L = torch.randn(2, 3, 10, 14)


@pytest.mark.parametrize("top,lat,kwargs,exc,pattern", [
    (torch.randn(2, 4, 5, 7), L, {}, ValueError, r"same N and C.*\(2, 4, 5, 7\).*\(2, 3, 10, 14\)"),
    (torch.randn(1, 3, 5, 7), L, {}, ValueError, r"same N and C"),
    (torch.randn(3, 5, 7), L, {}, ValueError, r"top must be 4-D.*got 3-D"),
    (T, torch.randn(2, 3, 10, 14, 1), {}, ValueError, r"lateral must be 4-D.*got 5-D"),
    (T.double(), L, {}, TypeError, r"same dtype.*float64.*float32"),
    (T.int(), L.int(), {}, TypeError, r"floating dtype.*torch.int32"),
    (T.long(), L.long(), {}, TypeError, r"floating dtype.*torch.int64"),
    (T, L, {"scale_factor": 3}, ValueError, r"scale_h=3.0 turns top size 5 into 15.*lateral has size 10"),
    (T, L, {"scale_factor": (2, 2.5)}, ValueError, r"scale_w=2.5 turns top size 7 into 17"),
    (T, L, {"scale_factor": 0}, ValueError, r"scale_factor must be positive"),
    (T, L, {"scale_factor": float("nan")}, ValueError, r"scale_factor must be positive"),
    (T, L, {"scale_factor": (2, 2, 2)}, TypeError, r"scale_factor must be a number or a pair"),
    (T, L, {"scale_factor": "2"}, TypeError, r"scale_factor must be a number or a pair"),
    (T, L, {"backend": "cudnn"}, ValueError, r"backend must be one of.*'cudnn'"),
    (T, L, {"backend": None}, ValueError, r"backend must be one of"),
    (T.numpy(), L, {}, TypeError, r"top must be a torch.Tensor, got ndarray"),
    (torch.randn(2, 3, 0, 7), L, {}, ValueError, r"top has an empty spatial size"),
])
def test_bad_input(top, lat, kwargs, exc, pattern):
    for backend in backends_for("cpu"):
        kw = {"backend": backend, **kwargs}
        with pytest.raises(exc, match=pattern):
            fpnops.upsample_add(top, lat, **kw)


def test_device_mismatch():
    meta = torch.empty(2, 3, 10, 14, device="meta")
    with pytest.raises(ValueError, match=r"same device.*cpu.*meta"):
        fpnops.upsample_add(T, meta)


@pytest.mark.skipif(fpnops.backends()["cuda"] and torch.cuda.is_available(),
                    reason="this build has CUDA kernels and a GPU: native works on CUDA")
def test_native_on_a_device_the_build_lacks():
    # The C++ dispatcher sees 'meta' the way it sees a device the build has no kernel for.
    cuda_like = torch.device("cuda") if not fpnops.backends()["cuda"] else torch.device("meta")
    lat = torch.empty(2, 3, 10, 14, device="meta")
    with pytest.raises(RuntimeError, match=r"backend='native' is not available for (cuda|meta)"):
        fpnops._backend.resolve("upsample_add", "native", cuda_like)
    with pytest.raises(RuntimeError, match=r"backend='native' is not available for meta"):
        fpnops.upsample_add(torch.empty(2, 3, 5, 7, device="meta"), lat, backend="native")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match=r"backend='triton'.*TRITON_INTERPRET=1"):
        fpnops.upsample_add(T, L, backend="triton")


def test_direct_op_calls_are_checked_in_cpp():
    """torch.ops.fpnops.* skip the Python face; the C++ kernels check with messages too."""
    with pytest.raises(RuntimeError, match=r"same N and C"):
        torch.ops.fpnops.upsample_add(torch.randn(2, 4, 5, 7), L)
    with pytest.raises(RuntimeError, match=r"lateral must be 4-D.*got 3-D"):
        torch.ops.fpnops.upsample_add(T, torch.randn(3, 10, 14))
    with pytest.raises(RuntimeError, match=r"same dtype"):
        torch.ops.fpnops.upsample_add(T, L.double())
    with pytest.raises(RuntimeError, match=r"floating dtype"):
        torch.ops.fpnops.upsample_add(T.int(), L.int())
    with pytest.raises(RuntimeError, match=r"scale_h=3 turns top size 5 into 15"):
        torch.ops.fpnops.upsample_add(T, L, 3.0, None)
    with pytest.raises(RuntimeError, match=r"grad must be 4-D"):
        torch.ops.fpnops.upsample_add_backward_top(torch.randn(3, 10, 14), 5, 7)
    with pytest.raises(RuntimeError, match=r"top_h and top_w must be >= 0"):
        torch.ops.fpnops.upsample_add_backward_top(L, -1, 7)
