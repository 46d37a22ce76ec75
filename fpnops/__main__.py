"""fpnops (or python -m fpnops): info (what this install is and would run here), bench (fpnops side by side
with eager PyTorch and torch.compile), demo (the seed's ResNet50-FPN pictures, reference vs
fused, on a real image)."""
import argparse
import os
import sys

import torch

import fpnops
from fpnops import _backend, bench, demo
from fpnops._extension import _C

OPS = ("upsample_add", "conv_bn_act")


def info_lines():
    b = fpnops.backends()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    lines = [
        f"fpnops {fpnops.__version__} ({os.path.dirname(fpnops.__file__)})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}); _C built against torch {_C.torch_version}",
        f"triton {triton_version}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}",
        f"compiled kernels: CPU (ATen CPU capability here: {torch.backends.cpu.get_cpu_capability()}); "
        f"CUDA: {'archs ' + b['cuda_archs'] if b['cuda_compiled'] else 'not built'}",
    ]
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            cap = ".".join(map(str, torch.cuda.get_device_capability(i)))
            lines.append(f"cuda:{i}: {torch.cuda.get_device_name(i)} (sm {cap})")
            devices.append(torch.device("cuda", i))
    else:
        lines.append("no CUDA device visible")
    for op in OPS:
        picks = ", ".join(f"{d.type}: {_backend.resolve(op, 'auto', d)}" for d in devices)
        lines.append(f"{op}: backend='auto' runs {picks}")
    return lines


def prog():
    """How the user called us: the `fpnops` console script, or `python -m fpnops`."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "fpnops" if name in ("fpnops", "fpnops.exe") else "python -m fpnops"


def main(argv=None):
    parser = argparse.ArgumentParser(prog=prog(), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, compiled backends, devices, and what backend='auto' picks")
    commands = {"bench": bench, "demo": demo}
    subparsers = {}
    for name, module in commands.items():
        subparsers[name] = sub.add_parser(name, help=module.__doc__.splitlines()[0].split(": ", 1)[1],
                                          description=module.__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(subparsers[name])
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv, args.prog = argv, parser.prog
    if args.command == "info":
        print("\n".join(info_lines()))
        return 0
    return commands[args.command].run(args, subparsers[args.command])


if __name__ == "__main__":
    sys.exit(main())
