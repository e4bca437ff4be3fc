// The autograd of the forward ops (grid_sample, affine_sample, affine_grid),
// registered for the Autograd key in C++: a forward+backward costs the host
// about half what it did through the Python layer of
// torch.library.register_autograd (benchmarks/NOTES.md, variant 7). The
// backward ops' own autograd (double backward) stays in Python
// (stn_cuda/_ops.py): it runs only where a graph of a backward is recorded.
//
// A call whose inputs need no gradient goes straight to the kernel, with no
// autograd node, as torch's own ops do. Otherwise each forward saves its tensor
// inputs and options; its backward calls the backward op for the gradients
// that are needed alone (output_mask), straight to the kernel unless a graph of
// the backward is being recorded.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <utility>

#include "kernels.h"

namespace stn {

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// An op called below autograd: a forward's (whose graph the Function records)
// or a backward's whose own graph is not wanted.
template <typename Signature, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& handle, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return handle.call(std::forward<Args>(args)...);
}

// Whether a call goes through its autograd Function: grad mode on and a tensor
// input requiring grad, or an input with a forward-mode tangent (dual tensor),
// which the Function refuses rather than drop it.
bool records_graph(const Tensor& a, const Tensor& b = Tensor()) {
  auto dual = [](const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); };
  if (dual(a) || dual(b)) return true;
  return at::GradMode::is_enabled() && (a.requires_grad() || (b.defined() && b.requires_grad()));
}

// A backward op: through its own autograd where a graph of the backward is
// recorded (create_graph=True: double backward), else straight to its kernel.
template <typename Signature, typename... Args>
auto call_backward(const c10::TypedOperatorHandle<Signature>& handle, Args&&... args) {
  if (at::GradMode::is_enabled()) return handle.call(std::forward<Args>(args)...);
  return call_below_autograd(handle, std::forward<Args>(args)...);
}

using SamplerBackward = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                   int64_t, int64_t, bool, std::array<bool, 2>,
                                                   bool);

void save_sampling(AutogradContext* ctx, int64_t interpolation, int64_t padding,
                   bool align_corners) {
  ctx->saved_data["interpolation"] = interpolation;
  ctx->saved_data["padding"] = padding;
  ctx->saved_data["align_corners"] = align_corners;
}

// A sampler's gradients with respect to its tensor inputs (input, and grid or
// theta) by its backward op, then an undefined one for each of its `options`.
variable_list sampler_backward(AutogradContext* ctx,
                               const c10::TypedOperatorHandle<SamplerBackward>& backward,
                               const Tensor& grad_output, size_t options) {
  const variable_list saved = ctx->get_saved_variables();
  const auto& d = ctx->saved_data;
  auto [grad_input, grad_source] = call_backward(
      backward, grad_output, saved[0], saved[1], d.at("interpolation").toInt(),
      d.at("padding").toInt(), d.at("align_corners").toBool(),
      std::array<bool, 2>{ctx->needs_input_grad(0), ctx->needs_input_grad(1)},
      /*deterministic=*/false);  // unless the flags in force ask for it (ops.cpp)
  variable_list grads{std::move(grad_input), std::move(grad_source)};
  grads.resize(2 + options);
  return grads;
}

}  // namespace

// The Functions, outside the anonymous namespace: their names are the grad_fn's
// (torch::autograd::CppNode<stn::GridSample>).
struct GridSample : torch::autograd::Function<GridSample> {
  static const auto& kernel() {
    static const auto handle =
        op<Tensor(const Tensor&, const Tensor&, int64_t, int64_t, bool)>("stn_cuda::grid_sample");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& grid,
                        int64_t interpolation, int64_t padding, bool align_corners) {
    ctx->save_for_backward({input, grid});
    save_sampling(ctx, interpolation, padding, align_corners);
    return call_below_autograd(kernel(), input, grid, interpolation, padding, align_corners);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto handle = op<SamplerBackward>("stn_cuda::grid_sample_backward");
    return sampler_backward(ctx, handle, grad_outputs[0], 3);
  }
};

struct AffineSample : torch::autograd::Function<AffineSample> {
  static const auto& kernel() {
    static const auto handle =
        op<Tensor(const Tensor&, const Tensor&, c10::SymIntArrayRef, int64_t, int64_t, bool)>(
            "stn_cuda::affine_sample");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& theta,
                        c10::SymIntArrayRef out_size, int64_t interpolation, int64_t padding,
                        bool align_corners) {
    ctx->save_for_backward({input, theta});
    save_sampling(ctx, interpolation, padding, align_corners);
    return call_below_autograd(kernel(), input, theta, out_size, interpolation, padding,
                               align_corners);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto handle = op<SamplerBackward>("stn_cuda::affine_sample_backward");
    return sampler_backward(ctx, handle, grad_outputs[0], 4);
  }
};

struct AffineGrid : torch::autograd::Function<AffineGrid> {
  static const auto& kernel() {
    static const auto handle =
        op<Tensor(const Tensor&, c10::SymIntArrayRef, bool)>("stn_cuda::affine_grid");
    return handle;
  }
  static Tensor forward(AutogradContext* ctx, const Tensor& theta, c10::SymIntArrayRef size,
                        bool align_corners) {
    ctx->saved_data["align_corners"] = align_corners;
    return call_below_autograd(kernel(), theta, size, align_corners);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto handle = op<Tensor(const Tensor&, bool)>("stn_cuda::affine_grid_backward");
    return {call_backward(handle, grad_outputs[0], ctx->saved_data.at("align_corners").toBool()),
            Tensor(), Tensor()};
  }
};

namespace {

Tensor grid_sample(const Tensor& input, const Tensor& grid, int64_t interpolation,
                   int64_t padding, bool align_corners) {
  if (!records_graph(input, grid)) {
    return call_below_autograd(GridSample::kernel(), input, grid, interpolation, padding,
                               align_corners);
  }
  return GridSample::apply(input, grid, interpolation, padding, align_corners);
}

Tensor affine_sample(const Tensor& input, const Tensor& theta, c10::SymIntArrayRef out_size,
                     int64_t interpolation, int64_t padding, bool align_corners) {
  if (!records_graph(input, theta)) {
    return call_below_autograd(AffineSample::kernel(), input, theta, out_size, interpolation,
                               padding, align_corners);
  }
  return AffineSample::apply(input, theta, out_size, interpolation, padding, align_corners);
}

Tensor affine_grid(const Tensor& theta, c10::SymIntArrayRef size, bool align_corners) {
  if (!records_graph(theta)) {
    return call_below_autograd(AffineGrid::kernel(), theta, size, align_corners);
  }
  return AffineGrid::apply(theta, size, align_corners);
}

}  // namespace

TORCH_LIBRARY_IMPL(stn_cuda, Autograd, m) {
  m.impl("grid_sample", &grid_sample);
  m.impl("affine_sample", &affine_sample);
  m.impl("affine_grid", &affine_grid);
}

}  // namespace stn
