"""plots/*.png for a stored run (decode and prefill t/s per request, memory, CPU frequency, power,
battery, temperature), and the plots of compare, matrix sweeps and history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import request_windows, sample_series, warmup_mask  # noqa: E402
from .throttle import frequency_caps, hottest_zone  # noqa: E402


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp, dpi=110)
    plt.close(figure)
    temp.replace(path)
    return path.name


TIME_LABEL = "time since run start (s)"
_PANELS = (  # source, sample names, y label with unit, scale, file, title
    ("cpu", "freq", "CPU frequency (MHz)", 1, "cpu_freq.png", "CPU frequency"),
    ("gpu", "busy", "GPU busy (%)", 1, "gpu_busy.png", "GPU busy (kgsl)"),
    ("gpu", "freq", "GPU clock (MHz)", 1, "gpu_freq.png", "GPU clock"),
    ("battery", "power", "power (W, discharge positive)", 1, "power.png", "Battery power (V x I)"),
    ("battery", "level", "battery level (%)", 1, "battery_level.png", "Battery level"),
)


def write_plots(run_dir: Path, requests: pd.DataFrame, samples: pd.DataFrame, stress: dict | None = None,
                memory: dict | None = None) -> list[str]:
    """Every plot of a run, on one time axis (0 to the run's last request or sample) so they line
    up when read one above the other; speeds start at zero."""
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    return [_save(figure, plots_dir / name) for name, figure in run_figures(requests, samples, stress, memory).items()]


def run_figures(requests: pd.DataFrame, samples: pd.DataFrame, stress: dict | None = None,
                memory: dict | None = None) -> dict:
    """file name -> figure, for what the run has data for (the caller saves or closes them)."""
    span = _time_span(requests, samples)
    figures = [_stress_plot(samples, stress, span)] if stress and stress.get("available") else []
    figures += [_speed_plot(requests, column, span) for column in ("decode_tps", "prefill_tps")]
    figures.append(_memory_plot(samples, memory or {}, span))
    figures += [_panel_plot(samples, panel, span) for panel in _PANELS]
    figures.append(_temperature_plot(samples, span))
    return dict(found for found in figures if found)


def _stress_plot(samples: pd.DataFrame, stress: dict, span) -> tuple:
    """Decode t/s per loop with the hottest zone over it, thermal status shaded; below, each
    cluster's frequency cap: where the speed went and why, on the run's time axis."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(3, 2))
    run_loops = stress["loops"]
    top.plot([(loop["start_s"] + loop["end_s"]) / 2 for loop in run_loops], [loop["decode_tps"] for loop in run_loops],
             marker="o", color="tab:blue", label="decode per loop")
    top.set_ylim(0, max(loop["decode_tps"] for loop in run_loops) * 1.15)
    top.set_ylabel("decode (tokens/s)")
    top.set_title(f"Thermal stress: stability {stress['stability']:.0%}, sustained "
                  f"{stress['sustained_decode_tps']:.1f} of peak {stress['peak_decode_tps']:.1f} tokens/s")
    status = sample_series(samples, "thermal", "status").sort_values("t_s") if not samples.empty else samples
    for time_s, level, next_s in zip(status["t_s"], status["value"], list(status["t_s"][1:]) + [span[1]]):
        if level > 0:
            top.axvspan(time_s, next_s, color="tab:red", alpha=min(0.08 * level, 0.5), linewidth=0)
    zone = (stress.get("steady_state") or {}).get("zone") or hottest_zone(samples)
    if zone:
        temps = sample_series(samples, "thermal", zone)
        right = top.twinx()
        right.plot(temps["t_s"], temps["value"], color="tab:orange", label=f"{zone} (°C)")
        right.set_ylabel(f"{zone} temperature (°C)")
        right.legend(loc="lower right", fontsize=7)
    top.legend(loc="lower left", fontsize=7)
    top.grid(alpha=0.3)
    caps = frequency_caps(samples)
    for name, frame in caps.groupby("name"):
        bottom.plot(frame["t_s"], frame["value"] * 100, label=str(name).replace("cap_", ""))
    bottom.set_ylim(0, 105)
    if not caps.empty:
        bottom.legend(loc="lower left", fontsize=7)
    _time_axes(bottom, span, "frequency cap (% of max)", "Cluster frequency caps (shaded above: thermal status > NONE)")
    return "stress.png", figure


def _time_span(requests: pd.DataFrame, samples: pd.DataFrame) -> tuple[float, float]:
    ends = [0.0]
    if not requests.empty:
        ends.append(float(np.nanmax(request_windows(requests)[1], initial=0.0)))
    if not samples.empty:
        ends.append(float(pd.to_numeric(samples["t_s"]).max()))
    return 0.0, max(ends) * 1.02 or 1.0


def _time_axes(axis, span: tuple[float, float], ylabel: str, title: str) -> None:
    axis.set_xlim(*span)
    axis.set_xlabel(TIME_LABEL)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)


_SPEEDS = {"decode_tps": ("decode (tokens/s)", "Decode speed per request (runtime timings)"),
           "prefill_tps": ("prefill (tokens/s)", "Prefill speed per request (runtime timings)")}


def _speed_plot(requests: pd.DataFrame, column: str, span) -> tuple | None:
    if requests.empty or not requests[column].notna().any():
        return None
    figure, axis = plt.subplots(figsize=(8, 3.5))
    warm = warmup_mask(requests)
    for label, frame, marker in (("warmup", requests[warm], "x"), ("measured", requests[~warm], "o")):
        if not frame.empty:
            axis.plot(frame["t_start_s"], frame[column], marker=marker, linestyle="-" if label == "measured" else "",
                      label=label)
    _time_axes(axis, span, *_SPEEDS[column])
    top = float(pd.to_numeric(requests[column]).max())
    axis.set_ylim(0, top * 1.12 if top > 0 else 1)  # from zero: a ratio read off the plot is the real ratio
    axis.legend(loc="lower right")
    return f"{column}.png", figure


_MEMORY_BANDS = (("weights", "weights", "tab:gray"), ("kv_cache", "KV cache", "tab:green"),
                 ("compute", "compute buffers", "tab:purple"), ("output", "output buffer", "tab:brown"))


def _memory_plot(samples: pd.DataFrame, memory: dict, span) -> tuple | None:
    """The runtime's RSS (and PSS) over the run, over bands stacked from zero for the buffers
    llama.cpp reported at load (weights, KV cache, compute, output): where the memory goes, and
    how much of it the process has touched."""
    series = sample_series(samples, "process")
    series = series[series["name"].isin(("rss", "pss"))] if not series.empty else series
    buffers = memory.get("buffers") or []
    if series.empty and not buffers:
        return None
    figure, axis = plt.subplots(figsize=(8, 3.5))
    bottom = 0.0
    for part, label, color in _MEMORY_BANDS:
        size = sum(b["bytes"] for b in buffers if b["part"] == part) / 2**20
        if size:
            axis.axhspan(bottom, bottom + size, color=color, alpha=0.18, linewidth=0,
                         label=f"{label} {size:,.1f} MiB (llama.cpp)")
            bottom += size
    for label, frame in series.groupby("name"):
        axis.plot(frame["t_s"], frame["value"] / 2**20, label=f"{str(label).upper()} (sampled)")
    axis.set_ylim(0, max(bottom, float(series["value"].max()) / 2**20 if not series.empty else 0.0) * 1.1 or 1)
    axis.legend(fontsize=7, loc="lower right")
    _time_axes(axis, span, "memory (MiB)", "Runtime memory: sampled RSS/PSS over llama.cpp's buffers by part")
    return "rss.png", figure


def _panel_plot(samples: pd.DataFrame, panel: tuple, span) -> tuple | None:
    source, name, ylabel, scale, filename, title = panel
    if isinstance(name, tuple):
        series = sample_series(samples, source)
        series = series[series["name"].isin(name)] if not series.empty else series
    else:
        series = sample_series(samples, source, name)
    if series.empty and source == "cpu":  # phones: one frequency per cluster
        series = samples[(samples["source"] == "cpu") & samples["name"].astype(str).str.startswith("freq_")] \
            if not samples.empty else series
    if series.empty:
        return None
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for label, frame in series.groupby("name"):
        axis.plot(frame["t_s"], frame["value"] * scale, label=str(label))
    if series["name"].nunique() > 1:
        axis.legend(fontsize=7)
    _time_axes(axis, span, ylabel, title)
    return filename, figure


def _temperature_plot(samples: pd.DataFrame, span) -> tuple | None:
    thermal = sample_series(samples, "thermal")
    thermal = thermal[thermal["unit"] == "C"] if not thermal.empty else thermal
    if thermal.empty:
        return None
    figure, axis = plt.subplots(figsize=(8, 3.5))
    for name, frame in thermal.groupby("name"):
        axis.plot(frame["t_s"], frame["value"], label=str(name))
    _time_axes(axis, span, "temperature (°C)", "Temperature per sensor")
    if thermal["name"].nunique() <= 12:
        axis.legend(fontsize=7)
    return "temperature.png", figure


def write_compare_plot(path: Path, comparisons) -> Path:
    """Change of each metric head vs base with its 95% interval, coloured by verdict."""
    colours = {"improved": "tab:green", "regressed": "tab:red", "suspected": "tab:orange", "unchanged": "tab:gray",
               "inconclusive": "tab:olive", "not compared": "lightgray"}
    rows = [(f"{m.spec.label}" + (f" [{c.head.label}]" if len(comparisons) > 1 else ""), m)
            for c in comparisons for m in c.metrics if m.change is not None]
    figure, axis = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.2))
    for index, (label, m) in enumerate(rows):
        low, high = (m.ci[0] - 1, m.ci[1] - 1) if m.ci else (m.change, m.change)
        axis.errorbar(m.change * 100, index, xerr=[[max(0.0, (m.change - low) * 100)], [max(0.0, (high - m.change) * 100)]],
                      fmt="o", color=colours[m.verdict], capsize=4)
    axis.set_yticks(range(len(rows)), [label for label, _ in rows])
    threshold = comparisons[0].threshold * 100 if comparisons else 5
    axis.axvspan(-threshold, threshold, color="0.92", zorder=0)
    axis.axvline(0, color="0.5", linewidth=0.8)
    axis.set_xlabel("head vs base, median change (%) with 95% bootstrap interval")
    axis.set_title("bench compare (band = threshold; direction per metric in the table)")
    axis.invert_yaxis()
    axis.grid(axis="x", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


# what a sweep's plot shows: (row metric, title, unit) per panel; concurrent sequences are about
# the throughput all of them get, what each one gets, and how long each waits for its first token
SWEEP_PANELS = {
    "threads": (("decode_tps", "Decode", "tokens/s"), ("prefill_tps", "Prefill", "tokens/s")),
    "depth": (("decode_tps", "Decode", "tokens/s"), ("prefill_tps", "Prefill", "tokens/s")),
    "parallel": (("aggregate_decode_tps", "Aggregate decode (all sequences)", "tokens/s"),
                 ("decode_tps", "Decode per sequence", "tokens/s"), ("ttft_ms", "Time to first token", "ms")),
}
SWEEP_AXES = {"threads": ("{} threads", "threads"),
              "depth": ("depth {}", "tokens in the KV cache before the request (depth)"),
              "parallel": ("{} parallel", "concurrent sequences (llama-server slots)")}


def write_sweep_plot(path: Path, rows: list[dict], axis_key: str) -> Path:
    """The figures SWEEP_PANELS names (median with IQR bars) against threads, depth or parallel
    sequences (`axis_key`), one line per combination of what else varies (device, model, scenario,
    the other axes, CPUs)."""
    panels = SWEEP_PANELS[axis_key]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
    lines: dict[str, list[dict]] = {}
    varying = [k for k in ("device", "model", "scenario", *SWEEP_AXES)
               if k != axis_key and len({str(r.get(k)) for r in rows}) > 1]
    for row in rows:
        if row.get(axis_key) is None or row.get(f"{panels[0][0]}_median") is None:
            continue
        cpus = "default CPUs" if row["affinity"] is None else "cpus " + ",".join(map(str, row["affinity"]))
        key = ", ".join([*(SWEEP_AXES.get(k, ("{}",))[0].format(row.get(k)) for k in varying), cpus])
        lines.setdefault(key, []).append(row)
    for axis, (metric, title, unit) in zip(axes, panels):
        for key, points in lines.items():
            points = sorted(points, key=lambda r: r[axis_key])
            axis.errorbar([p[axis_key] for p in points], [p.get(f"{metric}_median") for p in points],
                          yerr=[(p.get(f"{metric}_iqr") or 0) / 2 for p in points], marker="o", capsize=3, label=key)
        axis.set_xticks(sorted({row[axis_key] for points in lines.values() for row in points}))
        axis.set_xlabel(SWEEP_AXES[axis_key][1])
        axis.set_ylabel(f"{unit} (median, IQR bars)")
        axis.set_ylim(bottom=0)
        axis.set_title(f"{title} vs {axis_key}", fontsize=10)
        axis.grid(alpha=0.3)
        if len(lines) > 1:
            axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def write_draft_plot(path: Path, rows: list[dict], speedups: dict[str, float]) -> Path:
    """Speculative decoding's sweep: decode without a draft and with each (median, IQR bars),
    grouped by what else differs; each draft's bar says its acceptance and speed-up."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("draft") is not None and row.get("decode_tps_median") is not None:
            groups.setdefault(row["without_draft_key"], []).append(row)
    figure, axis = plt.subplots(figsize=(max(6.0, 1.6 * sum(len(g) for g in groups.values())), 3.8))
    position, ticks, labels = 0, [], []
    for group in groups.values():
        for row in group:
            color = "0.6" if row["draft"] == "none" else "tab:blue"
            axis.bar(position, row["decode_tps_median"], yerr=(row.get("decode_tps_iqr") or 0) / 2, capsize=3, color=color)
            if row["key"] in speedups:
                acceptance = row.get("draft_acceptance_median")
                note = f"{speedups[row['key']]:.2f}x" + ("" if acceptance is None else f"\n{acceptance:.0%} accepted")
                axis.annotate(note, (position, row["decode_tps_median"]), textcoords="offset points", xytext=(0, 4),
                              ha="center", fontsize=7)
            ticks.append(position)
            labels.append(("no draft" if row["draft"] == "none" else f"draft {row['draft']}")
                          + (f"\n{row['device']}, {row['model']}" if len(groups) > 1 else ""))
            position += 1
        position += 0.5
    axis.set_xticks(ticks, labels, fontsize=7)
    axis.set_ylabel("decode tokens/s (median, IQR bars)")
    axis.set_ylim(bottom=0)
    axis.set_title("Speculative decoding: decode with and without the draft\n(above each draft: speed-up, drafted "
                   "tokens accepted)", fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def write_history_plot(path: Path, lines: dict[str, list[tuple]], ylabel: str, by: str) -> Path:
    """One metric across runs: a line per series at each run's median, its repetitions' IQR shaded."""
    figure, axis = plt.subplots(figsize=(10, 3.8))
    labels: list[str] = []
    for rows in lines.values():
        for row in rows:
            if row[0] not in labels:
                labels.append(row[0])
    if by == "date":
        labels.sort()
    position = {label: index for index, label in enumerate(labels)}
    for name, rows in lines.items():
        xs = [position[row[0]] for row in rows]
        low, median, high = [row[1] for row in rows], [row[2] for row in rows], [row[3] for row in rows]
        axis.plot(xs, median, marker="o", label=name)
        axis.fill_between(xs, low, high, alpha=0.2)
    axis.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
    axis.set_xlabel("run start (UTC)" if by == "date" else "harness commit")
    axis.set_ylabel(ylabel)
    axis.set_title(f"{ylabel} across runs (band: IQR over each run's repetitions)")
    axis.grid(alpha=0.3)
    if len(lines) <= 8:
        axis.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path
