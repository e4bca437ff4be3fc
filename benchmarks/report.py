"""The run's files: results.json (metadata and every row), results.md (a table per
family) and speedup.png (stn_cuda's speedup over the fastest torch implementation,
per workload)."""
import json
import math
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402

from .checks import MISMATCH  # noqa: E402
from .impls import CANDIDATE, FAMILIES, family  # noqa: E402
from .workloads import DIRECTIONS  # noqa: E402


def write_all(out: Path, meta: dict, rows: List[dict]) -> Dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "speedup.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, allow_nan=True) + "\n")
    paths["md"].write_text(markdown(meta, rows))
    plot_speedup(paths["png"], meta, rows)
    return paths


def _candidate(family_name: str) -> str:
    return next(impl.name for impl in family(family_name) if impl.role == CANDIDATE)


def _measured(row: dict, name: str) -> bool:
    return "median_ms" in row["impls"].get(name, {})


def _time(entry: dict) -> str:
    if "median_ms" not in entry:
        return "–"
    return f"{entry['median_ms']:.3g} ({entry['p20_ms']:.3g}–{entry['p80_ms']:.3g})"


def _ratio(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _check(row: dict, names: List[str]) -> str:
    """The candidate's check, and any other implementation's mismatch."""
    entries = {name: row["impls"][name] for name in names if _measured(row, name)}
    status = [entry["check"] for name, entry in entries.items() if entry["role"] == CANDIDATE]
    status += [f"{name}: {entry['check']}" for name, entry in entries.items()
               if entry["role"] != CANDIDATE and entry["check"] == MISMATCH]
    return "; ".join(s.upper() if s == MISMATCH else s for s in status)


def _family_table(family_name: str, rows: List[dict]) -> List[str]:
    candidate = _candidate(family_name)
    rows = [row for row in rows if _measured(row, candidate)]
    if not rows:
        return []
    names = [impl.name for impl in family(family_name) if any(impl.name in row["impls"] for row in rows)]
    headers = []
    for name in names:
        sampling = {row["impls"][name].get("sampling") for row in rows} - {None, rows[0]["sampling"]}
        headers.append(name + "".join(f" ({s})" for s in sampling))
    lines = [f"## {FAMILIES[family_name]}", "",
             "| workload | shape | dtype | direction | " + " | ".join(headers)
             + " | speedup | vs best torch | GB/s | % of copy | check |",
             "|" + "---|" * (len(names) + 9)]
    for row in rows:
        ours = row["impls"][candidate]
        cells = [row["workload"], row["shape"], row["dtype"], row["direction"],
                 *(_time(row["impls"].get(name, {})) for name in names),
                 _ratio(ours["speedup_vs_reference"]), _ratio(ours["speedup_vs_best_torch"]),
                 f"{ours['gbps']:.3g}", f"{100 * ours['copy_bw_fraction']:.0f}%", _check(row, names)]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = sorted({f"{name}: {row['impls'][name]['skipped']}" for row in rows for name in names
                      if "skipped" in row["impls"].get(name, {})})
    notes = sorted({f"{name}, {row['workload']} {row['dtype']}: {note}" for row in rows for name in names
                    if _measured(row, name) for note in row["impls"][name].get("check_notes", [])})
    lines += [""] + [f"- not run: {s}" for s in skipped] + [f"- check note: {n}" for n in notes]
    return lines + [""]


def _summary(rows: List[dict]) -> List[str]:
    """Per family and dtype, in each direction: the geometric mean over the workloads of
    the candidate's speedup over the fastest torch implementation, and its worst case.
    A workload whose candidate failed its check is left out: a wrong result's speed
    counts for nothing."""
    lines = ["## Summary: speedup over the fastest torch implementation", "",
             "Geometric mean over the workloads whose results checked out (how many; the one where the"
             " speedup is least).", "",
             "| stn_cuda | dtype | " + " | ".join(DIRECTIONS) + " |",
             "|" + "---|" * (2 + len(DIRECTIONS))]
    for family_name in FAMILIES:
        candidate = _candidate(family_name)
        for dtype in dict.fromkeys(row["dtype"] for row in rows):
            cells = []
            for direction in DIRECTIONS:
                found = {row["workload"]: entry["speedup_vs_best_torch"] for row in rows
                         if row["dtype"] == dtype and row["direction"] == direction and _measured(row, candidate)
                         for entry in [row["impls"][candidate]]
                         if entry["speedup_vs_best_torch"] and entry.get("check") != MISMATCH}
                if found:
                    mean = math.exp(sum(math.log(v) for v in found.values()) / len(found))
                    slowest = min(found, key=found.get)
                    cells.append(f"{mean:.2f}× ({len(found)}; least: {slowest} {found[slowest]:.2f}×)")
                else:
                    cells.append("–")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {candidate} | {dtype} | " + " | ".join(cells) + " |")
    return lines + [""]


def markdown(meta: dict, rows: List[dict]) -> str:
    reps = sorted({entry["reps"] for row in rows for entry in row["impls"].values() if "reps" in entry})
    lines = [
        "# stn_cuda benchmark", "",
        f"`{meta['command']}`", "",
        f"- device: {meta['device']}; torch {meta['torch']}"
        + (f", CUDA {meta['cuda']}, cuDNN {meta['cudnn']}" if meta["cuda"] else ""),
        f"- stn_cuda {meta['stn_cuda']} ({'CUDA' if meta['built_with_cuda'] else 'CPU-only'} build),"
        f" commit {meta['commit']}, {meta['date']}",
        f"- sampling: {rows[0]['sampling'] if rows else '-'}; copy bandwidth (dst.copy_(src)):"
        f" {meta['copy_bandwidth_gbps']:.1f} GB/s",
        "",
        f"Times in ms: median (20th–80th percentile) of {', '.join(map(str, reps))} repetitions."
        " speedup: the reference's time (the first torch column) over stn_cuda's; vs best torch:"
        " the fastest torch implementation's over stn_cuda's (>1: stn_cuda is faster)."
        " GB/s: stn_cuda's minimal memory traffic (benchmarks/workloads.py, min_bytes) per second;"
        " % of copy: that against the copy bandwidth. check: stn_cuda against torch before timing"
        " (benchmarks/checks.py).",
        "",
    ]
    if "interrupted" in meta:
        lines += [f"**Interrupted {meta['interrupted']}**: the tables cover those cases only.", ""]
    lines += _summary(rows)
    for family_name in FAMILIES:
        lines += _family_table(family_name, rows)
    return "\n".join(lines)


def _ratio_label(x, _position=None) -> str:
    """2×, 1×, 1/4× rather than 0.25×."""
    return f"{x:g}×" if x >= 1 else f"1/{1 / x:g}×"


def plot_speedup(path: Path, meta: dict, rows: List[dict]):
    """One panel per family and direction, a bar per workload and dtype: stn_cuda's speedup
    over the fastest torch implementation, drawn from 1 on a log scale (green: faster)."""
    def speedups(family_name, direction):
        candidate = _candidate(family_name)
        return {f"{row['workload']} {row['dtype']}": row["impls"][candidate]["speedup_vs_best_torch"]
                for row in rows if row["direction"] == direction and _measured(row, candidate)}

    directions = [d for d in DIRECTIONS if any(row["direction"] == d for row in rows)]
    families = [f for f in FAMILIES if any(speedups(f, d) for d in directions)]
    labels = {f: list(dict.fromkeys(k for d in directions for k in speedups(f, d))) for f in families}
    values = [v for f in families for d in directions for v in speedups(f, d).values() if v]
    # The data's range with room for the labels, 1/2x..2x at least, and ticks at powers of 2
    # that are few enough to read.
    low, high = min(values + [0.5]) / 1.6, max(values + [2.0]) * 2.2
    fig, axes = plt.subplots(
        max(len(families), 1), max(len(directions), 1), squeeze=False, sharey="row",
        figsize=(4.4 * max(len(directions), 1), 1.4 + sum(0.3 * len(labels[f]) + 0.8 for f in families)),
        gridspec_kw={"height_ratios": [len(labels[f]) + 2 for f in families] or None})
    for i, family_name in enumerate(families):
        for j, direction in enumerate(directions):
            ax, found = axes[i][j], speedups(family_name, direction)
            ys = [k for k, label in enumerate(labels[family_name]) if found.get(label)]
            xs = [found[labels[family_name][k]] for k in ys]
            ax.barh(ys, [x - 1 for x in xs], left=1, height=0.7,
                    color=["#2a9d55" if x >= 1 else "#d1495b" for x in xs])
            for y, x in zip(ys, xs):
                ax.annotate(f"{x:.2f}×", (x, y), xytext=(3 if x >= 1 else -3, 0), textcoords="offset points",
                            ha="left" if x >= 1 else "right", va="center", fontsize=7)
            ax.axvline(1, color="black", linewidth=0.8)
            ax.set_xscale("log", base=2)
            ax.set_xlim(low, high)
            ax.xaxis.set_major_locator(LogLocator(base=2, numticks=6))
            ax.xaxis.set_major_formatter(FuncFormatter(_ratio_label))
            ax.grid(axis="x", alpha=0.3)
            ax.set_title(f"{_candidate(family_name)}, {direction}", fontsize=9)
            ax.set_yticks(range(len(labels[family_name])), labels[family_name], fontsize=8)
            ax.set_ylim(len(labels[family_name]) - 0.5, -0.5)
    fig.suptitle("stn_cuda's speedup over the fastest torch implementation (>1×: stn_cuda is faster)\n"
                 f"{meta['device']} · torch {meta['torch']} · commit {meta['commit']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
