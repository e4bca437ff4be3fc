"""The speed settings (stn_cuda.set_tuning, get_tuning, use_tuning): their values, their
errors, and that the CPU ignores them. What each does on CUDA: test_scatter.py,
test_channel_vectors.py."""
import pytest
import torch

import stn_cuda

from helpers import grads, make, random_theta

DEFAULTS = {"scatter": "atomic", "channel_vectors": False}
EVERY_OTHER = {"scatter": "warp", "channel_vectors": True}


def test_defaults():
    assert stn_cuda.get_tuning() == DEFAULTS


def test_settings_round_trip():
    with stn_cuda.use_tuning(scatter="warp"):
        assert stn_cuda.get_tuning() == {**DEFAULTS, "scatter": "warp"}
        with stn_cuda.use_tuning(channel_vectors=True, scatter="atomic"):
            assert stn_cuda.get_tuning() == {"scatter": "atomic", "channel_vectors": True}
        assert stn_cuda.get_tuning() == {**DEFAULTS, "scatter": "warp"}
    assert stn_cuda.get_tuning() == DEFAULTS
    stn_cuda.set_tuning(**EVERY_OTHER)
    try:
        assert stn_cuda.get_tuning() == EVERY_OTHER
    finally:
        stn_cuda.set_tuning(**DEFAULTS)
    assert stn_cuda.get_tuning() == DEFAULTS


def test_settings_are_restored_after_an_error():
    with pytest.raises(RuntimeError, match="inside"):
        with stn_cuda.use_tuning(**EVERY_OTHER):
            raise RuntimeError("inside")
    assert stn_cuda.get_tuning() == DEFAULTS


@pytest.mark.parametrize("settings, message", [
    ({"scatter": "warps"}, "scatter to be one of 'atomic', 'warp', got 'warps'"),
    ({"scatter": None}, "scatter to be one of"),
    ({"scatter": 1}, "scatter to be one of"),
    ({"channel_vectors": 1}, r"channel_vectors to be one of False, True, got 1"),
    ({"channel_vectors": "yes"}, "channel_vectors to be one of"),
    ({"vectors": True}, "settings among scatter, channel_vectors, got 'vectors'"),
    # a good setting beside a bad one is not applied either
    ({"scatter": "warp", "channel_vectors": None}, "channel_vectors to be one of"),
], ids=["unknown mode", "None", "int", "int for bool", "str for bool", "unknown name", "one bad of two"])
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        stn_cuda.set_tuning(**settings)
    with pytest.raises(ValueError, match=message):
        with stn_cuda.use_tuning(**settings):
            pass
    assert stn_cuda.get_tuning() == DEFAULTS


@pytest.mark.parametrize("bad", [(0, 2), (1, -1), (2, 0), (-1, 0)])
def test_the_extension_checks_codes(bad):
    with pytest.raises(ValueError, match="expected a"):
        stn_cuda._C.set_tuning(*bad)
    assert stn_cuda.get_tuning() == DEFAULTS


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_cpu_ignores_the_settings(mode):
    """Bit for bit the same results, on an input the CUDA settings would apply to
    (channels_last, 8 channels)."""
    input, grid = make((2, 8, 9, 9, 16, 16), "cpu", dtype=torch.float32, spread=0.1)
    input = input.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    theta = random_theta(2, dtype=torch.float32).requires_grad_()
    go = torch.randn(2, 8, 16, 16)

    def run():
        sampled = grads(stn_cuda.grid_sample(input, grid, mode), (input, grid), go)
        fused = grads(stn_cuda.affine_sample(input, theta, (16, 16), mode), (input, theta), go)
        return sampled + fused

    first = run()
    with stn_cuda.use_tuning(**EVERY_OTHER):
        again = run()
    assert all(torch.equal(a, b) for a, b in zip(first, again))
