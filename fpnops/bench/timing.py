"""Side-by-side timing: interleaved rounds, medians, spread, ratios, after warm-up. CPU: one
call per sample, timed with perf_counter. CUDA (as triton.testing.do_bench does): each call
between its own pair of events, after an untimed write of a buffer larger than L2, and as many
calls per sample as make it cover TARGET_MS (see _cuda_timer)."""
import math
import os
import platform
import statistics
import time

import torch


def machine():
    """What produced a figure: versions, CPU, threads, GPU."""
    import fpnops
    info = {"fpnops": fpnops.__version__, "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "platform": platform.platform(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
            "cpu_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "fpnops_backends": fpnops.backends()}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


TARGET_MS = 1.0   # CUDA: GPU time one sample covers at least (event resolution ~0.5 us)
MAX_CALLS = 1000  # CUDA: calls per sample at most
FLUSH_BYTES = 256 << 20  # at least; 4x L2 where that is larger


def method(device):
    """How compare() times on `device`, in words (the table's first line, the JSON settings)."""
    if device == "cuda":
        return (f"CUDA events around each call, L2 flushed before each call (untimed), "
                f"calls per sample so a sample covers >= {TARGET_MS:g} ms")
    return "perf_counter, 1 call per sample"


def _l2_flush():
    """A function that evicts the caches: writes a buffer well beyond L2 (H100 50 MB, H200 60 MB),
    so no call finds its inputs there from the call before. P4's maps fit L2: without it, their
    GB/s would be L2 bandwidth, above what HBM delivers."""
    l2 = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0)
    buf = torch.empty(max(FLUSH_BYTES, 4 * l2), dtype=torch.uint8, device="cuda")
    return buf.zero_


def _cuda_timer(flush, event=None):
    """timer(fn, calls) -> GPU ms per call, the mean over `calls` calls. Each call runs between
    its own event pair, after flush(): the flush is queued before the start event, so it is not
    timed, and it keeps the GPU busy while the CPU queues the call, so that a call is not charged
    the CPU's launch time (with one event pair around one call after a sync, a 5-25 us kernel
    mostly measured that), as long as launching it takes the CPU less time than the flush."""
    event = event or (lambda: torch.cuda.Event(enable_timing=True))

    def run(fn, calls):
        pairs = []
        for _ in range(calls):
            flush()
            start, end = event(), event()
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        pairs[-1][1].synchronize()
        return sum(start.elapsed_time(end) for start, end in pairs) / calls
    return run


def _cpu_timer(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def calls_for(ms_per_call, target_ms=TARGET_MS):
    """Calls per sample for a sample to cover target_ms (at least 1, at most MAX_CALLS)."""
    return max(1, min(MAX_CALLS, math.ceil(target_ms / ms_per_call) if ms_per_call > 0 else MAX_CALLS))


def compare_calls(fns, device, rounds=30, warmup=3, timer=None):
    """({name: [ms per call, ...]}, {name: calls per sample}), timing each fn once per round, in
    turn (interleaved), so drifts in clock or load hit every candidate alike. CPU: one call per
    sample. CUDA: calls per sample from one timed call after warm-up (calls_for). `timer`
    replaces the device's timer(fn, calls) -> ms per call (tests fake the CUDA one)."""
    if timer is None:
        timer = _cuda_timer(_l2_flush()) if device == "cuda" else _cpu_timer
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    calls = {name: calls_for(timer(fn, 1)) if device == "cuda" else 1 for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(timer(fn, calls[name]))
    return samples, calls


def compare(fns, device, rounds=30, warmup=3):
    """{name: [ms per call, ...]}: compare_calls without the calls."""
    return compare_calls(fns, device, rounds, warmup)[0]


def wall_ms(fn, device):
    """(fn(), its wall time in ms): one call, as a user meets it (CUDA: synchronized before and
    after, so queued work is neither charged to it nor left out)."""
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return out, (time.perf_counter() - t0) * 1e3


def cold_compile_cache():
    """A context in which torch.compile finds nothing cached, as on a user's first run: inductor's
    cache folder (FX graphs, AOTAutograd, compiled C++ and Triton kernels) is a new empty
    temporary folder (TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR), its in-memory caches are
    cleared on entry and exit, and the folder is deleted afterwards."""
    from torch._inductor import utils
    return (getattr(utils, "fresh_cache", None) or utils.fresh_inductor_cache)()


def copy_bandwidth(device, nbytes=None, rounds=20):
    """The device's copy bandwidth in GB/s (bytes read + written per second), measured with a
    preallocated tensor copy large enough to miss the caches."""
    nbytes = nbytes or (1 << 30 if device == "cuda" else 256 << 20)
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = statistics.median(compare({"copy": lambda: dst.copy_(src)}, device, rounds=rounds)["copy"])
    return 2 * nbytes / ms / 1e6


def summarize(samples, baseline):
    """Median, spread (20th-80th percentile) and speedup over the baseline, per candidate."""
    out = {}
    base = statistics.median(samples[baseline])
    for name, s in samples.items():
        q = statistics.quantiles(s, n=5) if len(s) >= 5 else [min(s), max(s)]
        med = statistics.median(s)
        out[name] = {"median_ms": med, "p20_ms": q[0], "p80_ms": q[-1], "speedup": base / med}
    return out


def peak_mib(fn):
    """Peak CUDA memory one call of fn allocates beyond what was allocated before, in MiB."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
