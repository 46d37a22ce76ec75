"""Every Triton kernel variant compiled for sm_80 and sm_90 as real launches would compile it
(fpnops/bench/triton_targets.py: the launchers' own code, a stand-in driver, no GPU), and its
codegen checked from SASS and PTX (fpnops/bench/sass.py): compiles at all (the interpreter
accepts kernels the GPU compiler rejects), fits a launch, no spills, 16-byte accesses on the
dense paths, no 64-bit division where offsets fit in int32, tensor cores in the GEMM, and the
memory-bound kernels within sass.MEMORY_BOUND_BUDGET instructions per byte."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from fpnops import _backend

pytestmark = pytest.mark.skipif(not _backend.TRITON_IMPORTABLE, reason="needs triton")

ARCHS = (80, 90)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{arch: [(record, Kernel parsed from its cubin, PTX text)]} for every variant."""
    from fpnops.bench import sass, triton_targets
    if sass.cuobjdump() is None:
        pytest.skip("no cuobjdump (Triton's wheel ships one)")
    out = {}
    for arch, records in triton_targets.compile_in_child(tmp_path_factory.mktemp("triton")).items():
        out[arch] = []
        for rec in records:
            kernel = ptx = None
            if "error" not in rec:
                kernel = triton_targets.kernel_of(rec)
                with open(os.path.join(rec["dir"], rec["ptx"])) as f:
                    ptx = f.read()
            out[arch].append((rec, kernel, ptx))
    return out


def select(compiled, arch, op, pred=lambda rec: True):
    found = [(r, k, p) for r, k, p in compiled[arch] if r["op"] == op and "error" not in r and pred(r)]
    assert found, f"no {op} variant selected"
    return found


def runs_per_thread(rec):
    """Runs of GROUP elements each thread of an upsample_add program handles."""
    c = rec["constexprs"]
    return c["BLOCK"] // c["GROUP"] // (rec["num_warps"] * 32)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_variant_compiles_and_fits_a_launch(compiled, arch):
    """A compile error fails here (regression: the backward's unused arange(0, GROUP * WIN_W)
    with WIN_W = 0, a loop over large windows, ran in the interpreter and did not compile).
    What a launch checks on top: shared memory, threads and registers per block, grid."""
    from fpnops.bench import triton_targets as tt
    names = [v.name for v in tt.variants()]
    assert [r["name"] for r, _, _ in compiled[arch]] == names
    errors = [f"{r['name']}: {r['error']}" for r, _, _ in compiled[arch] if "error" in r]
    assert not errors, "\n".join(errors)
    for rec, kernel, _ in compiled[arch]:
        threads = rec["num_warps"] * 32
        assert rec["shared"] <= tt.MAX_SHARED[arch], rec["name"]
        assert threads <= tt.MAX_THREADS, rec["name"]
        assert kernel.registers * threads <= tt.REGISTERS_PER_SM, (rec["name"], kernel.registers)
        assert all(g <= 65535 for g in rec["grid"][1:]) and rec["grid"][0] < 2**31, rec["grid"]


@pytest.mark.parametrize("arch", ARCHS)
def test_no_spills(compiled, arch):
    from fpnops.bench import sass
    spilled = {r["name"]: sass.spills(k) for r, k, _ in compiled[arch]
               if k is not None and (sass.spills(k)["ldl_stl"] or k.local)}
    assert not spilled, spilled


@pytest.mark.parametrize("arch", ARCHS)
def test_no_64_bit_division_where_offsets_fit_int32(compiled, arch):
    """The first version divided in int64 (33 div/rem.s64 per NCHW program); int32 offsets are
    decided on the host and the row coordinates are divided once per run of elements: at most
    3 32-bit divisions per run (the flat offset by the row length, then two more levels).
    Regression: the NCHW backward with UNIFORM_W formed its grad columns from the index in the
    row in their own register layout, where the compiler recomputed it (4 more remainders per
    program); the index now goes into the row offset."""
    for op in ("upsample_add", "upsample_add_backward_top", "conv1x1"):
        for rec, _, ptx in select(compiled, arch, op, lambda r: not r["constexprs"]["INDEX64"]):
            assert not any(f"{d}.{t}64" in ptx for d in ("div", "rem") for t in "su"), rec["name"]
            if op != "conv1x1":
                div32 = sum(ptx.count(f"{d}.{t}32") for d in ("div", "rem") for t in "su")
                assert div32 <= 3 * runs_per_thread(rec), (rec["name"], div32)


def is_dense_run(rec):
    return rec["constexprs"]["GROUP"] > 1


@pytest.mark.parametrize("arch", ARCHS)
def test_upsample_add_forward_moves_dense_data_in_16_byte_vectors(compiled, arch):
    """Output stores and (dense) lateral loads in 128 bits, NCHW and channels_last; in
    channels_last the top's channel runs too (typical launches: 256 channels)."""
    from fpnops.bench import sass
    for rec, kernel, _ in select(compiled, arch, "upsample_add", is_dense_run):
        acc = sass.global_accesses(kernel.instrs)
        runs = runs_per_thread(rec)
        assert {w for kind, w in acc if kind == "store"} == {128}, (rec["name"], acc)
        assert acc[("store", 128)] == runs, (rec["name"], acc)
        if rec["constexprs"]["LAT_DENSE"]:
            assert acc[("load", 128)] >= runs, (rec["name"], acc)
        if rec["layout"] == "nhwc" and "typical" in rec["tags"]:
            assert {w for kind, w in acc if kind == "load"} == {128}, (rec["name"], acc)


@pytest.mark.parametrize("arch", ARCHS)
def test_upsample_add_backward_moves_dense_data_in_16_byte_vectors(compiled, arch):
    """grad_top stores in 128 bits; grad loads in 128 bits in channels_last and in NCHW where
    every window has the same width (1 or 2) and runs stay in their rows (the 2x upsample of
    maps whose top width is a multiple of the vector)."""
    from fpnops.bench import sass
    for rec, kernel, _ in select(compiled, arch, "upsample_add_backward_top", is_dense_run):
        c = rec["constexprs"]
        acc = sass.global_accesses(kernel.instrs)
        assert {w for kind, w in acc if kind == "store"} == {128}, (rec["name"], acc)
        if (rec["layout"] == "nhwc" or c["UNIFORM_W"]) and not c["WRAP"]:
            # below 32 bits: none (the 32-bit loads are the int32 window tables); one vector
            # per run and window cell (per run in a loop's body)
            assert min(w for kind, w in acc if kind == "load") >= 32, (rec["name"], acc)
            want = runs_per_thread(rec) * max(c["WIN_H"], 1) * max(c["WIN_W"], 1)
            assert acc[("load", 128)] >= want, (rec["name"], acc, want)
    typical = select(compiled, arch, "upsample_add_backward_top", lambda r: "typical" in r["tags"])
    assert all(r["constexprs"]["UNIFORM_W"] for r, _, _ in typical if r["layout"] == "nchw")


@pytest.mark.parametrize("arch", ARCHS)
def test_memory_bound_kernels_within_the_instruction_budget(compiled, arch):
    """Hot-path instructions per byte moved <= sass.MEMORY_BOUND_BUDGET (the H100 model in
    sass.py) for upsample_add forward and backward, except the two paths that are not the
    common case: runs of one element (maps narrower than a 16-byte vector) and 64-bit index
    math (past 2**31 elements)."""
    from fpnops.bench import sass
    over = {}
    for op in ("upsample_add", "upsample_add_backward_top"):
        for rec, kernel, _ in select(compiled, arch, op, lambda r: not {"narrow", "index64"} & set(r["tags"])):
            per_byte = sass.instructions_per_byte(kernel)
            if per_byte > sass.MEMORY_BOUND_BUDGET:
                over[rec["name"]] = round(per_byte, 2)
    assert not over, over


@pytest.mark.parametrize("arch", ARCHS)
def test_conv1x1_gemm_uses_tensor_cores_and_16_byte_operand_loads(compiled, arch):
    """float16/bfloat16: HGMMA (wgmma) on sm_90, HMMA (mma.sync) on sm_80; float64: DMMA;
    float32: none (IEEE, no TF32 rounding of the operands, as the op promises). On the dense
    paths (NHWC or NCHW, stride 1) the operands go to shared memory in 16-byte copies and the
    output leaves in 16-byte stores."""
    from fpnops.bench import sass
    for rec, kernel, _ in select(compiled, arch, "conv1x1"):
        tc = sass.tensor_core_ops(kernel.instrs)
        want = {"float16": "HGMMA" if arch == 90 else "HMMA", "bfloat16": "HGMMA" if arch == 90 else "HMMA",
                "float64": "DMMA", "float32": None}[rec["dtype"]]
        assert (set(tc) == {want}) if want else not tc, (rec["name"], tc)
        if rec["constexprs"]["DENSE"]:
            copies = [i for i in kernel.instrs if i.base == "LDGSTS"]
            assert copies and all(sass.access_width(i) == 128 for i in copies), rec["name"]
            acc = sass.global_accesses(kernel.instrs)
            assert {w for kind, w in acc if kind == "store"} == {128}, (rec["name"], acc)


def codegen_report():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "codegen_report.py"
    spec = importlib.util.spec_from_file_location("codegen_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    return report


def test_codegen_report_rows_and_cuda_section(compiled):
    """benchmarks/codegen_report.py on a few of these compiles: one table row per variant with
    the facts above, JSON-able; the CUDA section says when _C has no CUDA code."""
    from fpnops import _extension
    report = codegen_report()
    for arch in ARCHS:
        records = [r for r, _, _ in compiled[arch] if "typical" in r["tags"] and r["dtype"] == "float16"]
        rows = report.triton_section(arch, records)
        cuda = report.cuda_section(arch)
        md = report.markdown({"arch": f"sm_{arch}", "model": report.model(), "triton": rows,
                              "cuda": cuda})
        json.dumps(rows)
        assert [r["name"] for r in rows] == [r["name"] for r in records]
        assert all(f"| `{r['name']}` |" in md for r in rows)
        fwd = next(r for r in rows if r["name"] == "upsample_add/float16/nhwc")
        assert fwd["spills"] == 0 and fwd["global_stores"] == {"128b": runs_per_thread(
            next(r for r in records if r["name"] == fwd["name"]))}
        assert 0 < fwd["instructions_per_byte"] <= report.sass.MEMORY_BOUND_BUDGET
        gemm = next(r for r in rows if r["op"] == "conv1x1")
        assert gemm["tensor_core"] and not gemm["memory_bound"]
        if _extension.WITH_CUDA:
            assert cuda["built_with_cuda"] and (cuda["kernels"] or cuda["note"])
        else:
            assert not cuda["kernels"] and "without CUDA" in cuda["note"] and "without CUDA" in md


TINY_CU = """
template <typename T, int V>
__global__ void vec_add(const T* a, T* out, int n) {
  int i = (blockIdx.x * blockDim.x + threadIdx.x) * V;
  if (i + V <= n) {
    float4 x = *reinterpret_cast<const float4*>(a + i);
    x.x += 1.f;
    *reinterpret_cast<float4*>(out + i) = x;
  }
}
template __global__ void vec_add<float, 4>(const float*, float*, int);
namespace fpn { __global__ void ones(float* p) { p[threadIdx.x] = 1.f; } }
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc to build a CUDA library")
def test_codegen_report_finds_every_cuda_kernel_by_demangled_name(tmp_path):
    """The report reads CUDA kernels from any fat binary generically (fpnops._C's are being
    rewritten): a library built here with two kernels for sm_80 and sm_90, none for sm_86."""
    from fpnops.bench import sass
    if sass.cuobjdump() is None:
        pytest.skip("no cuobjdump")
    report = codegen_report()
    (tmp_path / "tiny.cu").write_text(TINY_CU)
    so = tmp_path / "tiny.so"
    subprocess.run(["nvcc", "-shared", "-Xcompiler", "-fPIC", "-gencode",
                    "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
                    str(tmp_path / "tiny.cu"), "-o", str(so)], check=True, capture_output=True)
    for arch in ARCHS:
        cuda = report.cuda_section(arch, str(so))
        names = [k["name"] for k in cuda["kernels"]]
        assert sorted(names) == ["fpn::ones(float*)",
                                 "void vec_add<float, 4>(float const*, float*, int)"], names
        vec = next(k for k in cuda["kernels"] if k["name"].startswith("void vec_add"))
        assert vec["arch"] == f"sm_{arch}" and vec["global_loads"] == {"128b": 1}
        assert vec["global_stores"] == {"128b": 1} and vec["spills"] == 0
        md = report.markdown({"arch": f"sm_{arch}", "model": report.model(), "triton": [],
                              "cuda": cuda})
        assert "| `void vec_add<float, 4>(float const*, float*, int)` |" in md
    missing = report.cuda_section(86, str(so))
    assert not missing["kernels"] and "no sm_86" in missing["note"]
