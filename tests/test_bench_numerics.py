"""fpnops bench: what its verdicts and timings mean. Tolerances a correct computation in its
precision meets (float32 without TF32 on CUDA, half dtypes against eager's own error), CUDA
timing of small kernels (calls per sample, L2 flushed and not timed; a fake clock here), and
the inference cases under torch.inference_mode() with no autograd on the conv weights."""
import copy

import pytest
import torch

import fpnops
from conftest import CUDA_SKIP
from fpnops import bench
from fpnops.bench import suites, timing
from fpnops.bench.suites import Case, Settings


# --- CUDA timing, on a fake clock -----------------------------------------------------------------

class FakeClock:
    """The GPU's clock, as CUDA events would read it: each fake kernel advances it."""

    def __init__(self):
        self.t, self.log = 0.0, []

    def event(self):
        clock = self

        class Event:
            def record(self):
                self.t = clock.t
                clock.log.append("record")

            def synchronize(self):
                pass

            def elapsed_time(self, end):
                return end.t - self.t
        return Event()

    def kernel(self, name, ms):
        def run():
            self.t += ms
            self.log.append(name)
        return run


def test_cuda_timer_calibrates_calls_and_does_not_time_the_flush():
    clock = FakeClock()
    timer = timing._cuda_timer(clock.kernel("flush", 5.0), clock.event)  # 5 ms a flush: never counted
    fns = {"small": clock.kernel("small", 0.125), "big": clock.kernel("big", 2.0)}
    samples, calls = timing.compare_calls(fns, "cuda", rounds=3, warmup=1, timer=timer)
    # a sample covers >= TARGET_MS (1 ms): 8 calls of 0.125 ms; a 2 ms call alone
    assert calls == {"small": 8, "big": 1}
    assert samples == {"small": [0.125] * 3, "big": [2.0] * 3}
    # after warm-up, every timed call is: flush, then its own event pair around it alone
    assert clock.log[:2] == ["small", "big"]
    groups = [clock.log[i:i + 4] for i in range(2, len(clock.log), 4)]
    assert all(g[0] == "flush" and g[1] == g[3] == "record" for g in groups)
    assert [g[2] for g in groups] == ["small", "big"] + (["small"] * 8 + ["big"]) * 3  # calibration, rounds


def test_calls_for():
    assert timing.calls_for(0.005) == 200  # a 5 us P4 kernel: 200 calls make 1 ms
    assert timing.calls_for(0.3) == 4 and timing.calls_for(1.0) == 1 and timing.calls_for(40.0) == 1
    assert timing.calls_for(0.0) == timing.calls_for(1e-9) == timing.MAX_CALLS


def test_cpu_timing_is_one_perf_counter_call_per_sample():
    n = []
    samples, calls = timing.compare_calls({"f": lambda: n.append(1)}, "cpu", rounds=4, warmup=2)
    assert calls == {"f": 1} and len(samples["f"]) == 4 and len(n) == 2 + 4
    assert timing.method("cpu") == "perf_counter, 1 call per sample"
    assert "L2 flushed before each call" in timing.method("cuda")


@CUDA_SKIP
def test_cuda_small_kernel_is_timed_on_the_gpu_not_the_launch():
    # a 1 MiB add takes a few us on the GPU; one event pair around one call after a sync read
    # the launch too (tens of us from Python)
    x = torch.randn(1 << 18, device="cuda")
    samples, calls = timing.compare_calls({"add": lambda: x + 1}, "cuda", rounds=5, warmup=2)
    assert calls["add"] > 20 and sorted(samples["add"])[2] < 0.02


# --- float32 on CUDA: IEEE, TF32 off, restored after -------------------------------------------

CUDNN, MATMUL = torch.backends.cudnn, torch.backends.cuda.matmul


@pytest.fixture
def tf32_on():
    """TF32 on, as torch's defaults have cuDNN (conftest turns it off); conftest's state after."""
    CUDNN.allow_tf32 = MATMUL.allow_tf32 = True
    yield
    CUDNN.allow_tf32 = MATMUL.allow_tf32 = False


def test_ieee_float32_turns_tf32_off_and_restores_it(tf32_on):
    with suites.ieee_float32("cuda") as what:
        assert what == "IEEE (TF32 off)"
        assert not CUDNN.allow_tf32 and not MATMUL.allow_tf32
        if hasattr(CUDNN, "conv"):  # the per-op API (torch >= 2.9) agrees
            assert CUDNN.conv.fp32_precision != "tf32" and MATMUL.fp32_precision != "tf32"
    assert CUDNN.allow_tf32 and MATMUL.allow_tf32
    if hasattr(CUDNN, "conv"):
        assert CUDNN.conv.fp32_precision == "tf32"
    with suites.ieee_float32("cpu") as what:  # CPU float32 is IEEE: nothing to switch
        assert what == "IEEE" and CUDNN.allow_tf32


@pytest.mark.skipif(not hasattr(CUDNN, "conv"), reason="the per-op fp32_precision API is torch >= 2.9")
def test_ieee_float32_after_the_per_op_api(tf32_on):
    CUDNN.conv.fp32_precision = "tf32"
    CUDNN.rnn.fp32_precision = "ieee"
    try:
        CUDNN.allow_tf32
        pytest.skip("this torch's legacy getter accepts a mix of the two APIs")
    except RuntimeError:
        pass  # a mix: the legacy switches cannot be read, so the per-op ones are used
    with suites.ieee_float32("cuda"):
        assert CUDNN.conv.fp32_precision == CUDNN.rnn.fp32_precision == MATMUL.fp32_precision == "ieee"
    assert (CUDNN.conv.fp32_precision, CUDNN.rnn.fp32_precision) == ("tf32", "ieee")


@CUDA_SKIP
def test_ieee_float32_conv_on_cuda_is_float32_accurate(tf32_on):
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).cuda()
    ref = copy.deepcopy(conv).double()
    x = torch.randn(4, 256, 64, 64, device="cuda")
    with suites.ieee_float32("cuda"), torch.no_grad():
        err = bench.rel_err(conv(x), ref(x.double()), exact=False)
    assert err < 1e-5  # TF32 (10-bit mantissa operands): ~1e-3


# --- half dtypes: tolerance from eager's own error -----------------------------------------------

def _toy_case(eager_scale, eager_factor=2.0):
    x = torch.randn(64, 64, dtype=torch.float64)
    impls = {"eager": lambda: x * (1 + eager_scale), "close": lambda: x * (1 + 1.9 * eager_scale),
             "far": lambda: x * (1 + 2.1 * eager_scale), "exact": lambda: x * (1 + 1e-9)}
    tol = {"eager": 2e-2, "close": 2e-2, "far": 2e-2, "exact": 0.0}
    return Case("toy", {}, impls, lambda: x, tol, eager_factor=eager_factor)


def _rows(case):
    cfg = {"device": "cpu", "rounds": 2, "warmup": 0}
    return {r["impl"]: r for r in bench.run_case("backbone", case, cfg, "bfloat16", None)}


def test_half_tolerance_is_twice_eager_s_error():
    rows = _rows(_toy_case(0.05))  # eager 5e-2 from float64: beyond the 2e-2 floor
    assert rows["eager"]["status"] == "ok" and rows["eager"]["rel_err"] == pytest.approx(0.05)
    assert rows["close"]["status"] == "ok" and rows["close"]["tol"] == pytest.approx(0.1)
    assert rows["far"]["status"] == "wrong" and "> 1.0e-01" in rows["far"]["note"]
    assert rows["far"]["median_ms"] is None and rows["far"]["tol"] == pytest.approx(0.1)
    assert rows["exact"]["status"] == "wrong" and rows["exact"]["tol"] == 0.0  # bit-exact stays exact


def test_half_tolerance_has_a_floor_and_float32_none():
    rows = _rows(_toy_case(0.004))  # eager well within: the floor holds
    assert all(rows[k]["tol"] == 2e-2 and rows[k]["status"] == "ok" for k in ("eager", "close", "far"))
    rows = _rows(_toy_case(0.05, eager_factor=None))  # float32: the tolerance as given
    assert rows["eager"]["status"] == rows["close"]["status"] == "wrong" and rows["close"]["tol"] == 2e-2
    s = Settings("cpu", torch.float32, 1, (64, 64), "contiguous", True, None)
    assert s.eager_factor() is None and s.loose_tol() == 1e-4
    s.dtype = torch.bfloat16
    assert s.eager_factor() == 2.0 and s.loose_tol() == 2e-2


# --- inference cases under torch.inference_mode(), no autograd on the conv weights ---------------

def test_inference_cases_run_under_inference_mode(monkeypatch):
    seen = []
    real = fpnops.conv_bn_act

    def spy(x, weight, bias, **kw):
        seen.append((torch.is_inference_mode_enabled(), weight.requires_grad, bias.requires_grad))
        return real(x, weight, bias, **kw)
    monkeypatch.setattr(fpnops, "conv_bn_act", spy)
    s = Settings("cpu", torch.float32, 1, (64, 64), "contiguous", True, None)
    built = [build() for _, build in suites.cases("ops", s) + suites.cases("fpn", s)]
    assert [c.name.split()[0] for c in built] == ["upsample_add", "upsample_add", "conv_bn_act", "FPN"]
    for case in built:
        for impl, fn in case.impls.items():
            outs = bench._flat(fn())
            assert outs and all(t.is_inference() for t in outs), (case.name, impl)
    assert seen == [(True, False, False)]  # the native conv_bn_act call: no autograd anywhere


def test_fpn_fwd_bwd_keeps_autograd():
    s = Settings("cpu", torch.float32, 1, (64, 64), "contiguous", False, None)
    case = dict(suites.cases("fpn", s))["FPN neck fwd+bwd"]()
    for impl, fn in case.impls.items():
        outs = bench._flat(fn())
        assert outs and not any(t.is_inference() for t in outs), impl
    rows = {r["impl"]: r for r in bench.run_case("fpn", case, {"device": "cpu", "rounds": 2, "warmup": 0},
                                                 "float32", None)}
    assert all(r["status"] == "ok" for r in rows.values()) and rows["fpnops"]["tol"] == 0.0
