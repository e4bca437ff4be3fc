"""torch.func's transforms (grad, vjp, jacrev, vmap and their compositions) over
grid_sample, affine_sample and affine_grid: the same values and gradients as torch's
functions under the same transforms, or as plain autograd where torch has none (double
backward), and vmap by the ops' own rules (stn_cuda/_functorch.py), not a loop; forward
mode where torch has it (affine_grid) and an error where it has not (the samplers)."""
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap
from torch.utils._python_dispatch import TorchDispatchMode

import stn_cuda
from helpers import Ops, deterministic_backwards, leaf, make, random_theta, torch_affine_sample

MODES = ["bilinear", "nearest", "bicubic"]


def samplers(mode, padding_mode, align_corners):
    """(name, stn_cuda's, torch's, geometry maker) per function: each takes (input, geometry)."""
    options = dict(mode=mode, padding_mode=padding_mode, align_corners=align_corners)
    out_size = (4, 3)
    return [
        ("grid_sample", functools.partial(stn_cuda.grid_sample, **options),
         functools.partial(F.grid_sample, **options)),
        ("affine_sample", lambda x, theta: stn_cuda.affine_sample(x, theta, out_size, **options),
         lambda x, theta: torch_affine_sample(x, theta, out_size, **options)),
    ]


def inputs(device, n=2):
    input, grid = make((n, 3, 5, 6, 4, 3), device)
    theta = random_theta(n, device=device)
    return input.detach(), {"grid_sample": grid.detach(), "affine_sample": theta}


def assert_all_close(got, expected):
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-8)


@pytest.fixture
def no_loop_warnings():
    """Fails a test in which vmap falls back to a loop over an stn_cuda op (its warning
    names the op) or a transform warns about stn_cuda."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not [w for w in caught if "stn_cuda" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("mode", MODES)
def test_grad_and_jacrev_match_torch(device, mode, padding_mode, align_corners, no_loop_warnings):
    input, geometry = inputs(device)
    for name, ours, theirs in samplers(mode, padding_mode, align_corners):
        args = (input, geometry[name])
        weight = torch.randn_like(theirs(*args))

        def loss(fn):
            return lambda x, g: (fn(x, g) * weight).sum()

        assert_all_close(grad(loss(ours), argnums=(0, 1))(*args), grad(loss(theirs), argnums=(0, 1))(*args))
        assert_all_close(jacrev(ours, argnums=(0, 1))(*args), jacrev(theirs, argnums=(0, 1))(*args))
        out, pullback = vjp(ours, *args)
        expected_out, expected_pullback = vjp(theirs, *args)
        assert_all_close((out, *pullback(weight)), (expected_out, *expected_pullback(weight)))


def test_affine_grid_matches_torch(device, align_corners, no_loop_warnings):
    theta = random_theta(2, device=device)
    size = (2, 3, 4, 5)
    ours = functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners)
    theirs = functools.partial(F.affine_grid, size=size, align_corners=align_corners)
    assert_all_close([jacrev(ours)(theta)], [jacrev(theirs)(theta)])
    thetas = torch.stack([theta, 2 * theta, -theta])
    assert_all_close([vmap(ours)(thetas)], [torch.stack([theirs(t) for t in thetas])])


@pytest.mark.parametrize("mode", MODES)
def test_vmap_is_a_loop_over_the_vmapped_dimension(device, mode, no_loop_warnings):
    """Any in_dims, a vmapped dimension that is not first, an argument that is not
    vmapped (broadcast); forward, and the backward under vmap."""
    input, geometry = inputs(device)
    for name, ours, _ in samplers(mode, "border", False):
        inputs_b = torch.stack([input, 2 * input, input.flip(-1)], dim=1)  # vmapped dimension 1
        geometry_b = torch.stack([geometry[name], 0.5 * geometry[name], -geometry[name]])
        cases = [((1, 0), (inputs_b, geometry_b), lambda k: (inputs_b[:, k], geometry_b[k])),
                 ((None, 0), (input, geometry_b), lambda k: (input, geometry_b[k])),
                 ((1, None), (inputs_b, geometry[name]), lambda k: (inputs_b[:, k], geometry[name]))]
        for in_dims, args, sample in cases:
            got = vmap(ours, in_dims=in_dims)(*args)
            assert_all_close([got], [torch.stack([ours(*sample(k)) for k in range(3)])])


@pytest.mark.parametrize("mode", MODES)
def test_vmap_over_an_empty_batch(device, mode, no_loop_warnings):
    """vmap over 0 samples, by every rule: outputs and gradients of 0 samples of one sample's
    shape (where torch's vmap of F.grid_sample over grids alone, as of 2.14, gives H_out 0)."""
    def none(t):  # t's samples along a new dimension 1, of which there are none
        return t[:, None][:, :0]

    def as_list(out):
        return list(out) if isinstance(out, tuple) else [out]

    input, geometry = inputs(device)
    for name, ours, theirs in samplers(mode, "zeros", False):
        def loss(fn):
            return grad(lambda x, g: fn(x, g).sin().sum(), argnums=(0, 1))

        for in_dims, args in [((None, 1), (input, none(geometry[name]))),
                              ((1, 1), (none(input), none(geometry[name]))),
                              ((1, None), (none(input), geometry[name]))]:
            for fn, ref_fn in [(ours, theirs), (loss(ours), loss(theirs))]:
                one_sample = as_list(ref_fn(input, geometry[name]))
                assert ([tuple(g.shape) for g in as_list(vmap(fn, in_dims)(*args))] ==
                        [(0, *o.shape) for o in one_sample]), (name, in_dims)
    affine_grid = functools.partial(stn_cuda.affine_grid, size=(2, 3, 4, 5))
    assert vmap(affine_grid, in_dims=1)(none(random_theta(2, device=device))).shape == (0, 2, 4, 5, 2)


class _StnCalls(TorchDispatchMode):
    """Records the tensor arguments of every stn_cuda op called under it."""
    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "stn_cuda":
            self.calls.append((func.__name__, [a for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims", [2, 3])
def test_vmap_over_grids_samples_a_shared_input_once(device, mode, dims, no_loop_warnings):
    """One input, many grids (vmap and vmap(grad) over the grid only): the kernels get the
    input itself, not a copy per grid, with the values and grid gradients of a loop."""
    if dims == 3 and mode == "bicubic":
        pytest.skip("bicubic is 4-D only, as in torch")
    shape = (2, 3, 5, 6, 4, 3) if dims == 2 else (2, 2, 4, 5, 3, 3, 2, 4)
    input, grid = (t.detach() for t in make(shape, device))
    grids = torch.stack([grid, 0.5 * grid, -grid.flip(1)], dim=1)  # vmapped dimension 1

    def sample(g):
        return stn_cuda.grid_sample(input, g, mode=mode, padding_mode="border", align_corners=True)

    def loss(g):
        return sample(g).sin().sum()

    with _StnCalls() as recorded:
        got = [vmap(sample, in_dims=1)(grids), vmap(grad(loss), in_dims=1)(grids)]
    assert [name for name, _ in recorded.calls] == ["grid_sample.default", "grid_sample.default",
                                                    "grid_sample_backward.default"]
    for name, tensors in recorded.calls:
        source = tensors[0] if name == "grid_sample.default" else tensors[1]
        assert source.data_ptr() == input.data_ptr() and source.shape == input.shape, name
    assert_all_close(got, [torch.stack([fn(grids[:, k]) for k in range(3)]) for fn in (sample, grad(loss))])
    # A gradient to the shared input is one per grid: that backward takes the input folded.
    grad_input = grad(lambda x, g: stn_cuda.grid_sample(x, g, mode=mode, align_corners=True).sin().sum())
    assert_all_close([vmap(grad_input, in_dims=(None, 1))(input, grids)],
                     [torch.stack([grad_input(input, grids[:, k]) for k in range(3)])])


@pytest.mark.parametrize("mode", MODES)
def test_per_sample_gradients(device, mode, no_loop_warnings):
    """vmap(grad(f)) over the batch, as differential privacy computes per-sample
    gradients: each sample's gradients, as autograd gives them for that sample alone."""
    input, geometry = inputs(device, n=3)
    for name, ours, _ in samplers(mode, "reflection", True):
        def loss(x, g):
            return ours(x[None], g[None]).square().sum()

        got = vmap(grad(loss, argnums=(0, 1)))(input, geometry[name])
        for k in range(3):
            x, g = leaf(input[k]), leaf(geometry[name][k])
            assert_all_close([t[k] for t in got], torch.autograd.grad(loss(x, g), (x, g)))


@pytest.mark.parametrize("mode", MODES)
def test_grad_of_grad_matches_autograd(device, mode, no_loop_warnings):
    """Second derivatives by torch.func, against plain autograd's double backward (itself
    checked by gradgradcheck in test_double_backward.py; torch's grid_sample has none)."""
    input, geometry = inputs(device)
    functions = samplers(mode, "zeros", False) + [
        ("affine_grid", lambda x, theta: stn_cuda.affine_grid(theta, (2, 3, 4, 3)).pow(3), None)]
    geometry["affine_grid"] = geometry["affine_sample"]
    for name, ours, _ in functions:
        def penalty(x, g):
            first = grad(lambda x, g: ours(x, g).square().sum(), argnums=(0, 1))(x, g)
            return sum(f.square().sum() for f in first)

        got = grad(penalty, argnums=(0, 1))(input, geometry[name])
        x, g = leaf(input), leaf(geometry[name])
        first = torch.autograd.grad(ours(x, g).square().sum(), (x, g), create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        expected = torch.autograd.grad(sum(f.square().sum() for f in first), (x, g), allow_unused=True,
                                       materialize_grads=True)
        assert_all_close(got, expected)


def test_volumes(device, no_loop_warnings):
    input, grid = make((2, 2, 4, 5, 3, 3, 2, 4), device)
    input, grid = input.detach(), grid.detach()
    theta = random_theta(2, device=device, dims=3)
    for ours, theirs, geometry in [
            (stn_cuda.grid_sample, functools.partial(F.grid_sample, align_corners=False), grid),
            (lambda x, t: stn_cuda.affine_sample(x, t, (3, 2, 4)),
             lambda x, t: torch_affine_sample(x, t, (3, 2, 4)), theta)]:
        loss = [lambda x, g, fn=fn: fn(x, g).sin().sum() for fn in (ours, theirs)]
        assert_all_close(grad(loss[0], argnums=(0, 1))(input, geometry),
                         grad(loss[1], argnums=(0, 1))(input, geometry))
        batched = torch.stack([geometry, 0.5 * geometry])
        assert_all_close([vmap(ours, in_dims=(None, 0))(input, batched)],
                         [torch.stack([ours(input, g) for g in batched])])


def test_deterministic_backward_under_torch_func(device):
    """stn_cuda.deterministic() reaches the backward under torch.func as it does under
    autograd: the backward op takes the deterministic path."""
    input, geometry = inputs(device)
    taken = []
    for enabled in (False, True):
        with stn_cuda.deterministic(enabled):
            taken.append(deterministic_backwards(
                lambda: grad(lambda g: stn_cuda.grid_sample(input, g).sum())(geometry["grid_sample"])))
    assert taken == [0, 1]


def test_through_patch_torch(device, no_loop_warnings):
    """Code that transforms F.grid_sample keeps working when patch_torch() routes it."""
    input, geometry = inputs(device)

    def loss(x, g):
        return F.grid_sample(x, g, padding_mode="border", align_corners=False).square().sum()

    expected = grad(loss, argnums=(0, 1))(input, geometry["grid_sample"])
    with stn_cuda.patched_torch(device), Ops() as ran:
        got = grad(loss, argnums=(0, 1))(input, geometry["grid_sample"])
    assert "stn_cuda::grid_sample" in ran.names
    assert_all_close(got, expected)


def test_under_torch_compile(device):
    """A compiled function that transforms stn_cuda's: the graph breaks at the op (its
    torch.func Function runs eagerly; fullgraph=True refuses it), with eager's results."""
    input, geometry = inputs(device)

    def per_sample(x, theta):
        return vmap(grad(lambda x, t: stn_cuda.affine_sample(x[None], t[None]).square().sum(),
                         argnums=(0, 1)))(x, theta)

    torch._dynamo.reset()
    assert_all_close(torch.compile(per_sample)(input, geometry["affine_sample"]),
                     per_sample(input, geometry["affine_sample"]))


@pytest.mark.parametrize("dims", [2, 3], ids=["4d", "5d"])
def test_forward_mode_of_affine_grid(device, dims, align_corners, no_loop_warnings):
    """affine_grid's jvp, jacfwd and dual tensors, as torch's (linear in theta), also
    through patch_torch() and in the forward-over-reverse Hessian of a loss."""
    theta, tangent = (random_theta(2, device=device, dims=dims) for _ in range(2))
    size = (2, 3, 4, 5, 3)[:dims + 2]
    ours = functools.partial(stn_cuda.affine_grid, size=size, align_corners=align_corners)
    theirs = functools.partial(F.affine_grid, size=size, align_corners=align_corners)
    assert_all_close(jvp(ours, (theta,), (tangent,)), jvp(theirs, (theta,), (tangent,)))
    assert_all_close([jacfwd(ours)(theta)], [jacfwd(theirs)(theta)])
    with forward_ad.dual_level():
        for requires_grad in (False, True):
            dual = forward_ad.make_dual(theta.clone().requires_grad_(requires_grad), tangent)
            assert_all_close(forward_ad.unpack_dual(ours(dual)), forward_ad.unpack_dual(theirs(dual)))
    with stn_cuda.patched_torch(device), Ops() as ran:  # F.affine_grid looked up when called
        patched = jvp(lambda t: F.affine_grid(t, size, align_corners=align_corners), (theta,), (tangent,))
    assert "stn_cuda::affine_grid" in ran.names
    assert_all_close(patched, jvp(theirs, (theta,), (tangent,)))

    def loss(fn):
        return lambda t: fn(t).pow(3).sum()
    assert_all_close([jacfwd(jacrev(loss(ours)))(theta)], [jacfwd(jacrev(loss(theirs)))(theta)])


def test_samplers_refuse_forward_mode(device):
    """Forward-mode AD over the samplers is an error, as over torch's grid_sample (whose
    error is a NotImplementedError too), never a silently missing tangent."""
    input, geometry = inputs(device)
    for name, ours, _ in samplers("bilinear", "zeros", False):
        args = (input, geometry[name])
        for k in range(2):
            tangents = tuple(torch.ones_like(a) if i == k else torch.zeros_like(a) for i, a in enumerate(args))
            with pytest.raises(NotImplementedError, match="forward-mode AD"):
                jvp(ours, args, tangents)
            for requires_grad, grad_mode in [(False, True), (False, False), (True, True)]:
                with forward_ad.dual_level(), torch.set_grad_enabled(grad_mode):
                    duals = [forward_ad.make_dual(a.clone().requires_grad_(requires_grad), torch.ones_like(a))
                             if i == k else a for i, a in enumerate(args)]
                    with pytest.raises(NotImplementedError, match="forward-mode AD"):
                        ours(*duals)
                    with pytest.raises(RuntimeError, match="jvp"):  # the C++ autograd, called directly
                        getattr(torch.ops.stn_cuda, name)(*duals, *(
                            [0, 0, False] if name == "grid_sample" else [[4, 3], 0, 0, False]))


@pytest.mark.parametrize("mixed", [False, True], ids=["same dtypes", "mixed dtypes"])
def test_under_autocast(device, mixed):
    """Under torch.autocast the ops cast their inputs (csrc/autocast.cpp); their torch.func
    backward gets the cast inputs as the C++ one does: the same gradients, in each input's
    own dtype."""
    low = torch.bfloat16 if device == "cpu" else torch.float16
    input, geometry = inputs(device)
    for name, ours, _ in samplers("bilinear", "border", False):
        args = (input.to(low), geometry[name].to(torch.float32 if mixed else low))
        with torch.autocast(device, dtype=low):
            got = grad(lambda x, g: ours(x, g).float().square().sum(), argnums=(0, 1))(*args)
            leaves = [leaf(a) for a in args]
            expected = torch.autograd.grad(ours(*leaves).float().square().sum(), leaves)
        for g, e, a in zip(got, expected, args):
            assert g.dtype == a.dtype
            torch.testing.assert_close(g, e, atol=0, rtol=0)
