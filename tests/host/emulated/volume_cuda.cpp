// csrc/cuda/volume_cuda.cu built for the CPU against tests/host/cuda_emulator.h, for
// the tests (setup.py's STN_CUDA_EMULATE=1).
#include "cuda_emulator.h"

#include "cuda/volume_cuda.cu"
