// stn_cuda's samplers under torch.autocast: their inputs are cast as torch casts
// those of its grid_sampler (aten/src/ATen/autocast_mode.cpp), with torch's own
// wrappers: on CUDA to the widest floating type among them ("promote"), on the
// CPU to float32 ("fp32"). float64 tensors are left as they are, as in torch.
// affine_grid has no autocast kernel: it runs in theta's dtype. (torch's is a
// composite whose bmm autocast runs in the lower precision: a float32 theta
// gives a float16 or bfloat16 grid, rounded so that a coordinate can be off by
// a pixel on a large image; patch_torch leaves such calls to torch.)
#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace stn {
namespace {

using at::Tensor;
using at::autocast::CastPolicy;

// The ops, called through the dispatcher: the wrappers below call them with
// autocast excluded, so they reach the autograd and device kernels.
Tensor grid_sample(const Tensor& input, const Tensor& grid, int64_t interpolation_mode,
                   int64_t padding_mode, bool align_corners) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("stn_cuda::grid_sample", "")
                             .typed<decltype(grid_sample)>();
  return op.call(input, grid, interpolation_mode, padding_mode, align_corners);
}

Tensor affine_sample(const Tensor& input, const Tensor& theta, c10::SymIntArrayRef out_size,
                     int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("stn_cuda::affine_sample", "")
                             .typed<decltype(affine_sample)>();
  return op.call(input, theta, out_size, interpolation_mode, padding_mode, align_corners);
}

template <CastPolicy policy, c10::DeviceType device, class Op, Op* op>
constexpr auto autocast = &at::autocast::WrapFunction<policy, device, Op, Op, op>::type::call;

}  // namespace

TORCH_LIBRARY_IMPL(stn_cuda, AutocastCPU, m) {
  constexpr auto cpu = c10::DeviceType::CPU;
  m.impl("grid_sample", autocast<CastPolicy::fp32, cpu, decltype(grid_sample), &grid_sample>);
  m.impl("affine_sample",
         autocast<CastPolicy::fp32, cpu, decltype(affine_sample), &affine_sample>);
}

TORCH_LIBRARY_IMPL(stn_cuda, AutocastCUDA, m) {
  constexpr auto cuda = c10::DeviceType::CUDA;
  m.impl("grid_sample", autocast<CastPolicy::promote, cuda, decltype(grid_sample), &grid_sample>);
  m.impl("affine_sample",
         autocast<CastPolicy::promote, cuda, decltype(affine_sample), &affine_sample>);
}

}  // namespace stn
