// A kernel body that writes past a local array after waiting at
// __syncthreads, on the emulator (cuda_emulator.h): AddressSanitizer must
// report it (test_device_code_on_host.py), as it does not where the emulator
// lets ASan's swapcontext interceptor clear a fiber's stack at each switch.
#include "cuda_emulator.h"

#include <cstdio>

int main() {
  cuda_emulator::run_block([] {
    int a[4] = {0, 1, 2, 3};
    __syncthreads();
    volatile int i = threadIdx.x == 7 ? 4 : 0;
    a[i] = 1;
    std::printf("%d", a[0]);
  }, 64);
  std::puts("\nno report");
}
