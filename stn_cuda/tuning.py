"""Speed settings: choices of how the image kernels do their work that change no result
beyond rounding (unlike deterministic mode, which promises the same bits run after run).
The kernels read them at each launch: the CPU's cpu_gathers alone, CUDA's the others.

scatter: how the backward ('bilinear' and 'nearest') adds into grad_input, which every
output point reaches through its four corners:

  'atomic'  one atomic add per point, corner and channel, as torch's kernel makes
            (the default)
  'warp'    the lanes of a warp whose points share a corner sum their values with
            shuffles first, and one atomic add goes out per run of them: far fewer,
            less contended atomics where a transform zooms in (hundreds of output
            points per input pixel), a few instructions per point elsewhere

channel_vectors: on a channels_last input whose pixels hold their channels in whole
16-byte vectors (C a multiple of 4 in float32, of 8 in float16 and bfloat16, of 2 in
float64; the data 16-byte aligned), the 'bilinear' and 'nearest' kernels read 16 bytes
of a pixel's channels per load, and the backward adds into grad_input 4 floats per
atomic (in a build for sm_90 or newer; one float per atomic otherwise). False (the
default) reads one channel at a time. Inputs it does not fit, and those too large for
32-bit offsets (about 2^31 elements a batch element, 2^30 output points), take the
default kernels. Where it applies, it takes the place of scatter='warp'.

cpu_gathers: on a CPU with AVX-512, the 'bilinear' and 'nearest' forward and the
'bilinear' backward (grid_sample and affine_sample, float32, inputs that take 32-bit
offsets) read a neighbour of 16 output points per gather instruction. True (the default)
uses them where the CPU and build have them (stn_cuda._C.cpu_has_gathers()) and is
ignored elsewhere; False reads one at a time. The same bits either way. (A backward
asked for grad_input alone reads no neighbours, but with more than one channel it
takes the same path, for its order: 16 points through every channel.)

With atomics the order of the sums varies from run to run in every setting. The
deterministic backward has no atomics and ignores scatter; its bits are the same run
after run for the same settings (channel_vectors changes the fixed order in which a
point's grid gradient is summed). 'bicubic' and volumes ignore both settings.
python -m benchmarks times the settings beside the defaults, in the same run.
"""
import contextlib

from . import _C

__all__ = ["set_tuning", "get_tuning", "use_tuning"]

# name: (ops.cpp's TuningSetting, the values in the order of their codes; the first
# is the default)
_SETTINGS = {
    "scatter": (0, ("atomic", "warp")),
    "channel_vectors": (1, (False, True)),
    "cpu_gathers": (2, (True, False)),
}


def _codes(settings: dict) -> dict:
    """{setting index: code} for settings, or ValueError naming the bad one."""
    codes = {}
    for name, value in settings.items():
        if name not in _SETTINGS:
            raise ValueError(f"stn_cuda.set_tuning(): expected settings among "
                             f"{', '.join(_SETTINGS)}, got {name!r}")
        index, values = _SETTINGS[name]
        matches = [code for code, v in enumerate(values) if type(v) is type(value) and v == value]
        if not matches:
            raise ValueError(f"stn_cuda.set_tuning(): expected {name} to be one of "
                             f"{', '.join(map(repr, values))}, got {value!r}")
        codes[index] = matches[0]
    return codes


def set_tuning(**settings) -> None:
    """Set the named settings from now on, e.g. set_tuning(scatter='warp'); the others
    keep theirs. Nothing changes where one of them is bad (ValueError)."""
    for index, code in _codes(settings).items():
        _C.set_tuning(index, code)


def get_tuning() -> dict:
    """The settings in force, by name: {'scatter': 'atomic', 'channel_vectors': False,
    'cpu_gathers': True} by default."""
    return {name: values[_C.tuning(index)] for name, (index, values) in _SETTINGS.items()}


@contextlib.contextmanager
def use_tuning(**settings):
    """set_tuning(**settings) within the block, the previous settings after it."""
    previous = get_tuning()
    set_tuning(**settings)
    try:
        yield
    finally:
        set_tuning(**previous)
