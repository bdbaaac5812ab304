"""plots/*.png for a stored run: decode t/s per request, RSS, CPU frequency and temperature."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .summary import sample_series  # noqa: E402


def _save(figure, path: Path) -> str:
    figure.tight_layout()
    temp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temp, dpi=110)
    plt.close(figure)
    temp.replace(path)
    return path.name


def write_plots(run_dir: Path, requests: pd.DataFrame, samples: pd.DataFrame) -> list[str]:
    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    written = []
    if not requests.empty and requests["decode_tps"].notna().any():
        figure, axis = plt.subplots(figsize=(8, 3.5))
        warm = requests["warmup"].astype(str).str.lower().isin(["true", "1"])
        for label, frame, marker in (("warmup", requests[warm], "x"), ("measured", requests[~warm], "o")):
            if not frame.empty:
                axis.plot(frame["t_start_s"], frame["decode_tps"], marker=marker, linestyle="-" if label == "measured" else "",
                          label=label)
        axis.set_xlabel("time since run start (s)")
        axis.set_ylabel("decode (tokens/s)")
        axis.set_title("Decode speed per request (runtime timings)")
        axis.grid(alpha=0.3)
        axis.legend()
        written.append(_save(figure, plots_dir / "decode_tps.png"))
    panels = [
        ("process", "rss", "RSS (MiB)", 1 / 2**20, "rss.png", "Runtime process memory"),
        ("cpu", "freq", "CPU frequency (MHz)", 1, "cpu_freq.png", "CPU frequency"),
    ]
    for source, name, ylabel, scale, filename, title in panels:
        series = sample_series(samples, source, name)
        if series.empty:
            continue
        figure, axis = plt.subplots(figsize=(8, 3.5))
        axis.plot(series["t_s"], series["value"] * scale)
        axis.set_xlabel("time since run start (s)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        written.append(_save(figure, plots_dir / filename))
    thermal = sample_series(samples, "thermal")
    thermal = thermal[thermal["unit"] == "C"] if not thermal.empty else thermal
    if not thermal.empty:
        figure, axis = plt.subplots(figsize=(8, 3.5))
        for name, frame in thermal.groupby("name"):
            axis.plot(frame["t_s"], frame["value"], label=str(name))
        axis.set_xlabel("time since run start (s)")
        axis.set_ylabel("temperature (C)")
        axis.set_title("Temperature per sensor")
        axis.grid(alpha=0.3)
        if thermal["name"].nunique() <= 12:
            axis.legend(fontsize=7)
        written.append(_save(figure, plots_dir / "temperature.png"))
    return written
