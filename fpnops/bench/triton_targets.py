"""Compile fpnops' Triton kernels for real GPU targets (sm_80, sm_90) without a GPU, through the
launchers' own code: static evidence for the codegen checks (tests/test_triton_codegen.py) and
the codegen report (benchmarks/codegen_report.py), not a measurement.

A stand-in active driver tells Triton's JIT that the current device is a CUDA GPU of the given
compute capability (device 0, stream 0); the real launchers (launch_forward,
launch_backward_top, launch_conv1x1) are called on CPU tensors whose sizes, strides, dtypes and
16-byte aligned data pointers are those of typical FPN / ResNet launches (the JIT reads only
those), with `run=` compiling the Launch they build (kernel.warmup: specialise and compile,
no launch) instead of launching it. So each kernel is compiled exactly as a real launch with
those tensors would compile it.

Triton decides when a kernel is defined whether it runs in its interpreter: this must run in a
process without TRITON_INTERPRET=1 (compile_in_child starts one per arch).

    python -m fpnops.bench.triton_targets --arch 90 --out DIR   # DIR/index.json, *.cubin, *.ptx
"""
import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

from fpnops.bench import sass

ARCHS = (80, 90)
# What a real launch checks when it loads a kernel (CompiledKernel._init_handles), which a
# compile alone does not: opt-in shared memory per block (bytes) and threads per block.
MAX_SHARED = {80: 166912, 90: 232448}
MAX_THREADS = 1024
REGISTERS_PER_SM = 65536


class StandInDriver:
    """What Triton's JIT asks of its active driver to compile without launching."""

    def __init__(self, arch):
        from triton.backends.compiler import GPUTarget
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.target.arch, 10)

    @staticmethod
    def is_active():
        return True


@contextlib.contextmanager
def gpu_target(arch):
    """Triton's JIT compiles for sm_<arch> inside this block (no launch possible)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("triton_targets: TRITON_INTERPRET=1 makes Triton define interpreter "
                           "kernels; compile in a process without it (compile_in_child)")
    from triton.runtime.driver import driver
    previous = getattr(driver, "_active", None)
    driver.set_active(StandInDriver(arch))
    try:
        yield
    finally:
        driver.set_active(previous)


# --- the launches to compile ------------------------------------------------------------------

def _tensor(shape, dtype, layout="nchw", strided=False, device="cpu", random=False):
    """A tensor in `layout`, "nchw" or "nhwc" (channels_last); `strided`: a view in that layout
    that is not dense (every other column of a wider NCHW tensor; the first w columns of a wider
    channels_last one). Uninitialised unless `random` (the compile check reads only metadata)."""
    import torch
    n, c, h, w = shape
    if layout == "nhwc":
        full = (n, c, h, w + 8) if strided else shape
        t = torch.empty(full, dtype=dtype, device=device, memory_format=torch.channels_last)
    else:
        t = torch.empty((n, c, h, 2 * w) if strided else shape, dtype=dtype, device=device)
    if random:
        t.normal_()
    if strided:
        t = t[..., :w] if layout == "nhwc" else t[..., ::2]
    return t


@dataclasses.dataclass
class Variant:
    name: str  # "upsample_add/float16/nchw", ...
    op: str  # "upsample_add", "upsample_add_backward_top", "conv1x1"
    dtype: str
    layout: str
    tags: tuple  # "typical" (the common FPN/ResNet launch), "wrap", "strided", "index64", ...
    inputs: object  # inputs(device, random) -> dict of the launcher's tensors and arguments
    launch: object  # launch(inputs, run) -> output: the real launcher, its Launch handed to run

    def call(self, run, device="cpu", random=False):
        """The launcher's output on fresh inputs (the compile check: `run` compiles)."""
        return self.launch(self.inputs(device, random), run)


# FPN level sizes of an 800x1216 image, batch 2, 256 channels: P2 200x304, P3 100x152,
# P4 50x76, P5 25x38.
P2, P3, P4, P5 = (200, 304), (100, 152), (50, 76), (25, 38)
CHANNELS = 256
DTYPES = ("float16", "bfloat16", "float32", "float64")


def variants():
    """Every kernel variant the launchers produce on a GPU (the CUDA rules), chosen to cover
    each constexpr flag and config once without compiling the whole cross product:
    - every dtype x layout (NCHW, channels_last) on the typical launch of each kernel
      (upsample_add P4 -> P3; its backward P3 -> P2, 2x2 windows of equal width; a
      256 -> 256 1x1 conv with bias, residual and ReLU, stride 1);
    - then, in float16, each other path once per layout where it exists: a run that wraps
      into the next row (NCHW P5 -> P4; 20 channels in channels_last), a strided lateral or
      grad, runs of one element (maps narrower than a 16-byte vector), 64-bit index math
      (forced: real launches pick it past 2**31 elements), windows of unequal width and
      windows too large to unroll (backward), a Cout of 64 (64-wide N tiles), stride 2
      (the general path), and the epilogue flags off.
    The GPU tests (tests/test_triton_gpu.py) run the same list on random inputs."""
    import torch

    from fpnops.triton import conv_bn_act as conv
    from fpnops.triton import upsample_add as ua

    out = []

    def fwd(name, dtype, layout, tags, top_hw, lat_hw, c=CHANNELS, strided=False, index64=None):
        dt = getattr(torch, dtype)

        def inputs(device, random):
            return dict(top=_tensor((2, c, *top_hw), dt, layout, False, device, random),
                        lateral=_tensor((2, c, *lat_hw), dt, layout, strided, device, random))

        def launch(i, run):
            return ua.launch_forward(i["top"], i["lateral"], None, None, "cuda",
                                     index64=index64, run=run)
        out.append(Variant(f"upsample_add/{dtype}/{layout}{name}", "upsample_add", dtype, layout,
                           tags, inputs, launch))

    def bwd(name, dtype, layout, tags, top_hw, grad_hw, c=CHANNELS, strided=False, index64=None):
        dt = getattr(torch, dtype)

        def inputs(device, random):
            return dict(grad=_tensor((2, c, *grad_hw), dt, layout, strided, device, random),
                        top_hw=top_hw, layout=layout)

        def launch(i, run):
            return ua.launch_backward_top(i["grad"], *top_hw, None, None, "cuda",
                                          index64=index64, run=run)
        out.append(Variant(f"upsample_add_backward_top/{dtype}/{layout}{name}",
                           "upsample_add_backward_top", dtype, layout, tags, inputs, launch))

    def cv(name, dtype, layout, tags, cin=CHANNELS, cout=CHANNELS, hw=P3, stride=1, bias=True,
           res=True, relu=True, index64=None):
        dt = getattr(torch, dtype)

        def inputs(device, random):
            w = torch.empty(cout, cin, 1, 1, dtype=dt, device=device)
            if random:
                w.normal_(std=cin ** -0.5)
            ho, wo = (hw[0] - 1) // stride + 1, (hw[1] - 1) // stride + 1
            return dict(x=_tensor((2, cin, *hw), dt, layout, False, device, random), weight=w,
                        bias=_tensor((1, 1, 1, cout), dt, "nchw", False, device, random)
                        .view(cout) if bias else None,
                        residual=_tensor((2, cout, ho, wo), dt, layout, False, device, random)
                        if res else None, stride=[stride, stride], relu=relu)

        def launch(i, run):
            return conv.launch_conv1x1(i["x"], i["weight"], i["bias"], i["stride"],
                                       i["residual"], i["relu"], index64=index64, run=run)
        out.append(Variant(f"conv1x1/{dtype}/{layout}{name}", "conv1x1", dtype, layout, tags,
                           inputs, launch))

    for dtype in DTYPES:
        for layout in ("nchw", "nhwc"):
            fwd("", dtype, layout, ("typical",), P4, P3)
            bwd("", dtype, layout, ("typical",), P3, P2)
            cv("", dtype, layout, ("typical",))
    h = "float16"
    fwd("/wrap", h, "nchw", ("wrap",), P5, P4)
    fwd("/wrap", h, "nhwc", ("wrap",), P4, P3, c=20)
    fwd("/strided", h, "nchw", ("strided",), P4, P3, strided=True)
    fwd("/strided", h, "nhwc", ("strided",), P4, P3, strided=True)
    fwd("/narrow", h, "nchw", ("narrow",), (2, 3), (4, 6))
    fwd("/index64", h, "nchw", ("index64",), P4, P3, index64=True)
    fwd("/index64", h, "nhwc", ("index64",), P4, P3, index64=True)
    bwd("/wrap", h, "nchw", ("wrap",), P4, P3)
    bwd("/wrap", h, "nhwc", ("wrap",), P4, P3, c=20)
    bwd("/uneven", h, "nchw", ("uneven",), (64, 96), P3)
    bwd("/loop", h, "nchw", ("loop",), (4, 8), P3)
    bwd("/loop", h, "nhwc", ("loop",), (4, 8), P3)
    bwd("/strided", h, "nchw", ("strided",), P3, P2, strided=True)
    bwd("/index64", h, "nchw", ("index64",), P3, P2, index64=True)
    bwd("/index64", h, "nhwc", ("index64",), P3, P2, index64=True)
    cv("/cout64", h, "nhwc", ("cout64",), cout=64)
    cv("/stride2", h, "nhwc", ("stride2",), stride=2, res=False, relu=False)
    cv("/stride2", h, "nchw", ("stride2",), stride=2, res=False, relu=False)
    cv("/plain", h, "nhwc", ("plain",), bias=False, res=False, relu=False)
    cv("/index64", h, "nhwc", ("index64",), index64=True)
    return out


# --- compiling ----------------------------------------------------------------------------------

def _jsonable(v):
    return v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)


def compile_variant(variant):
    """[(Launch, CompiledKernel)] for each launch the variant's launcher makes (one)."""
    launches = []
    variant.call(launches.append)
    return [(spec, spec.kernel.warmup(*spec.args, grid=spec.grid, **spec.kwargs))
            for spec in launches]


def disassemble(cubin_path):
    """cuobjdump's SASS and resource usage of a cubin, in one call (the slow part of a check)."""
    proc = subprocess.run([sass.cuobjdump(), "-sass", "-res-usage", str(cubin_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump {cubin_path} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def kernel_of(rec):
    """The sass.Kernel of a compiled variant's record (from compile_in_child)."""
    text = pathlib.Path(rec["dir"], rec["sass"]).read_text()
    (kernel,) = sass.parse_res_usage(text, sass.parse_sass(text, rec["arch"])).values()
    return kernel


def compile_all(arch, out_dir):
    """Compile every variant for sm_<arch>; write out_dir/index.json (one record a variant, with
    an "error" where compiling failed) and each kernel's cubin, PTX and SASS."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with gpu_target(arch):
        for v in variants():
            rec = {"name": v.name, "op": v.op, "dtype": v.dtype, "layout": v.layout,
                   "tags": list(v.tags), "arch": f"sm_{arch}"}
            t0 = time.perf_counter()
            try:
                (spec, kernel), = compile_variant(v)
            except Exception as e:  # reported per variant; the test fails on any
                rec["error"] = f"{type(e).__name__}: {e}"[:4000]
                records.append(rec)
                continue
            stem = v.name.replace("/", "-")
            (out_dir / f"{stem}.cubin").write_bytes(kernel.asm["cubin"])
            (out_dir / f"{stem}.ptx").write_text(kernel.asm["ptx"])
            if sass.cuobjdump():  # disassembled here, in parallel with the other arch's child
                (out_dir / f"{stem}.sass").write_text(disassemble(out_dir / f"{stem}.cubin"))
                rec["sass"] = f"{stem}.sass"
            md = kernel.metadata
            rec.update(kernel=kernel.name, cubin=f"{stem}.cubin", ptx=f"{stem}.ptx",
                       grid=list(spec.grid),
                       constexprs={k: _jsonable(x) for k, x in spec.kwargs.items()
                                   if k not in ("num_warps", "num_stages")},
                       num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared,
                       compile_s=round(time.perf_counter() - t0, 3))
            records.append(rec)
    (out_dir / "index.json").write_text(json.dumps(records, indent=1))
    return records


def compile_in_child(out_dir, archs=ARCHS, timeout=600):
    """compile_all for each arch, each in its own interpreter without TRITON_INTERPRET (in
    parallel); {arch: records}. The children import the fpnops this module belongs to."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    procs = {}
    for arch in archs:
        d = pathlib.Path(out_dir) / f"sm{arch}"
        procs[arch] = (d, subprocess.Popen(
            [sys.executable, "-m", "fpnops.bench.triton_targets", "--arch", str(arch),
             "--out", str(d)], env=env, cwd=root, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    results = {}
    for arch, (d, p) in procs.items():
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            raise RuntimeError(f"compiling for sm_{arch} took over {timeout} s")
        if p.returncode != 0:
            raise RuntimeError(f"compiling for sm_{arch} failed (exit {p.returncode}):\n{err[-3000:]}")
        results[arch] = json.loads((d / "index.json").read_text())
        for rec in results[arch]:
            rec["dir"] = str(d)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, required=True, choices=ARCHS)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    records = compile_all(args.arch, args.out)
    bad = [r["name"] for r in records if "error" in r]
    print(f"sm_{args.arch}: {len(records) - len(bad)} of {len(records)} variants compiled"
          + (f"; failed: {', '.join(bad)}" if bad else ""))


if __name__ == "__main__":
    main()
