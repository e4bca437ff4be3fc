// Stands in for torch's c10/cuda/CUDAStream.h where the CUDA kernels are
// built for the CPU (see CUDAException.h beside it): one stream, whose work
// is done by the time a launch returns.
#pragma once

#include "cuda_emulator.h"

namespace c10::cuda {

struct CUDAStream {
  operator cudaStream_t() const { return nullptr; }
};

inline CUDAStream getCurrentCUDAStream(signed char = -1) { return {}; }

}  // namespace c10::cuda
