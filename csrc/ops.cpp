// The stn_cuda operators: schemas, argument checks and result allocation.
//
// Each op is implemented once here and registered for CPU and (when built with
// CUDA) for CUDA; the per-device work is in cpu/ and cuda/ behind the Kernels
// table. Every argument is checked here, before any kernel runs, with messages
// that name the argument; they surface in Python as ValueError or TypeError.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/record_function.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <limits>

#include "gather.h"
#include "kernels.h"

namespace stn {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------
// Argument checks.

Sampling sampling_of(int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  return {static_cast<Interpolation>(interpolation_mode), static_cast<Padding>(padding_mode),
          align_corners};
}

void check_tensor(const char* op, const char* name, const Tensor& t, int64_t dim,
                  const char* layout) {
  TORCH_CHECK_VALUE(t.defined(), op, ": expected ", name, " to be a tensor, got None");
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": expected ", name,
                    " to be a strided (dense) tensor, got layout ", t.layout());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
                   " to have a floating point dtype (float16, bfloat16, float32 or float64), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": expected ", name, " to be ", dim, "-D ", layout,
                    ", got shape ", t.sizes());
}

void check_same(const char* op, const char* name, const Tensor& t, const char* other_name,
                const Tensor& other) {
  TORCH_CHECK_VALUE(t.device() == other.device(), op, ": expected ", name, " and ",
                    other_name, " on the same device, got ", name, " on ", t.device(),
                    " and ", other_name, " on ", other.device());
  TORCH_CHECK_TYPE(t.scalar_type() == other.scalar_type(), op, ": expected ", name, " and ",
                   other_name, " to have the same dtype, got ", t.scalar_type(), " and ",
                   other.scalar_type());
}

// Images (4-D input, 2 spatial dimensions) and volumes (5-D input, 3): the
// number of spatial dimensions follows the input (affine_grid: its size;
// affine_grid_backward: grad_grid, 5-D for volumes too).
int64_t spatial_dims(const Tensor& input) {
  return input.defined() && input.dim() == 5 ? 3 : 2;
}

bool all_positive(at::IntArrayRef sizes) {
  return std::all_of(sizes.begin(), sizes.end(), [](int64_t s) { return s > 0; });
}

// The mode codes, for an input with `dims` spatial dimensions (bicubic is 4-D only, as in torch).
void check_modes(const char* op, int64_t interpolation_mode, int64_t padding_mode, int64_t dims) {
  TORCH_CHECK_VALUE(0 <= interpolation_mode && interpolation_mode <= 2, op,
                    ": interpolation_mode must be 0 (bilinear), 1 (nearest) or 2 (bicubic), got ",
                    interpolation_mode);
  TORCH_CHECK_VALUE(dims == 2 || static_cast<Interpolation>(interpolation_mode) != Interpolation::Bicubic,
                    op, ": mode='bicubic' supports only 4-D input (as in torch), got a 5-D input");
  TORCH_CHECK_VALUE(0 <= padding_mode && padding_mode <= 2, op,
                    ": padding_mode must be 0 (zeros), 1 (border) or 2 (reflection), got ",
                    padding_mode);
}

void check_input(const char* op, const Tensor& input) {
  // 5-D passes as a volume; anything else must be 4-D.
  check_tensor(op, "input", input, spatial_dims(input) + 2,
               "(N, C, H_in, W_in) or 5-D (N, C, D_in, H_in, W_in)");
  TORCH_CHECK_VALUE(all_positive(input.sizes().slice(2)), op,
                    ": expected input to have non-empty spatial dimensions, got shape ",
                    input.sizes());
}

void check_grid(const char* op, const Tensor& input, const Tensor& grid) {
  check_input(op, input);
  const int64_t dims = spatial_dims(input);
  check_tensor(op, "grid", grid, dims + 2,
               dims == 3 ? "(N, D_out, H_out, W_out, 3) for a 5-D input"
                         : "(N, H_out, W_out, 2) for a 4-D input");
  TORCH_CHECK_VALUE(grid.size(dims + 1) == dims, op, ": expected grid to have size ", dims,
                    " in its last dimension (", dims == 3 ? "x, y, z" : "x, y",
                    ") for a ", dims + 2, "-D input, got shape ", grid.sizes());
  TORCH_CHECK_VALUE(grid.size(0) == input.size(0), op,
                    ": expected input and grid to have the same batch size, got input shape ",
                    input.sizes(), " and grid shape ", grid.sizes());
  check_same(op, "grid", grid, "input", input);
}

// theta: (N, 2, 3) for images, (N, 3, 4) for volumes; `context` says which.
void check_theta(const char* op, const Tensor& theta, int64_t N, int64_t dims,
                 const char* context) {
  const char* layout = dims == 3 ? "(N, 3, 4)" : "(N, 2, 3)";
  check_tensor(op, "theta", theta, 3, layout);
  TORCH_CHECK_VALUE(theta.size(1) == dims && theta.size(2) == dims + 1, op,
                    ": expected theta of shape ", layout, " ", context, ", got ", theta.sizes());
  TORCH_CHECK_VALUE(theta.size(0) == N, op, ": expected theta to have batch size ", N,
                    ", got theta shape ", theta.sizes());
}

// The output's spatial size: (H_out, W_out) or (D_out, H_out, W_out).
void check_out_size(const char* op, const char* name, at::IntArrayRef size, int64_t dims) {
  TORCH_CHECK_VALUE(static_cast<int64_t>(size.size()) == dims, op, ": expected ", name, " to be ",
                    dims == 3 ? "(D_out, H_out, W_out) for a 5-D input"
                              : "(H_out, W_out) for a 4-D input",
                    ", got ", size);
  TORCH_CHECK_VALUE(all_positive(size), op, ": expected a positive output size ", name, ", got ",
                    size);
}

// (N, C) followed by the output's spatial size.
std::vector<int64_t> output_sizes(const Tensor& input, at::IntArrayRef out_size) {
  std::vector<int64_t> sizes{input.size(0), input.size(1)};
  sizes.insert(sizes.end(), out_size.begin(), out_size.end());
  return sizes;
}

void check_grad_output(const char* op, const Tensor& grad_output, const Tensor& input,
                       at::IntArrayRef out_size) {
  check_tensor(op, "grad_output", grad_output, input.dim(),
               input.dim() == 5 ? "(N, C, D_out, H_out, W_out)" : "(N, C, H_out, W_out)");
  const std::vector<int64_t> expected = output_sizes(input, out_size);
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(expected), op,
                    ": expected grad_output of shape ", at::IntArrayRef(expected), ", got ",
                    grad_output.sizes());
  check_same(op, "grad_output", grad_output, "input", input);
}

// ---------------------------------------------------------------------------
// Allocation.

// With STN_CUDA_POISON=1 in the environment, results that a kernel must write
// in full start as NaN, so a point the kernel skips shows up in the tests.
bool poison_outputs() {
  static const bool poison = [] {
    const char* v = std::getenv("STN_CUDA_POISON");
    return v != nullptr && v[0] != '\0' && v[0] != '0';
  }();
  return poison;
}

Tensor poisoned(Tensor t) {
  if (poison_outputs()) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return poisoned(at::empty(sizes, options));
}

at::ScalarType acc_type(const Tensor& t) { return at::toOpMathType(t.scalar_type()); }

// A zeroed gradient buffer shaped like `like`, in the accumulation type.
Tensor zeros_acc(const Tensor& like) {
  return at::zeros_like(like, like.options().dtype(acc_type(like)), like.suggest_memory_format());
}

// Whether the backward's grad_input comes from the deterministic gather
// (run_backward), which writes every element, rather than from kernels that
// add into it.
bool gathers_grad_input(const Tensor& grad_output, bool deterministic) {
  return deterministic && grad_output.numel() > 0;
}

// grad_input's buffer: zeroed for the kernels that add into it, or, where the
// gather writes every element, as empty_output.
Tensor grad_input_buffer(const Tensor& in, const Tensor& grad_output, bool deterministic) {
  if (!gathers_grad_input(grad_output, deterministic)) return zeros_acc(in);
  return poisoned(at::empty_like(in, in.options().dtype(acc_type(in)), in.suggest_memory_format()));
}

// The input as the backward kernels read it. They address grad_input
// (grad_input_buffer) with the input's offsets, so where grad_input is wanted
// they read an input laid out the same way: dense in its memory format (a copy
// only for inputs with gaps or unusual strides: a slice, an expanded batch).
// Where only the grid's or theta's gradient is wanted, the input as it is, as
// the forward reads it: one image expanded over a batch stays one image.
Tensor backward_input(const Tensor& input, bool grad_input_wanted) {
  return grad_input_wanted ? input.contiguous(input.suggest_memory_format()) : input;
}

Tensor to_dtype(const Tensor& t, at::ScalarType dtype) {
  return t.defined() ? t.to(dtype) : t;
}

// stn_cuda.set_deterministic's flag (_C.set_deterministic, below).
std::atomic<bool> deterministic_flag{false};

// Whether a sampler's backward takes the deterministic path: where its call asks
// for it (the op's `deterministic`), where stn_cuda.set_deterministic does, and
// on CUDA where torch.use_deterministic_algorithms does, as for torch's own ops.
// Decided here, as the backward runs, alone: a call recorded by torch.compile
// (or a trace torch cached) holds no flags of the time it was traced.
bool deterministic_now(bool asked, const Tensor& input) {
  return asked || deterministic_flag.load() ||
         (input.is_cuda() && at::globalContext().deterministicAlgorithms());
}

// The kernels for t's device, for images (dims 2) or volumes (dims 3).
const Kernels& kernels_for(const Tensor& t, int64_t dims) {
#ifdef STN_CUDA_KERNELS
  if (t.is_cuda() || kEmulateCuda) return dims == 3 ? cuda_volume_kernels() : cuda_kernels();
#endif
  return dims == 3 ? cpu_volume_kernels() : cpu_kernels();
}

// A sampler's backward (Kernels::grid_sample_backward or affine_sample_backward,
// source: grid or theta), or, `deterministic`, grad_input gathered (gather.h)
// and the source's gradient reduced in a fixed order.
void run_backward(decltype(Kernels::grid_sample_backward) backward, const Tensor& grad_output,
                  const Tensor& input, const Tensor& source, const Tensor& grad_input,
                  const Tensor& grad_source, Sampling sampling, bool deterministic) {
  if (sampling.interpolation == Interpolation::Nearest && grad_source.defined()) {
    // Piecewise constant: the source's gradient is 0 (+0, as torch's), with no kernel.
    grad_source.zero_();
    if (!grad_input.defined()) return;
    return run_backward(backward, grad_output, input, source, grad_input, Tensor(), sampling,
                        deterministic);
  }
  if (!deterministic) {
    return backward(grad_output, input, source, grad_input, grad_source, sampling, false);
  }
  // A scope for torch.profiler (and the tests) to see the path by.
  RECORD_FUNCTION("stn_cuda::deterministic_backward", c10::ArrayRef<const c10::IValue>{});
  if (grad_input.defined()) {
    TORCH_INTERNAL_ASSERT(gathers_grad_input(grad_output, deterministic));  // its buffer's rule
    gather_grad_input(grad_output, input, source, grad_input, sampling);
  }
  if (grad_source.defined()) {
    backward(grad_output, input, source, Tensor(), grad_source, sampling, true);
  }
}

// ---------------------------------------------------------------------------
// grid_sample: the sampler, given the grid of source points.

Tensor grid_sample(const Tensor& input, const Tensor& grid, int64_t interpolation_mode,
                   int64_t padding_mode, bool align_corners) {
  const char* op = "stn_cuda.grid_sample";
  check_grid(op, input, grid);
  const int64_t dims = spatial_dims(input);
  check_modes(op, interpolation_mode, padding_mode, dims);
  Tensor output = empty_output(output_sizes(input, grid.sizes().slice(1, dims)), input.options());
  if (output.numel() == 0) return output;
  c10::DeviceGuard guard(input.device());
  kernels_for(input, dims).grid_sample_forward(input, grid, output,
                                         sampling_of(interpolation_mode, padding_mode, align_corners));
  return output;
}

std::tuple<Tensor, Tensor> grid_sample_backward(const Tensor& grad_output, const Tensor& input,
                                                const Tensor& grid, int64_t interpolation_mode,
                                                int64_t padding_mode, bool align_corners,
                                                std::array<bool, 2> output_mask,
                                                bool deterministic) {
  const char* op = "stn_cuda.grid_sample_backward";
  check_grid(op, input, grid);
  const int64_t dims = spatial_dims(input);
  check_modes(op, interpolation_mode, padding_mode, dims);
  check_grad_output(op, grad_output, input, grid.sizes().slice(1, dims));
  deterministic = deterministic_now(deterministic, input);
  const Tensor in = backward_input(input, output_mask[0]);
  Tensor grad_input = output_mask[0] ? grad_input_buffer(in, grad_output, deterministic) : Tensor();
  Tensor grad_grid =
      output_mask[1] ? empty_output(grid.sizes(), grid.options().dtype(acc_type(grid))) : Tensor();
  if (grad_output.numel() > 0) {
    c10::DeviceGuard guard(input.device());
    const Sampling sampling = sampling_of(interpolation_mode, padding_mode, align_corners);
    run_backward(kernels_for(input, dims).grid_sample_backward, grad_output, in, grid, grad_input,
                 grad_grid, sampling, deterministic);
  } else if (grad_grid.defined()) {
    grad_grid.zero_();  // no channels or no points: nothing depends on the grid
  }
  return {to_dtype(grad_input, input.scalar_type()), to_dtype(grad_grid, grid.scalar_type())};
}

// ---------------------------------------------------------------------------
// affine_grid: the grid generator, theta -> grid.

// size: the output's (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out), as
// torch.nn.functional.affine_grid takes it.
Tensor affine_grid(const Tensor& theta, at::IntArrayRef size, bool align_corners) {
  const char* op = "stn_cuda.affine_grid";
  TORCH_CHECK_VALUE(size.size() == 4 || size.size() == 5, op,
                    ": expected size to be (N, C, H_out, W_out) or (N, C, D_out, H_out, W_out), ",
                    "got ", size);
  const int64_t dims = static_cast<int64_t>(size.size()) - 2;
  check_theta(op, theta, size[0], dims, dims == 3 ? "for a 5-D size" : "for a 4-D size");
  check_out_size(op, "size[2:]", size.slice(2), dims);
  std::vector<int64_t> grid_sizes(size.begin(), size.end());
  grid_sizes.erase(grid_sizes.begin() + 1);  // (N, [D_out,] H_out, W_out, dims)
  grid_sizes.push_back(dims);
  Tensor grid = empty_output(grid_sizes, theta.options());
  if (grid.numel() == 0) return grid;
  c10::DeviceGuard guard(theta.device());
  kernels_for(theta, dims).affine_grid_forward(theta.to(acc_type(theta)).contiguous(), grid,
                                         align_corners);
  return grid;
}

Tensor affine_grid_backward(const Tensor& grad_grid, bool align_corners) {
  const char* op = "stn_cuda.affine_grid_backward";
  const int64_t dims = spatial_dims(grad_grid);
  check_tensor(op, "grad_grid", grad_grid, dims + 2,
               "(N, H_out, W_out, 2) or 5-D (N, D_out, H_out, W_out, 3)");
  TORCH_CHECK_VALUE(grad_grid.size(dims + 1) == dims, op, ": expected grad_grid of shape ",
                    dims == 3 ? "(N, D, H, W, 3)" : "(N, H, W, 2)", ", got ", grad_grid.sizes());
  Tensor grad_theta = empty_output({grad_grid.size(0), dims, dims + 1},
                                  grad_grid.options().dtype(acc_type(grad_grid)));
  if (grad_grid.numel() > 0) {  // the kernels write every sum
    c10::DeviceGuard guard(grad_grid.device());
    kernels_for(grad_grid, dims).affine_grid_backward(grad_grid, grad_theta, align_corners);
  } else {
    grad_theta.zero_();  // no points: nothing depends on theta
  }
  return to_dtype(grad_theta, grad_grid.scalar_type());
}

// ---------------------------------------------------------------------------
// affine_sample: grid generator and sampler fused; the grid is never stored.

const char* theta_context(int64_t dims) {
  return dims == 3 ? "for a 5-D input" : "for a 4-D input";
}

Tensor affine_sample(const Tensor& input, const Tensor& theta, at::IntArrayRef out_size,
                     int64_t interpolation_mode, int64_t padding_mode, bool align_corners) {
  const char* op = "stn_cuda.affine_sample";
  check_input(op, input);
  const int64_t dims = spatial_dims(input);
  check_theta(op, theta, input.size(0), dims, theta_context(dims));
  check_same(op, "theta", theta, "input", input);
  check_modes(op, interpolation_mode, padding_mode, dims);
  check_out_size(op, "out_size", out_size, dims);
  Tensor output = empty_output(output_sizes(input, out_size), input.options());
  if (output.numel() == 0) return output;
  c10::DeviceGuard guard(input.device());
  kernels_for(input, dims).affine_sample_forward(
      input, theta.to(acc_type(theta)).contiguous(), output,
      sampling_of(interpolation_mode, padding_mode, align_corners));
  return output;
}

std::tuple<Tensor, Tensor> affine_sample_backward(const Tensor& grad_output, const Tensor& input,
                                                  const Tensor& theta, int64_t interpolation_mode,
                                                  int64_t padding_mode, bool align_corners,
                                                  std::array<bool, 2> output_mask,
                                                  bool deterministic) {
  const char* op = "stn_cuda.affine_sample_backward";
  check_input(op, input);
  const int64_t dims = spatial_dims(input);
  check_theta(op, theta, input.size(0), dims, theta_context(dims));
  check_same(op, "theta", theta, "input", input);
  check_modes(op, interpolation_mode, padding_mode, dims);
  TORCH_CHECK_VALUE(grad_output.defined() && grad_output.dim() == input.dim(), op,
                    ": expected grad_output to be ", input.dim(), "-D like input");
  check_grad_output(op, grad_output, input, grad_output.sizes().slice(2));
  deterministic = deterministic_now(deterministic, input);
  const Tensor in = backward_input(input, output_mask[0]);
  Tensor grad_input = output_mask[0] ? grad_input_buffer(in, grad_output, deterministic) : Tensor();
  Tensor grad_theta = output_mask[1] ? zeros_acc(theta) : Tensor();
  if (grad_output.numel() > 0) {
    c10::DeviceGuard guard(input.device());
    const Tensor theta_acc = theta.to(acc_type(theta)).contiguous();
    const Sampling sampling = sampling_of(interpolation_mode, padding_mode, align_corners);
    run_backward(kernels_for(input, dims).affine_sample_backward, grad_output, in, theta_acc,
                 grad_input, grad_theta, sampling, deterministic);
  }
  return {to_dtype(grad_input, input.scalar_type()), to_dtype(grad_theta, theta.scalar_type())};
}

}  // namespace

TORCH_LIBRARY(stn_cuda, m) {
  m.def("grid_sample(Tensor input, Tensor grid, int interpolation_mode, int padding_mode, "
        "bool align_corners) -> Tensor");
  m.def("grid_sample_backward(Tensor grad_output, Tensor input, Tensor grid, "
        "int interpolation_mode, int padding_mode, bool align_corners, bool[2] output_mask, "
        "bool deterministic=False) -> (Tensor, Tensor)");
  m.def("affine_grid(Tensor theta, SymInt[] size, bool align_corners) -> Tensor");
  m.def("affine_grid_backward(Tensor grad_grid, bool align_corners) -> Tensor");
  m.def("affine_sample(Tensor input, Tensor theta, SymInt[] out_size, "
        "int interpolation_mode, int padding_mode, bool align_corners) -> Tensor");
  m.def("affine_sample_backward(Tensor grad_output, Tensor input, Tensor theta, "
        "int interpolation_mode, int padding_mode, bool align_corners, bool[2] output_mask, "
        "bool deterministic=False) -> (Tensor, Tensor)");
}

// The same implementations serve both backends; kernels_for() picks the kernels.
#define STN_REGISTER_IMPLS(m)                                    \
  m.impl("grid_sample", &grid_sample);                           \
  m.impl("grid_sample_backward", &grid_sample_backward);         \
  m.impl("affine_grid", &affine_grid);                           \
  m.impl("affine_grid_backward", &affine_grid_backward);         \
  m.impl("affine_sample", &affine_sample);                       \
  m.impl("affine_sample_backward", &affine_sample_backward)

TORCH_LIBRARY_IMPL(stn_cuda, CPU, m) { STN_REGISTER_IMPLS(m); }
#ifdef STN_WITH_CUDA
TORCH_LIBRARY_IMPL(stn_cuda, CUDA, m) { STN_REGISTER_IMPLS(m); }
#endif

namespace {
// The Tuning in force, as one code per setting (tuning.py names them): each
// below its kTuningChoices, and 0, where the codes start, the default.
enum TuningSetting : long { kScatter = 0, kChannelVectors = 1, kCpuGathers = 2, kTuningSettings = 3 };
constexpr long kTuningChoices[kTuningSettings] = {2, 2, 2};
std::atomic<int> tuning_codes[kTuningSettings] = {};
}  // namespace

Tuning tuning() {
  return {static_cast<Scatter>(tuning_codes[kScatter].load(std::memory_order_relaxed)),
          tuning_codes[kChannelVectors].load(std::memory_order_relaxed) != 0,
          tuning_codes[kCpuGathers].load(std::memory_order_relaxed) == 0};  // code 0: on
}

}  // namespace stn

namespace {

// _C.set_tuning(setting, code) and _C.tuning(setting): the codes of the
// Tuning's settings (ops.cpp's TuningSetting), for stn_cuda.set_tuning and
// get_tuning.
bool valid_setting(long setting) {
  if (setting >= 0 && setting < stn::kTuningSettings) return true;
  PyErr_Format(PyExc_ValueError, "stn_cuda._C: expected a tuning setting below %ld, got %ld",
               static_cast<long>(stn::kTuningSettings), setting);
  return false;
}

PyObject* set_tuning(PyObject*, PyObject* args) {
  long setting = 0, code = 0;
  if (!PyArg_ParseTuple(args, "ll", &setting, &code) || !valid_setting(setting)) return nullptr;
  if (code < 0 || code >= stn::kTuningChoices[setting]) {
    PyErr_Format(PyExc_ValueError,
                 "stn_cuda._C.set_tuning(): expected a code below %ld for setting %ld, got %ld",
                 stn::kTuningChoices[setting], setting, code);
    return nullptr;
  }
  stn::tuning_codes[setting].store(static_cast<int>(code), std::memory_order_relaxed);
  Py_RETURN_NONE;
}

PyObject* get_tuning(PyObject*, PyObject* arg) {
  const long setting = PyLong_AsLong(arg);
  if (setting == -1 && PyErr_Occurred()) return nullptr;
  if (!valid_setting(setting)) return nullptr;
  return PyLong_FromLong(stn::tuning_codes[setting].load());
}

// _C.set_deterministic(enabled) and _C.is_deterministic(), for stn_cuda's.
PyObject* set_deterministic(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  stn::deterministic_flag.store(enabled != 0);
  Py_RETURN_NONE;
}

PyObject* is_deterministic(PyObject*, PyObject*) {
  return PyBool_FromLong(stn::deterministic_flag.load());
}

PyObject* cpu_has_gathers(PyObject*, PyObject*) { return PyBool_FromLong(stn::cpu_has_gathers()); }

PyMethodDef methods[] = {
    {"set_tuning", set_tuning, METH_VARARGS, "Set a tuning setting's code: set_tuning(setting, code)."},
    {"tuning", get_tuning, METH_O, "A tuning setting's code: tuning(setting)."},
    {"set_deterministic", set_deterministic, METH_O,
     "Ask for the deterministic backward, or stop asking: set_deterministic(enabled)."},
    {"is_deterministic", is_deterministic, METH_NOARGS,
     "Whether the deterministic backward is asked for."},
    {"cpu_has_gathers", cpu_has_gathers, METH_NOARGS,
     "Whether this CPU and build have the gathers of the cpu_gathers setting (AVX-512)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// A plain Python module: importing stn_cuda._C loads the library, whose static
// initialisers register the ops above. It also says whether CUDA kernels are
// in (built_with_cuda) or run on the CPU in place of the CPU's (emulates_cuda:
// kernels.h), and holds the tuning settings (kernels.h's Tuning) and the
// deterministic flag.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "stn_cuda's compiled operators (torch.ops.stn_cuda)", -1, methods};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef STN_WITH_CUDA
  const long built_with_cuda = 1;
#else
  const long built_with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "built_with_cuda", built_with_cuda) != 0 ||
      PyModule_AddIntConstant(m, "emulates_cuda", stn::kEmulateCuda) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
