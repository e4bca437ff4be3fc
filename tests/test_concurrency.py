"""The ops called concurrently: from several Python threads at once (CPU and CUDA) and on
several CUDA streams, each call on its own inputs (or sharing one read-only input);
every result, forward and backward, must equal that of the same calls made one after
another. The kernels keep no state between calls, so nothing may leak between them."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import stn_cuda
from conftest import HAS_CUDA, NO_CUDA_REASON, PADDING_MODES
from helpers import grads, random_theta

THREADS = 4
JOBS = 12  # more jobs than threads: calls overlap in every combination
ROUNDS = 3
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON)


def make_inputs(seed, device, shared_input=None):
    """A job's inputs: its own (or the shared) input, grid and theta. Options vary by job."""
    gen = torch.Generator().manual_seed(seed)
    input = torch.randn(3, 5, 37, 41, generator=gen) if shared_input is None else shared_input
    grid = torch.rand(3, 29, 31, 2, generator=gen) * 2.4 - 1.2
    theta = random_theta(3, dtype=torch.float32, spread=0.5) + 0.01 * torch.randn(3, 2, 3, generator=gen)
    options = dict(mode=("bilinear", "nearest")[seed % 2], padding_mode=PADDING_MODES[seed % 3],
                   align_corners=bool(seed % 5 % 2))
    return [t.to(device) for t in (input, grid, theta)], options


def run_job(inputs, options):
    """Every op forward and backward; returns all results, detached."""
    input, grid, theta = [t.detach().requires_grad_() for t in inputs]
    out = stn_cuda.grid_sample(input, grid, **options)
    results = [out, *grads(out, (input, grid), torch.ones_like(out))]
    fused = stn_cuda.affine_sample(input, theta, (23, 19), **options)
    results += [fused, *grads(fused, (input, theta), fused.detach())]
    generated = stn_cuda.affine_grid(theta, (3, 5, 17, 13), align_corners=options["align_corners"])
    results += [generated, *grads(generated, (theta,), generated.detach())]
    return [r.detach() for r in results]


def assert_same(ours, serial, exact):
    for i, (a, b) in enumerate(zip(ours, serial)):
        if exact:  # the CPU kernels are deterministic
            assert torch.equal(a, b), f"result {i} differs from the serial run's"
        else:      # CUDA's grad_input sums with atomics, in any order
            torch.testing.assert_close(a, b, msg=lambda m: f"result {i}: {m}")


@pytest.mark.parametrize("shared", [False, True], ids=["own input", "shared input"])
def test_threads(device, shared):
    shared_input = torch.randn(3, 5, 37, 41) if shared else None
    jobs = [make_inputs(seed, device, shared_input) for seed in range(JOBS)]
    serial = [run_job(*job) for job in jobs]
    barrier = threading.Barrier(THREADS)

    def job_in_thread(job):
        try:
            barrier.wait(timeout=10)  # the first jobs start together
        except threading.BrokenBarrierError:
            pass
        return run_job(*job)

    for _ in range(ROUNDS):
        with ThreadPoolExecutor(THREADS) as pool:
            threaded = list(pool.map(job_in_thread, jobs))
        for ours, theirs in zip(threaded, serial):
            assert_same(ours, theirs, exact=device == "cpu")


@needs_cuda
def test_cuda_streams():
    jobs = [make_inputs(seed, "cuda") for seed in range(JOBS)]
    serial = [run_job(*job) for job in jobs]
    streams = [torch.cuda.Stream() for _ in range(THREADS)]
    main = torch.cuda.current_stream()
    for _ in range(ROUNDS):
        results = []
        for i, job in enumerate(jobs):
            stream = streams[i % len(streams)]
            stream.wait_stream(main)  # the inputs were made on the main stream
            with torch.cuda.stream(stream):
                results.append(run_job(*job))
        for stream in streams:
            main.wait_stream(stream)
        torch.cuda.synchronize()
        for ours, theirs in zip(results, serial):
            assert_same(ours, theirs, exact=False)


@needs_cuda
def test_cuda_threads_with_own_streams():
    jobs = [make_inputs(seed, "cuda") for seed in range(JOBS)]
    serial = [run_job(*job) for job in jobs]
    torch.cuda.synchronize()

    def job_on_own_stream(job):
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            results = run_job(*job)
        stream.synchronize()
        return results

    with ThreadPoolExecutor(THREADS) as pool:
        threaded = list(pool.map(job_on_own_stream, jobs))
    for ours, theirs in zip(threaded, serial):
        assert_same(ours, theirs, exact=False)
