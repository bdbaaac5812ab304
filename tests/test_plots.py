"""Plots a reader trusts at a glance: speeds from zero, a unit on every axis, one time axis per run."""

import re

import matplotlib.pyplot as plt
import pandas as pd

from bench.plots import run_figures
from bench.records import Sample
from bench.store import load_run
from synth import write_run

UNIT = re.compile(r"\((s|MiB|MHz|W[^)]*|%|°C|tokens/s)\)")


def _run_with_telemetry(tmp_path):
    data = load_run(write_run(tmp_path, [120.0, 100.0, 80.0], power_w=2.0))
    late = float(data.samples["t_s"].max()) + 5.0  # telemetry outlives the last request
    extra = [Sample(t, "thermal", "BIG", 40.0 + t, "C") for t in (0.5, late)]
    extra += [Sample(t, "cpu", "freq_cpu4", 2000.0, "MHz") for t in (0.5, late)]
    samples = pd.concat([data.samples, pd.DataFrame([vars(s) for s in extra])], ignore_index=True)
    return data.requests, samples, late


def test_run_plots_share_one_time_axis_start_speeds_at_zero_and_name_units(tmp_path):
    requests, samples, late = _run_with_telemetry(tmp_path)
    figures = run_figures(requests, samples)
    try:
        assert {"decode_tps.png", "prefill_tps.png", "rss.png", "power.png", "cpu_freq.png",
                "temperature.png"} <= set(figures)
        spans = set()
        for name, figure in figures.items():
            axis = figure.axes[0]
            spans.add(tuple(round(x, 6) for x in axis.get_xlim()))
            assert UNIT.search(axis.get_xlabel()) and UNIT.search(axis.get_ylabel()), (name, axis.get_ylabel())
        assert len(spans) == 1, spans
        (start, end), = spans
        assert start == 0 and end >= late  # the axis runs to the last sample, not the last request
        for name in ("decode_tps.png", "prefill_tps.png"):
            low, high = figures[name].axes[0].get_ylim()
            assert low == 0 and high > requests[name.removesuffix(".png")].max()
    finally:
        for figure in figures.values():
            plt.close(figure)
