"""stn_cuda's benchmark suite: python -m benchmarks [--quick] [--device cpu|cuda] ...

Times stn_cuda's sampler and fused affine sampler against torch's (and kornia's,
when installed) on the same inputs in the same run, forward, backward and both,
after checking each result against torch; writes results.json, results.md and
speedup.png to --out (bench-out/ by default).

  workloads.py    the named workloads, their tensors, and the memory-traffic model
  impls.py        the implementations compared, in two families (sampler, affine)
  checks.py       correctness of each implementation before it is timed
  timing.py       CUDA-event and perf_counter timing, L2 flushing, copy bandwidth
  suite.py        one case: check, time, make rows
  report.py       results.json, results.md, speedup.png
  environment.py  command, device, versions, commit, date
  memory.py       peak GPU memory of affine_sample against affine_grid + grid_sample
"""
