"""upsample_add's bad inputs, in child interpreters (tests/helpers.assert_bad_inputs): each must
raise a ValueError/TypeError/RuntimeError naming the argument, what was expected and what came,
never crash, hang or answer. Through the Python face on every backend, through the compiled and
Triton ops called directly, and through FusedFPN."""
from helpers import assert_bad_inputs, backends_for

import fpnops

SETUP = """
import warnings
warnings.simplefilter("ignore")
import torch, fpnops
T = torch.randn(2, 3, 5, 7)
L = torch.randn(2, 3, 10, 14)
NESTED = torch.nested.nested_tensor([torch.randn(3, 5, 7), torch.randn(3, 5, 7)])
JAGGED = torch.nested.nested_tensor([torch.randn(3, 5, 7), torch.randn(3, 4, 7)], layout=torch.jagged)
"""

# (id, call arguments, exception, message regex): each runs as fpnops.upsample_add(<args>,
# backend=...) for every backend that runs here.
FACE = [
    ("C differs", "torch.randn(2, 4, 5, 7), L", "ValueError", r"same N and C.*\(2, 4, 5, 7\).*\(2, 3, 10, 14\)"),
    ("N differs", "torch.randn(1, 3, 5, 7), L", "ValueError", r"same N and C"),
    ("top 3-D", "torch.randn(3, 5, 7), L", "ValueError", r"top must be 4-D.*got 3-D"),
    ("lateral 5-D", "T, torch.randn(2, 3, 10, 14, 1)", "ValueError", r"lateral must be 4-D.*got 5-D"),
    ("dtypes differ", "T.double(), L", "TypeError", r"same dtype.*float64.*float32"),
    ("int32", "T.int(), L.int()", "TypeError", r"floating dtype.*torch.int32"),
    ("int64", "T.long(), L.long()", "TypeError", r"floating dtype.*torch.int64"),
    ("bool", "T > 0, L > 0", "TypeError", r"floating dtype.*torch.bool"),
    ("complex", "T.cfloat(), L.cfloat()", "TypeError", r"floating dtype.*torch.complex64"),
    ("float8", "T.to(torch.float8_e4m3fn), L.to(torch.float8_e4m3fn)", "TypeError", r"floating dtype.*float8_e4m3fn"),
    ("scale 3 vs sizes", "T, L, scale_factor=3", "ValueError", r"scale_h=3.0 turns top size 5 into 15.*lateral has size 10"),
    ("scale pair vs sizes", "T, L, scale_factor=(2, 2.5)", "ValueError", r"scale_w=2.5 turns top size 7 into 17"),
    ("scale 0", "T, L, scale_factor=0", "ValueError", r"scale_factor must be positive"),
    ("scale negative", "T, L, scale_factor=-2", "ValueError", r"scale_factor must be positive"),
    ("scale nan", "T, L, scale_factor=float('nan')", "ValueError", r"scale_factor must be positive"),
    ("scale inf", "T, L, scale_factor=float('inf')", "ValueError", r"scale_factor must be positive and finite, got inf"),
    ("scale 1.7e308", "T, L, scale_factor=1.7e308", "ValueError", r"scale_factor scale_h=1.7e\+308 turns top size 5 into inf"),
    ("scale 1e300", "T, L, scale_factor=1e300", "ValueError", r"scale_factor scale_h=1e\+300 turns top size 5 into 5e\+300"),
    ("scale 10**400", "T, L, scale_factor=10**400", "ValueError", r"scale_factor must be positive and finite, got 1000"),
    ("scale pair 10**400", "T, L, scale_factor=(2, 10**400)", "ValueError", r"scale_factor must be positive and finite"),
    ("scale 3 numbers", "T, L, scale_factor=(2, 2, 2)", "TypeError", r"scale_factor must be a number or a pair"),
    ("scale str", "T, L, scale_factor='2'", "TypeError", r"scale_factor must be a number or a pair"),
    ("scale bool", "T, L, scale_factor=True", "TypeError", r"scale_factor must be a number or a pair"),
    ("scale tensor", "T, L, scale_factor=torch.tensor(2.0)", "TypeError", r"scale_factor must be a number or a pair"),
    ("top ndarray", "T.numpy(), L", "TypeError", r"top must be a torch.Tensor, got ndarray"),
    ("lateral list", "T, [1, 2]", "TypeError", r"lateral must be a torch.Tensor, got list"),
    ("top empty spatial", "torch.randn(2, 3, 0, 7), L", "ValueError", r"top has an empty spatial size"),
    ("devices differ", "T, torch.empty(2, 3, 10, 14, device='meta')", "ValueError", r"same device.*cpu.*meta"),
    ("top nested", "NESTED, L", "TypeError", r"top must be a dense \(strided\) tensor, got a nested tensor"),
    ("top jagged", "JAGGED, L", "TypeError", r"top must be a dense \(strided\) tensor, got a nested tensor"),
    ("lateral nested", "T, NESTED", "TypeError", r"lateral must be a dense \(strided\) tensor, got a nested tensor"),
    ("top sparse", "T.to_sparse(), L", "TypeError", r"top must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    ("lateral sparse csr", "T, L.to_sparse_csr()", "TypeError", r"lateral must be .*dense.*got layout torch.sparse_csr"),
    ("top mkldnn", "T.to_mkldnn(), L", "TypeError", r"top must be a dense \(strided\) tensor, got layout torch._mkldnn"),
]

# (id, code, exception, message regex): the backend argument and backends that cannot run.
BACKEND_ARG = [
    ("backend unknown", "fpnops.upsample_add(T, L, backend='cudnn')", "ValueError", r"backend must be one of.*'cudnn'"),
    ("backend None", "fpnops.upsample_add(T, L, backend=None)", "ValueError", r"backend must be one of"),
    ("backend int", "fpnops.upsample_add(T, L, backend=1)", "ValueError", r"backend must be one of.*got 1"),
    ("native on meta", "fpnops.upsample_add(torch.empty(2, 3, 5, 7, device='meta'), "
     "torch.empty(2, 3, 10, 14, device='meta'), backend='native')", "RuntimeError",
     r"backend='native' is not available for meta"),
]
TRITON_WITHOUT_INTERPRETER = (
    "triton on cpu without the interpreter",
    "import os\nos.environ.pop('TRITON_INTERPRET', None)\nfpnops.upsample_add(T, L, backend='triton')",
    "RuntimeError", r"backend='triton'.*TRITON_INTERPRET=1")
NATIVE_CUDA_NOT_BUILT = (
    "native on cuda in a CPU-only build", "fpnops._backend.resolve('upsample_add', 'native', torch.device('cuda'))",
    "RuntimeError", r"backend='native' is not available for cuda tensors: this fpnops was built without CUDA")

# Direct calls of the compiled op and of the Triton op (no Python face before them). The C++
# kernels raise RuntimeError (TypeError for layouts); the Triton ops and the fake (meta) kernels
# share the Python face's checks: ValueError or TypeError.
V, TY = ("ValueError", "RuntimeError"), ("TypeError", "RuntimeError")
DIRECT_FORWARD = [
    ("C differs", "torch.randn(2, 4, 5, 7), L", V, r"same N and C"),
    ("lateral 3-D", "T, torch.randn(3, 10, 14)", V, r"lateral must be 4-D.*got 3-D"),
    ("dtypes differ", "T, L.double()", TY, r"same dtype"),
    ("int32", "T.int(), L.int()", TY, r"floating dtype"),
    ("float8", "T.to(torch.float8_e4m3fn), L.to(torch.float8_e4m3fn)", TY, r"floating dtype.*(F|f)loat8_e4m3fn"),
    ("scale 3 vs sizes", "T, L, 3.0, None", V, r"scale_h=3(\.0)? turns top size 5 into 15"),
    ("scale_w vs sizes", "T, L, None, 2.5", V, r"scale_w=2.5 turns top size 7 into 17"),
    ("scale 1.7e308", "T, L, 1.7e308, None", V, r"scale_h=1.7e\+308 turns top size 5 into inf"),
    ("scale 1e300", "T, L, 1e300, None", V, r"scale_h=1e\+300 turns top size 5 into 5e\+300"),
    ("scale inf", "T, L, float('inf'), None", V, r"scale_h must be a positive finite number, got inf"),
    ("scale nan", "T, L, None, float('nan')", V, r"scale_w must be a positive finite number"),
    ("scale 0", "T, L, 0.0, None", V, r"scale_h must be a positive finite number, got 0"),
    ("scale negative", "T, L, -2.0, None", V, r"scale_h must be a positive finite number, got -2"),
    ("top empty spatial", "torch.randn(2, 3, 0, 7), L", V, r"top has an empty spatial size"),
    ("cpu top, meta lateral", "T, torch.empty(2, 3, 10, 14, device='meta')", V, r"same device.*cpu.*meta"),
    ("meta top, cpu lateral", "torch.empty(2, 3, 5, 7, device='meta'), L", V, r"same device.*meta.*cpu"),
    ("meta, scale vs sizes", "torch.empty(2, 3, 5, 7, device='meta'), torch.empty(2, 3, 10, 14, device='meta'), 3.0, None",
     V, r"scale_h=3(\.0)? turns top size 5 into 15"),
    ("top nested", "NESTED, L", "TypeError", r"top must be a dense \(strided\) tensor, got a nested tensor"),
    ("top jagged", "JAGGED, L", "TypeError", r"top must be a dense \(strided\) tensor, got a nested tensor"),
    ("lateral nested", "T, NESTED", "TypeError", r"lateral must be a dense \(strided\) tensor, got a nested tensor"),
    ("top sparse", "T.to_sparse(), L", "TypeError", r"top must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    ("lateral sparse, top needs grad", "T.detach().requires_grad_(), L.to_sparse()", "TypeError", r"lateral must be a dense.*sparse_coo"),
    ("lateral sparse csr", "T, L.to_sparse_csr()", "TypeError", r"lateral must be a dense.*sparse_csr"),
    ("top mkldnn", "T.to_mkldnn(), L", "TypeError", r"top must be a dense \(strided\) tensor, got layout torch._mkldnn"),
]

DIRECT_BACKWARD = [
    ("grad 3-D", "torch.randn(3, 10, 14), 5, 7", V, r"grad must be 4-D"),
    ("grad int", "L.int(), 5, 7", TY, r"grad must have a floating dtype.*(I|i)nt"),
    ("top_h negative", "L, -1, 7", V, r"top_h and top_w must be >= 0, got -1 and 7"),
    ("top_w negative", "L, 5, -7", V, r"top_h and top_w must be >= 0, got 5 and -7"),
    ("scale vs sizes", "L, 5, 7, 3.0, None", V, r"scale_h=3(\.0)? turns top size 5 into 15, but grad has size 10"),
    ("scale 1.7e308", "L, 5, 7, None, 1.7e308", V, r"scale_w=1.7e\+308 turns top size 7 into inf"),
    ("scale inf", "L, 5, 7, float('inf'), None", V, r"scale_h must be a positive finite number"),
    ("meta grad, scale vs sizes", "torch.empty(2, 3, 10, 14, device='meta'), 5, 7, 3.0, None", V,
     r"scale_h=3(\.0)? turns top size 5 into 15"),
    ("grad nested", "NESTED, 5, 7", "TypeError", r"grad must be a dense \(strided\) tensor, got a nested tensor"),
    ("grad jagged", "JAGGED, 5, 7", "TypeError", r"grad must be a dense \(strided\) tensor, got a nested tensor"),
    ("grad sparse", "L.to_sparse(), 5, 7", "TypeError", r"grad must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    ("grad mkldnn", "L.to_mkldnn(), 5, 7", "TypeError", r"grad must be a dense \(strided\) tensor, got layout torch._mkldnn"),
]

FPN_SETUP = SETUP + """
from collections import OrderedDict
import torch.nn as nn
FPN = fpnops.FusedFPN([4, 8], 6).eval()
def levels(*shapes):
    return OrderedDict((str(i), torch.randn(*s)) for i, s in enumerate(shapes))
"""

FUSED_FPN = [
    ("backend", "fpnops.FusedFPN([4, 8], 6, backend='fast')", "ValueError", r"backend must be one of.*'fast'"),
    ("in_channels 0", "fpnops.FusedFPN([16, 0], 8)", "ValueError", r"in_channels=0"),
    ("in_channels negative", "fpnops.FusedFPN([16, -1], 8)", "ValueError", r"in_channels_list entries must be positive, got -1"),
    ("in_channels float", "fpnops.FusedFPN([16, 2.5], 8)", "TypeError", r"in_channels_list entries must be ints, got 2.5"),
    ("in_channels_list int", "fpnops.FusedFPN(256, 8)", "TypeError", r"in_channels_list must be a list.*got int"),
    ("in_channels_list str", "fpnops.FusedFPN('256', 8)", "TypeError", r"in_channels_list must be a list.*got str"),
    ("in_channels_list empty", "fpnops.FusedFPN([], 8)", "ValueError", r"in_channels_list must name at least one level"),
    ("out_channels negative", "fpnops.FusedFPN([4, 8], -3)", "ValueError", r"out_channels must be >= 0, got -3"),
    ("out_channels float", "fpnops.FusedFPN([4, 8], 2.5)", "TypeError", r"out_channels must be an int, got 2.5"),
    ("norm_layer str", "fpnops.FusedFPN([4, 8], 6, norm_layer='bn')", "TypeError", r"norm_layer must be None or callable.*str"),
    ("extra_blocks str", "fpnops.FusedFPN([4, 8], 6, extra_blocks='pool')", "TypeError",
     r"extra_blocks should be an ExtraFPNBlock.*str"),
    ("from_module Linear", "fpnops.FusedFPN.from_module(nn.Linear(2, 2))", "TypeError", r"from_module: expected .* got Linear"),
    ("from_module backend", "fpnops.FusedFPN.from_module(FPN, backend='x')", "ValueError", r"backend must be one of.*'x'"),
    ("x list", "FPN([torch.randn(1, 4, 8, 8), torch.randn(1, 8, 4, 4)])", "TypeError", r"x must be a dict.*got list"),
    ("x tensor", "FPN(torch.randn(1, 4, 8, 8))", "TypeError", r"x must be a dict.*got Tensor"),
    ("x empty", "FPN({})", "ValueError", r"x has 0 feature maps, but this FPN has 2 levels"),
    ("x one level short", "FPN(levels((1, 4, 8, 8)))", "ValueError",
     r"x\['0'\] must have 8 channels \(the in_channels of the inner block it goes through\)"),
    ("x value int", "FPN({'0': 3, '1': torch.randn(1, 8, 4, 4)})", "TypeError", r"x\['0'\] must be a torch.Tensor, got int"),
    ("x value 3-D", "FPN(levels((4, 8, 8), (1, 8, 4, 4)))", "ValueError", r"x\['0'\] must be 4-D.*\(4, 8, 8\)"),
    ("x channels", "FPN(levels((1, 5, 8, 8), (1, 8, 4, 4)))", "ValueError", r"x\['0'\] must have 4 channels.*\(1, 5, 8, 8\)"),
    ("x batch sizes", "FPN(levels((2, 4, 8, 8), (3, 8, 4, 4)))", "ValueError",
     r"the maps of x have batch sizes \{'0': 2, '1': 3\} \(besides 1\); they must be equal"),
    ("x empty spatial", "FPN(levels((1, 4, 8, 8), (1, 8, 0, 4)))", "ValueError", r"x\['1'\] has an empty spatial size"),
    ("x sparse", "FPN({'0': torch.randn(1, 4, 8, 8).to_sparse(), '1': torch.randn(1, 8, 4, 4)})", "TypeError",
     r"x\['0'\] must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    ("x nested", "FPN({'0': torch.nested.nested_tensor([torch.randn(4, 8, 8)]), '1': torch.randn(1, 8, 4, 4)})",
     "TypeError", r"x\['0'\] must be a dense \(strided\) tensor, got a nested tensor"),
]


# One child interpreter per test (starting one costs seconds): every backend, every op in it.

def test_python_face_bad_inputs():
    assert_bad_inputs([(f"{backend}: {case_id}", f"fpnops.upsample_add({args}, backend={backend!r})", exc, pattern)
                       for backend in backends_for("cpu")
                       for case_id, args, exc, pattern in FACE], setup=SETUP)


def test_backend_argument_bad_inputs():
    cases = list(BACKEND_ARG)
    if not fpnops.backends()["cuda_compiled"]:
        cases.append(NATIVE_CUDA_NOT_BUILT)
    if fpnops.backends()["triton"]:
        cases.append(TRITON_WITHOUT_INTERPRETER)  # last: it unsets TRITON_INTERPRET
    assert_bad_inputs(cases, setup=SETUP)


def test_direct_op_bad_inputs():
    ops = [("upsample_add", DIRECT_FORWARD), ("upsample_add_backward_top", DIRECT_BACKWARD)]
    if "triton" in backends_for("cpu"):
        ops += [("upsample_add_triton", DIRECT_FORWARD),
                ("upsample_add_backward_top_triton", DIRECT_BACKWARD)]
    assert_bad_inputs([(f"{op}: {case_id}", f"torch.ops.fpnops.{op}({args})", exc, pattern)
                       for op, table in ops for case_id, args, exc, pattern in table], setup=SETUP)


def test_fused_fpn_bad_inputs():
    assert_bad_inputs(FUSED_FPN, setup=FPN_SETUP)


def test_tables_expect_only_the_allowed_errors():
    tables = (FACE, BACKEND_ARG, [TRITON_WITHOUT_INTERPRETER, NATIVE_CUDA_NOT_BUILT],
              DIRECT_FORWARD, DIRECT_BACKWARD, FUSED_FPN)
    for table in tables:
        for case_id, _, exc, _ in table:
            assert set((exc,) if isinstance(exc, str) else exc) <= {"ValueError", "TypeError", "RuntimeError"}, case_id
