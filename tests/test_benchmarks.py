"""The benchmark suite: python -m benchmarks --quick end to end (on the CPU, and on
CUDA when there is one) and the files it writes; its correctness check against
deliberately wrong samplers."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stn_cuda
from benchmarks import checks, environment, report
import benchmarks.__main__ as suite_main
from benchmarks.__main__ import parse_args
from benchmarks.impls import AFFINE, CANDIDATE, IMPLS, REFERENCE, SAMPLER, VARIANT, whole_vectors
from benchmarks.workloads import AFFINE as AFFINE_GEOMETRY
from benchmarks.workloads import DIRECTIONS, QUICK, Sampling, Workload, make_case
from conftest import DEVICES

REPO = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=DEVICES)
def quick_run(request, tmp_path_factory):
    """(device, output folder, completed process) of one quick run, as a user runs it."""
    out = tmp_path_factory.mktemp(f"bench-{request.param}")
    env = {k: v for k, v in os.environ.items() if k != "STN_CUDA_POISON"}  # as outside the tests
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", request.param,
                          "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return request.param, out, run


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_metadata(quick_run):
    device, out, _ = quick_run
    meta = _results(out)["meta"]
    for key in ("command", "device", "torch", "commit", "built_with_cuda", "date", "copy_bandwidth_gbps"):
        assert key in meta, key
    assert meta["command"].endswith(f"-m benchmarks --quick --device {device} --out {out}")
    assert meta["device_type"] == device and meta["torch"] == torch.__version__
    assert meta["copy_bandwidth_gbps"] > 0


def test_rows_cover_the_quick_subset(quick_run):
    _, out, _ = quick_run
    rows = _results(out)["rows"]
    assert {(r["workload"], r["direction"]) for r in rows} == {(w, d) for w in QUICK for d in DIRECTIONS}
    assert len(rows) == len(QUICK) * len(DIRECTIONS)
    for row in rows:
        for key in ("workload", "shape", "dtype", "direction", "device", "torch", "commit", "sampling", "impls"):
            assert key in row, key
        assert row["dtype"] == "float32"


def test_every_applicable_implementation_is_timed(quick_run):
    device, out, _ = quick_run
    for row in _results(out)["rows"]:
        impls = row["impls"]
        assert set(impls) == {impl.name for impl in IMPLS}, "each implementation is timed or says why not"
        families = {SAMPLER} | ({AFFINE} if row["geometry"] == AFFINE_GEOMETRY else set())
        for impl in IMPLS:
            entry = impls[impl.name]
            if impl.family in families and impl.role in (CANDIDATE, REFERENCE):
                assert "median_ms" in entry, (row["workload"], impl.name, entry)
            if impl.family in families and impl.role == VARIANT:  # stn_cuda's other paths
                runs_here = (device == "cuda" or not impl.cuda_only) and (
                    not impl.channels_last or whole_vectors(row["channels"], getattr(torch, row["dtype"])))
                assert ("median_ms" in entry) == (runs_here and row["direction"] in impl.directions), entry
            if "median_ms" not in entry:
                assert entry["skipped"], (row["workload"], impl.name)
                continue
            assert 0 < entry["p20_ms"] <= entry["median_ms"] <= entry["p80_ms"] and entry["reps"] >= 1
            for ratio in ("speedup_vs_reference", "speedup_vs_best_torch", "gbps", "copy_bw_fraction"):
                assert 0 < entry[ratio] < math.inf, (impl.name, ratio, entry[ratio])
            assert entry["check"] == ("reference" if impl.role == REFERENCE else "ok"), entry
        if device == "cpu":
            assert impls["torch.cudnn_grid_sampler"]["skipped"] == "CUDA only"


def test_markdown_has_a_table_per_family(quick_run):
    _, out, run = quick_run
    text = (out / "results.md").read_text()
    assert text in run.stdout  # printed too
    rows = _results(out)["rows"]
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [line for line in table_lines if line.startswith("| workload |")]
    summary = [line for line in table_lines if line.startswith("| stn_cuda")]
    separators = [line for line in text.splitlines() if line.startswith("|---|")]
    assert len(header) == 2 and len(separators) == 3  # the summary's, and a table per family
    affine_rows = sum(row["geometry"] == AFFINE_GEOMETRY for row in rows)
    assert len(summary) == 1 + 2  # its header, and a line per family in the one dtype
    assert len(table_lines) == len(header) + len(rows) + affine_rows + len(summary)


def test_summary_is_the_geometric_mean():
    def row(workload, direction, speedup):
        return {"workload": workload, "dtype": "float32", "direction": direction,
                "impls": {"stn_cuda.grid_sample": {"median_ms": 1.0, "speedup_vs_best_torch": speedup}}}

    rows = [row("a", "forward", 2.0), row("b", "forward", 8.0), row("a", "backward", 0.5),
            row("b", "backward", 100.0)]
    rows[-1]["impls"]["stn_cuda.grid_sample"]["check"] = checks.MISMATCH  # left out
    line, = [line for line in report._summary(rows) if line.startswith("| stn_cuda.grid_sample")]
    assert line == ("| stn_cuda.grid_sample | float32 | 4.00× (2; least: a 2.00×) | 0.50× (1; least: a 0.50×) | – |")


def test_speedup_chart_is_a_png(quick_run):
    _, out, _ = quick_run
    assert (out / "speedup.png").read_bytes()[:8] == PNG_SIGNATURE


# -- the check fails loudly on a wrong implementation -------------------------------

TINY = Workload("tiny", 2, 3, (9, 11), (7, 5), "a test case")


def _wrong(impl_name, sample):
    impl = next(impl for impl in IMPLS if impl.name == impl_name)
    return dataclasses.replace(impl, sample=sample)


def _stn(input, geometry, out_size, s):
    return stn_cuda.grid_sample(input, geometry, padding_mode=s.padding_mode, align_corners=s.align_corners)


def _stn_affine(input, theta, out_size, s, **options):
    return stn_cuda.affine_sample(input, theta, out_size, padding_mode=s.padding_mode,
                                  align_corners=s.align_corners, **options)


WRONG = {
    "half a pixel off": ("stn_cuda.grid_sample", lambda x, g, size, s: _stn(x, g + 1 / 11, size, s)),
    "other corners": ("stn_cuda.grid_sample",
                      lambda x, g, size, s: _stn(x, g, size, Sampling(s.padding_mode, not s.align_corners))),
    "one point dropped": ("stn_cuda.grid_sample",
                          lambda x, g, size, s: _stn(x, g, size, s) * (torch.arange(5) != 3)),
    "no grid gradient": ("stn_cuda.grid_sample", lambda x, g, size, s: _stn(x, g.detach(), size, s) + 0 * g.sum()),
    "no theta gradient": ("stn_cuda.affine_sample",
                          lambda x, t, size, s: _stn_affine(x, t.detach(), size, s) + 0 * t.sum()),
    "border padding": ("stn_cuda.affine_sample",
                       lambda x, t, size, s: _stn_affine(x, t, size, Sampling("border", s.align_corners))),
}


@pytest.mark.parametrize("mistake", WRONG)
def test_check_catches_a_wrong_implementation(mistake):
    name, sample = WRONG[mistake]
    case = make_case(TINY, torch.float32, torch.device("cpu"), Sampling())
    right = next(impl for impl in IMPLS if impl.name == name)
    assert checks.check(right, case).status == checks.OK
    assert checks.check(_wrong(name, sample), case).status == checks.MISMATCH


TINY_VOLUME = Workload("tiny-volume", 2, 3, (5, 6, 7), (4, 3, 5), "a test case")


def test_check_on_volumes():
    """The suite's volumes: stn_cuda's paths pass the check, the image-only paths are not
    run, and a wrong sampler fails it."""
    case = make_case(TINY_VOLUME, torch.float32, torch.device("cpu"), Sampling())
    assert case.grid.shape == (2, 4, 3, 5, 3) and case.theta.shape == (2, 3, 4)
    for impl in IMPLS:
        reason = impl.skip_reason(case)
        if impl.name in ("torch.cudnn_grid_sampler", "kornia.warp_affine") or "channels_last" in impl.name:
            assert reason is not None, impl.name
        elif reason is None and impl.role != REFERENCE:
            assert checks.check(impl, case).status == checks.OK, impl.name
    wrong = _wrong("stn_cuda.grid_sample", lambda x, g, size, s: _stn(x, g + 1 / 7, size, s))
    assert checks.check(wrong, case).status == checks.MISMATCH
    wrong = _wrong("stn_cuda.affine_sample", lambda x, t, size, s: _stn_affine(x, t.detach(), size, s) + 0 * t.sum())
    assert checks.check(wrong, case).status == checks.MISMATCH


def test_an_interrupted_run_reports_the_cases_done(monkeypatch, tmp_path):
    """A time limit's SIGTERM (as Ctrl-C) stops the run; the cases done are written."""
    calls = []

    def run_case(case, *args, **kwargs):
        calls.append(case.workload.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [{"workload": case.workload.name}], [], []

    monkeypatch.setattr(suite_main, "run_case", run_case)
    args = parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    meta = environment.metadata(args.device, [])
    rows, failed = suite_main.run_all(args, meta)
    assert rows == [{"workload": QUICK[0]}] and not failed
    assert meta["interrupted"] == f"after 1 of {len(QUICK)} cases"
    assert f"Interrupted after 1 of {len(QUICK)} cases" in report.markdown(meta, [])


def test_unknown_workload_is_an_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--workload", "no-such-workload"])
    assert "mnist-stn" in capsys.readouterr().err


@pytest.mark.parametrize("device", DEVICES)
def test_the_timer_enters_a_callables_context_outside_its_window(device):
    """stn_cuda's settings are set before a repetition's timed window and restored after
    it, for warm-up and timed calls alike; nothing else sees them."""
    from benchmarks.timing import make_timer
    seen = []

    def call():
        seen.append(stn_cuda.get_tuning()["scatter"])

    def plain():
        seen.append("plain:" + stn_cuda.get_tuning()["scatter"])

    call.context = lambda: stn_cuda.use_tuning(scatter="warp")
    timer = make_timer(torch.device(device))
    stats = timer.compare({"tuned": call, "plain": plain}, reps=3)
    assert stats["tuned"].reps == stats["plain"].reps == 3
    assert seen.count("warp") == timer.warmup + 3 and seen.count("plain:atomic") == timer.warmup + 3
    assert stn_cuda.get_tuning()["scatter"] == "atomic"


def test_overhead_benchmark_runs(capsys, monkeypatch):
    """python -m benchmarks.overhead: a line per case, torch's and stn_cuda's times."""
    from benchmarks import overhead
    monkeypatch.setattr(sys, "argv", ["overhead", "--device", "cpu", "--calls", "3", "--rounds", "1"])
    overhead.main()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + len(overhead.cases("cpu"))
    for line in lines[2:]:
        torch_us, stn_us, ratio = map(float, line.split()[-3:])
        assert torch_us > 0 and stn_us > 0 and ratio > 0


@pytest.mark.parametrize("volumes", [False, True], ids=["images", "volumes"])
def test_cpu_vs_aten_runs(capsys, monkeypatch, volumes):
    """python -m benchmarks.cpu_vs_aten: a line per shape and direction, both times."""
    from benchmarks import cpu_vs_aten
    monkeypatch.setattr(cpu_vs_aten, "SHAPES", [(2, 3, 5, 7)])
    monkeypatch.setattr(cpu_vs_aten, "VOLUME_SHAPES", [(2, 3, 4, 5, 7)])
    argv = ["cpu_vs_aten", "--reps", "1", "--mode", "nearest", "--padding-mode", "reflection"]
    monkeypatch.setattr(sys, "argv", argv + (["--volumes"] if volumes else []))
    cpu_vs_aten.main()
    lines = capsys.readouterr().out.splitlines()
    rows = lines[2:-1]
    shape = str((2, 3, 4, 5, 7) if volumes else (2, 3, 5, 7))
    assert [row.split()[-4] for row in rows] == ["forward", "fwd+bwd"]
    assert all(row.strip().startswith(shape) for row in rows)
    assert all(float(t) > 0 for row in rows for t in row.split()[-3:])
    assert "padding_mode=reflection" in lines[0] and lines[-1].startswith("worst stn/aten ratio")


def test_cpu_vs_aten_has_no_bicubic_volumes(capsys, monkeypatch):
    from benchmarks import cpu_vs_aten
    monkeypatch.setattr(sys, "argv", ["cpu_vs_aten", "--volumes", "--mode", "bicubic"])
    with pytest.raises(SystemExit):
        cpu_vs_aten.main()
    assert "no bicubic mode" in capsys.readouterr().err
