"""References from torch and comparison helpers shared by the tests."""
import torch
import torch.nn.functional as F


def grads(out, inputs, grad_output):
    """Gradients of <out, grad_output> with respect to inputs (None where unused)."""
    return torch.autograd.grad(out, inputs, grad_output, allow_unused=True)


def leaf(t, requires_grad=True):
    """A new autograd leaf with t's values and memory layout (strides, storage offset,
    expanded dimensions), sharing its storage: clone() would make a sliced or expanded
    tensor contiguous, and the kernels would never see its strides."""
    return t.detach().requires_grad_(requires_grad)


def check_against(fn, ref_fn, args, *, atol=1e-10, rtol=1e-8, grad_output=None):
    """fn(*args) against ref_fn(*args): values and gradients of every tensor argument that
    requires grad. Returns the output of fn."""
    ours_args = [leaf(a, a.requires_grad) if torch.is_tensor(a) else a for a in args]
    ref_args = [leaf(a, a.requires_grad) if torch.is_tensor(a) else a for a in args]
    out, ref = fn(*ours_args), ref_fn(*ref_args)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    diff = [i for i, a in enumerate(args) if torch.is_tensor(a) and a.requires_grad]
    if diff:
        g = torch.randn_like(ref) if grad_output is None else grad_output
        ours_g = grads(out, [ours_args[i] for i in diff], g)
        ref_g = grads(ref, [ref_args[i] for i in diff], g)
        for i, a, b in zip(diff, ours_g, ref_g):
            torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m: f"gradient of argument {i}: {m}")
    return out


def random_theta(n, dtype=torch.float64, device="cpu", spread=0.3):
    """Affine transforms near the identity (spread ~0.3) or far from it (spread ~2)."""
    eye = torch.tensor([[1.0, 0, 0], [0, 1, 0]], dtype=dtype, device=device)
    return eye + spread * torch.randn(n, 2, 3, dtype=dtype, device=device)


def torch_affine_sample(input, theta, out_size, padding_mode="zeros", align_corners=False):
    n, c = input.shape[:2]
    grid = F.affine_grid(theta, (n, c, *out_size), align_corners=align_corners)
    return F.grid_sample(input, grid, padding_mode=padding_mode, align_corners=align_corners)
