"""Static codegen evidence from SASS, for fpnops' CUDA kernels (cubins in fpnops._C) and its
Triton kernels (the cubins Triton compiles) alike: no GPU needed, and no measurement either.

cuobjdump (shipped in Triton's wheel, or PyPI's nvidia-cuda-cuobjdump) disassembles a cubin or
a fat binary into SASS; this module parses it and answers what the codegen checks and the
codegen report ask:
- global_accesses: the width of every global load and store (LDG/STG .128 = 16-byte vectors);
- spills: local-memory loads and stores (LDL/STL) and the stack frame;
- tensor_core_ops: HMMA (mma.sync, sm_80+) and HGMMA (wgmma, sm_90);
- hot_path: the instructions of the kernel's main loop (its largest backward branch, with the
  bodies of the subroutines it calls, e.g. 64-bit division) and the bytes one thread moves per
  trip through it, from which instructions_per_byte and a bandwidth ceiling follow.

The ceiling model (H100 SXM, stated so it can be argued with): an SM issues at most one warp
instruction per scheduler per clock, 4 schedulers, 132 SMs at 1.98 GHz = 1.05e12 warp
instructions/s = 3.35e13 thread instructions/s; HBM3 moves 3.35e12 B/s. A kernel whose hot
path costs more than 10 thread instructions per byte it moves cannot reach memory bandwidth;
MEMORY_BOUND_BUDGET keeps 2x headroom under that (5 per byte).
"""
import dataclasses
import functools
import os
import re
import shutil
import subprocess
from collections import Counter
from typing import Dict, List, Optional

H100_THREAD_INSTR_PER_S = 132 * 4 * 1.98e9 * 32
H100_HBM_BYTES_PER_S = 3.35e12
BALANCE_INSTR_PER_BYTE = H100_THREAD_INSTR_PER_S / H100_HBM_BYTES_PER_S  # ~10
MEMORY_BOUND_BUDGET = BALANCE_INSTR_PER_BYTE / 2  # 2x headroom

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNCTION = re.compile(r"Function : (\S+)")
_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_ARCH = re.compile(r"arch = (sm_\d+a?)")


@functools.lru_cache(maxsize=None)
def cuobjdump():
    """Path of a cuobjdump: $CUOBJDUMP, the one in Triton's wheel, or one on PATH; else None."""
    if os.environ.get("CUOBJDUMP"):
        return os.environ["CUOBJDUMP"]
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return shutil.which("cuobjdump")


@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "" or "@P0", "@!P1", ...
    opcode: str  # with modifiers: "LDG.E.128.CONSTANT"
    operands: str

    @property
    def base(self):
        return self.opcode.split(".")[0]


@dataclasses.dataclass
class Kernel:
    name: str
    arch: str
    instrs: List[Instr]
    registers: Optional[int] = None
    stack: Optional[int] = None
    shared: Optional[int] = None
    local: Optional[int] = None


def _run(args):
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("no cuobjdump: install triton (it ships one) or nvidia-cuda-cuobjdump, "
                           "or set CUOBJDUMP")
    proc = subprocess.run([tool, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(args)} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def parse_sass(text, arch=""):
    """{kernel name: Kernel} from cuobjdump -sass output (one arch's worth, or a cubin's)."""
    kernels, current = {}, None
    for line in text.splitlines():
        m = _ARCH.search(line)
        if m:
            arch = m.group(1)
        m = _FUNCTION.search(line)
        if m:
            current = kernels[m.group(1)] = Kernel(m.group(1), arch, [])
            continue
        m = _LINE.search(line)
        if m and current is not None:
            pred = (m.group(2) or "").strip()
            current.instrs.append(Instr(int(m.group(1), 16), pred, m.group(3), m.group(4).strip()))
    return kernels


def parse_res_usage(text, kernels):
    for m in _RES.finditer(text):
        k = kernels.get(m.group(1))
        if k is not None:
            k.registers, k.stack, k.shared, k.local = (int(m.group(i)) for i in range(2, 6))
    return kernels


def kernels_of(path, arch):
    """Every kernel of `arch` (e.g. "sm_90") in a cubin or a binary holding fat binaries
    (fpnops._C's .so), with its SASS and resource usage."""
    kernels = parse_sass(_run(["-sass", "-arch", arch, path]), arch)
    return parse_res_usage(_run(["-res-usage", "-arch", arch, path]), kernels)


def kernels_of_cubin(cubin: bytes, arch):
    """The same for a cubin in memory (Triton's compiled kernels)."""
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return kernels_of(f.name, arch)


_WIDTH = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def access_width(instr):
    """Bits one thread moves with a global load or store (LDG/STG; 32 unless a width says)."""
    for part in instr.opcode.split(".")[1:]:
        if part in _WIDTH:
            return _WIDTH[part]
    return 32


def global_accesses(instrs):
    """Counter of ("load" | "store", width in bits) over LDG/STG (and their async forms)."""
    c = Counter()
    for i in instrs:
        if i.base in ("LDG", "LDGSTS"):
            c[("load", access_width(i))] += 1
        elif i.base == "STG":
            c[("store", access_width(i))] += 1
    return c


def spills(kernel):
    """Local-memory traffic (register spills): LDL/STL instructions, and the stack frame."""
    n = sum(i.base in ("LDL", "STL") for i in kernel.instrs)
    return {"ldl_stl": n, "stack": kernel.stack, "local": kernel.local}


def tensor_core_ops(instrs):
    """Counter of tensor-core instructions: HMMA (mma.sync), HGMMA (wgmma), IMMA, ..."""
    return Counter(i.base for i in instrs if i.base in ("HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA",
                                                        "QGMMA", "BMMA"))


def _branch_target(instr):
    m = re.match(r"(0x[0-9a-f]+)", instr.operands)
    return int(m.group(1), 16) if m else None


def _subroutine(kernel, start):
    """Instructions from `start` to the first RET (a called helper, e.g. 64-bit division)."""
    out = []
    for i in kernel.instrs:
        if i.addr >= start:
            out.append(i)
            if i.base == "RET":
                break
    return out


def hot_path(kernel):
    """The instructions of the kernel's main loop: the span of its largest backward branch (a
    grid-stride loop), or the whole kernel where there is none, plus the body of every
    subroutine called from it (once per call site). An upper bound on one trip: both sides of
    a branch inside the loop count."""
    loops = [(t, i.addr) for i in kernel.instrs if i.base == "BRA"
             for t in [_branch_target(i)] if t is not None and t < i.addr]
    if loops:
        lo, hi = max(loops, key=lambda span: span[1] - span[0])
        body = [i for i in kernel.instrs if lo <= i.addr <= hi]
    else:
        ends = [i.addr for i in kernel.instrs if i.base == "EXIT"]
        last = max(ends) if ends else kernel.instrs[-1].addr
        body = [i for i in kernel.instrs if i.addr <= last]
    extra = []
    for i in body:
        if i.base == "CALL":
            target = _branch_target(i)
            if target is not None and not any(lo_i.addr == target for lo_i in body):
                extra += _subroutine(kernel, target)
    return body + extra


def bytes_per_trip(instrs):
    """Bytes one thread moves through global memory in `instrs` (each access counted once)."""
    return sum(w // 8 * n for (_, w), n in global_accesses(instrs).items())


def instructions_per_byte(kernel):
    path = hot_path(kernel)
    moved = bytes_per_trip(path)
    return len(path) / moved if moved else float("inf")


def summary(kernel):
    """One kernel's codegen facts, as the report and the checks use them."""
    path = hot_path(kernel)
    acc = global_accesses(kernel.instrs)
    per_byte = len(path) / bytes_per_trip(path) if bytes_per_trip(path) else None
    return {
        "kernel": kernel.name, "arch": kernel.arch, "registers": kernel.registers,
        "stack": kernel.stack, "shared": kernel.shared, "spills": spills(kernel)["ldl_stl"],
        "global_loads": {f"{w}b": n for (kind, w), n in sorted(acc.items()) if kind == "load"},
        "global_stores": {f"{w}b": n for (kind, w), n in sorted(acc.items()) if kind == "store"},
        "tensor_core": dict(tensor_core_ops(kernel.instrs)),
        "hot_path_instructions": len(path), "hot_path_bytes": bytes_per_trip(path),
        "instructions_per_byte": per_byte,
        # The bandwidth fraction the issue rate allows (1.0: memory-bound with room to spare).
        "h100_bandwidth_ceiling": None if per_byte is None else min(1.0, BALANCE_INSTR_PER_BYTE / per_byte),
    }


def demangle(names: Dict[str, Kernel]):
    """{readable name: Kernel} via c++filt where available (kernel names are mangled)."""
    tool = shutil.which("c++filt")
    if tool is None:
        return dict(names)
    keys = list(names)
    out = subprocess.run([tool], input="\n".join(keys), capture_output=True, text=True).stdout.splitlines()
    return {pretty: names[k] for k, pretty in zip(keys, out)} if len(out) == len(keys) else dict(names)
