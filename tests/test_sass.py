"""fpnops.bench.sass: the SASS parser the codegen checks and report stand on, on a fixed
listing (what cuobjdump prints), so its counting is pinned independently of any compiler."""
from fpnops.bench import sass

LISTING = """
Fatbin elf code:
================
arch = sm_90
		Function : _Z4demoPf
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R2, SR_TID.X ;
        /*0020*/               @P0 EXIT ;
        /*0030*/                   LDG.E.128 R12, desc[UR16][R24.64] ;
        /*0040*/                   LDG.E.U16.CONSTANT R8, desc[UR16][R8.64] ;
        /*0050*/                   HGMMA.64x128x16.F32 R24, gdesc[UR4], R24 ;
        /*0060*/                   CALL.REL.NOINC 0x00c0 ;
        /*0070*/                   STG.E.128 desc[UR16][R2.64], R12 ;
        /*0080*/                   STL [R1], R3 ;
        /*0090*/              @!P1 BRA 0x0030 ;
        /*00a0*/                   EXIT ;
        /*00b0*/                   BRA 0x00b0 ;
        /*00c0*/                   IMAD R0, R1, R2, RZ ;
        /*00d0*/                   RET.REL.NODEC R4 0x0 ;
"""


def test_parse_and_count():
    k = sass.parse_sass(LISTING)["_Z4demoPf"]
    assert k.arch == "sm_90" and len(k.instrs) == 14
    assert k.instrs[2].pred == "@P0" and k.instrs[3].opcode == "LDG.E.128"
    assert sass.global_accesses(k.instrs) == {("load", 128): 1, ("load", 16): 1, ("store", 128): 1}
    assert sass.spills(k)["ldl_stl"] == 1
    assert sass.tensor_core_ops(k.instrs) == {"HGMMA": 1}
    path = sass.hot_path(k)  # the loop 0x30..0x90 (7) plus the called 0xc0..0xd0 (2)
    assert [i.addr for i in path] == [0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xc0, 0xd0]
    assert sass.bytes_per_trip(path) == 16 + 2 + 16
    assert sass.instructions_per_byte(k) == 9 / 34


def test_budget_model():
    # 132 SMs x 4 schedulers x 1.98 GHz x 32 lanes against 3.35 TB/s: ~10 per byte, 5 with 2x room
    assert 9.9 < sass.BALANCE_INSTR_PER_BYTE < 10.1
    assert sass.MEMORY_BOUND_BUDGET == sass.BALANCE_INSTR_PER_BYTE / 2
