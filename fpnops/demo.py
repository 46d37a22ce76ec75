"""fpnops demo: the seed's ResNet50-FPN feature maps on a real image, reference vs fused.

Runs the seeds' reference ResNet50 + FPN (notebook variant, P2..P6) and fpnops.fuse() of it on
one photograph (scikit-image's astronaut unless --image is given), checks that every level
agrees, times both (interleaved rounds, medians) and writes the seed notebook's two pictures
(fpn_features.png, activation_histograms.png) and demo.json into --out.

No pretrained weights are downloaded: the model is randomly initialised from --seed, and its
BatchNorm running statistics and affine parameters are randomised too (fresh ones are the
identity, which would make folding them into the convolutions a no-op).
Exit status: 0 when fused and reference agree, 1 when they do not, 2 on a usage error.
"""
import argparse
import collections
import datetime
import json
import os
import platform
import shlex

import torch
import torch.nn as nn
import torch.nn.functional as F

import fpnops
from fpnops.bench import image_size, positive_int, rel_err
from fpnops.bench.timing import compare, machine, summarize

LEVELS = ("P2", "P3", "P4", "P5", "P6")
TOLERANCE = 1e-4  # float32: BN folding moves a ResNet50's outputs ~1e-6 relative
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def add_arguments(p):
    p.add_argument("--image", metavar="PATH",
                   help="any image PIL opens (default: skimage.data.astronaut(), needs scikit-image)")
    p.add_argument("--size", type=image_size, default=(800, 800),
                   help="resize the image to N x N or H x W, as HxW (default: 800, as the seed)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default: cpu")
    p.add_argument("--rounds", type=positive_int, default=5, help="timed rounds of each model (default: 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: 0)")
    p.add_argument("--out", metavar="DIR", default="fpnops-demo",
                   help="where the pictures and demo.json go (default: ./fpnops-demo)")


class BackboneFPN(nn.Module):
    """The seed's pipeline in one module: image -> C2..C5 -> P2..P6."""

    def __init__(self):
        super().__init__()
        self.backbone = fpnops.reference.ResNet50()
        self.fpn = fpnops.reference.FPN()

    def forward(self, x):
        return self.fpn(*self.backbone(x))


def build_model(seed):
    torch.manual_seed(seed)
    model = BackboneFPN()
    # Ranges keep the (small, default-init) activations in a sane range over 16 blocks while
    # making every BN a real per-channel scale and shift.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t, lo, hi in ((m.running_mean, -0.1, 0.1), (m.running_var, 0.5, 2.0),
                                  (m.weight, 0.5, 1.5), (m.bias, -0.1, 0.1)):
                    t.uniform_(lo, hi)
    return model.eval()


def load_image(path, parser):
    """(uint8 HxWx3 array, description); usage errors name --image or the missing package."""
    import numpy as np
    if path is None:
        try:
            from skimage import data
        except ImportError:
            parser.error("no --image given and scikit-image (for its sample photograph) is not "
                         "installed: pass --image PATH, or pip install scikit-image "
                         "(or pip install \"fpnops[demo]\")")
        try:
            return data.astronaut(), "skimage.data.astronaut()"
        except Exception as e:  # a stripped scikit-image may try to download it, offline
            parser.error(f"scikit-image's sample photograph could not be loaded ({e}): pass --image PATH")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")), path
    except (OSError, UnidentifiedImageError, ValueError) as e:  # missing, unreadable, not an image
        parser.error(f"--image {path}: " + (e.strerror if isinstance(e, OSError) and e.strerror
                                             else f"not an image PIL can read ({e})"))


def to_input(rgb, size):
    """uint8 HxWx3 -> (float 1x3xHxW in [0, 1] at `size`, its ImageNet-normalised copy)."""
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x, (x - mean) / std


def save_pictures(out, image, feats):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    paths = [os.path.join(out, "fpn_features.png"), os.path.join(out, "activation_histograms.png")]
    fig, axes = plt.subplots(1, 6, figsize=(24, 4))
    axes[0].imshow(image[0].permute(1, 2, 0).numpy())
    axes[0].set_title(f"input\n{image.shape[-2]}x{image.shape[-1]}")
    for ax, name, feat in zip(axes[1:], LEVELS, feats):
        ax.imshow(feat[0].mean(dim=0).cpu().numpy(), cmap="viridis")  # mean over channels
        ax.set_title(f"{name}\n{feat.shape[-2]}x{feat.shape[-1]}")
    for ax in axes:
        ax.axis("off")
    fig.suptitle("FPN Feature Maps (mean activation)", fontsize=13)
    fig.savefig(paths[0], dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3))
    for ax, name, feat in zip(axes, LEVELS, feats[:4]):
        ax.hist(feat[0].flatten().cpu().numpy(), bins=50, color="steelblue", alpha=0.7)
        ax.set_title(f"{name} activations")
        ax.set_xlabel("Value")
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths


def run(args, parser=None):
    parser = parser or argparse.ArgumentParser(prog="fpnops demo")
    # Every usage error before the minute of compute, not after it.
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.error("the pictures need matplotlib: pip install matplotlib (or pip install \"fpnops[demo]\")")
    rgb, source = load_image(args.image, parser)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {args.out}: cannot create the directory ({e.strerror or e})")
    image, x = to_input(rgb, args.size)
    x = x.to(args.device)
    if args.device == "cuda":  # TF32 convolutions would differ ~1e-3 from anything: compare in float32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    ref = build_model(args.seed).to(args.device)
    fused = fpnops.fuse(ref)  # a converted deep copy; `ref` stays the plain PyTorch model
    # Proof that fuse() recognised the blocks: a model it left alone would "agree" trivially.
    kinds = collections.Counter(name for name in (type(m).__name__ for m in fused.modules())
                                if name.startswith("Fused"))
    n_ref, n_fused = (sum(p.numel() for p in m.parameters()) for m in (ref, fused))
    print(f"image: {source}, {rgb.shape[0]}x{rgb.shape[1]} -> resized to {args.size[0]}x{args.size[1]}, "
          "ImageNet-normalised")
    print(f"model: reference ResNet50 + FPN, random weights (seed {args.seed}; no pretrained weights "
          "offline), BatchNorm running stats and affine randomised so that folding them matters")
    print("fused: " + (", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "NOTHING converted"))
    print(f"Total backbone+FPN parameters: {n_ref:,} (fused model: {n_fused:,})")

    with torch.no_grad():
        want, got = ref(x), fused(x)
        levels = {name: {"shape": list(w.shape), "rel_err": rel_err(g, w, exact=False)}
                  for name, w, g in zip(LEVELS, want, got)}
        samples = compare({"reference": lambda: ref(x), "fused": lambda: fused(x)}, args.device,
                          rounds=args.rounds, warmup=1)
    stats = summarize(samples, "reference")
    print(f"{'level':<6} {'shape':<16} rel err (fused vs reference, float64 norms)")
    for name, lv in levels.items():
        print(f"{name:<6} {'x'.join(map(str, lv['shape'])):<16} {lv['rel_err']:.2e}")
    ok = bool(kinds) and n_ref == n_fused and all(lv["rel_err"] < TOLERANCE for lv in levels.values())
    print(f"all levels agree within {TOLERANCE:.0e} (float32)" if ok else
          f"MISMATCH: fused and reference disagree (tolerance {TOLERANCE:.0e}, float32)")
    r, f = stats["reference"], stats["fused"]
    print(f"timing on {args.device} ({args.rounds} interleaved round{'s' * (args.rounds > 1)}, median): "
          f"reference {r['median_ms']:.1f} ms, fused {f['median_ms']:.1f} ms, speedup {f['speedup']:.2f}x")

    paths = save_pictures(args.out, image, [g.float() for g in got])
    paths.append(os.path.join(args.out, "demo.json"))
    payload = {"command": getattr(args, "prog", "fpnops") + " " + shlex.join(getattr(args, "argv", None) or ["demo"]),
               "image": source, "image_size": list(rgb.shape[:2]), "size": list(args.size),
               "device": args.device, "dtype": "float32", "seed": args.seed, "bn_randomized": True,
               "fused_modules": dict(kinds), "parameters": {"reference": n_ref, "fused": n_fused},
               "levels": levels, "tolerance": TOLERANCE, "ok": ok,
               "timing": {"rounds": args.rounds, **stats},
               "versions": {"fpnops": fpnops.__version__, "torch": torch.__version__,
                            "python": platform.python_version()},
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {k: v for k, v in machine().items() if k in ("cpu", "cpu_count", "cpu_threads", "gpu")}}
    with open(paths[-1], "w") as fh:
        json.dump(payload, fh, indent=2)
    for path in paths:
        print(f"wrote {path}")
    return 0 if ok else 1
