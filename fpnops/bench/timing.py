"""Side-by-side timing: interleaved rounds, medians, spread, ratios. CPU with perf_counter,
CUDA with events (as triton.testing.do_bench does), after warm-up."""
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


def _timer(device):
    if device == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        return run

    def run(fn):
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return run


def compare(fns, device, rounds=30, warmup=3, inner=1):
    """{name: [ms per call, ...]} timing each fn once per round, in turn (interleaved), so
    drifts in clock or load hit every candidate alike. `inner` calls per sample for tiny ops."""
    timer = _timer(device)
    samples = {name: [] for name in fns}

    def many(fn):
        def go():
            for _ in range(inner):
                fn()
        return go

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(timer(many(fn)) / inner)
    return samples


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
