"""Run summary from the stored tables: per-repetition values, then median and spread over
repetitions. Pure: DataFrames in, plain values out; report, compare and `--json` all read this."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .stats import Summary, summarize

# metric -> (requests column, unit, higher_is_better, label)
REQUEST_METRICS = {
    "prefill_tps": ("prefill_tps", "tokens/s", True, "Prefill"),
    "decode_tps": ("decode_tps", "tokens/s", True, "Decode"),
    "ttft_ms": ("ttft_ms", "ms", False, "Time to first token"),
    "itl_p50_ms": ("itl_p50_ms", "ms", False, "Inter-token latency p50"),
    "itl_p95_ms": ("itl_p95_ms", "ms", False, "Inter-token latency p95"),
    "e2e_ms": ("e2e_ms", "ms", False, "End-to-end request"),
}
UNSTABLE_CV = 0.10


def measured_requests(requests: pd.DataFrame) -> pd.DataFrame:
    """Requests that count: not warmup, no error."""
    if requests.empty:
        return requests
    return requests[~warmup_mask(requests) & ~failed_mask(requests)]


def warmup_mask(requests: pd.DataFrame) -> np.ndarray:
    column = requests["warmup"]
    if column.dtype == bool:
        return column.to_numpy()
    return column.astype(str).str.lower().isin(["true", "1"]).to_numpy()


def failed_mask(requests: pd.DataFrame) -> np.ndarray:
    column = requests["error"]
    present = column.notna().to_numpy()
    if not present.any():
        return present
    return present & (column.astype(str) != "").to_numpy()


def per_repetition(requests: pd.DataFrame, column: str) -> list[float]:
    """One value per repetition: the median over that repetition's requests (chat turns)."""
    frame = measured_requests(requests)
    if frame.empty:
        return []
    values = pd.to_numeric(frame[column], errors="coerce")
    grouped = values.groupby(frame["repetition"]).median().dropna()
    return [float(v) for v in grouped.values]


@dataclass(frozen=True)
class MetricSummary:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    values: tuple[float, ...]
    summary: Summary


def request_metrics(requests: pd.DataFrame) -> dict[str, MetricSummary]:
    metrics = {}
    for name, (column, unit, higher, label) in REQUEST_METRICS.items():
        values = per_repetition(requests, column)
        metrics[name] = MetricSummary(name, label, unit, higher, tuple(values), summarize(values))
    return metrics


def sample_series(samples: pd.DataFrame, source: str, name: str | None = None) -> pd.DataFrame:
    if samples.empty:
        return samples
    mask = samples["source"] == source
    if name is not None:
        mask &= samples["name"] == name
    return samples[mask]


def peak_rss_bytes(samples: pd.DataFrame, fallback: float | None = None) -> float | None:
    """max(VmHWM, VmRSS + VmSwap) over the run (DESIGN section 5), or the runner's final reading."""
    candidates = [fallback] if fallback else []
    process = sample_series(samples, "process")
    if not process.empty:
        for name in ("peak_rss", "rss"):
            series = process[process["name"] == name]["value"]
            if not series.empty:
                candidates.append(float(series.max()))
        rss = process[process["name"] == "rss"].set_index("t_s")["value"]
        swap = process[process["name"] == "swap"].set_index("t_s")["value"]
        if not rss.empty and not swap.empty:
            joined = rss.add(swap.reindex(rss.index).fillna(0))
            candidates.append(float(joined.max()))
    return max(candidates) if candidates else None


def max_temperature_c(samples: pd.DataFrame) -> float | None:
    thermal = sample_series(samples, "thermal")
    thermal = thermal[thermal["unit"] == "C"] if not thermal.empty else thermal
    return float(thermal["value"].max()) if not thermal.empty else None


def run_summary(requests: pd.DataFrame, samples: pd.DataFrame, *, final_peak_rss: float | None = None,
                bandwidth_gbs: float | None = None, model_bytes: int | None = None,
                charging: bool | None = None, throttled: bool | None = None) -> dict:
    metrics = request_metrics(requests)
    decode = metrics["decode_tps"].summary
    measured = measured_requests(requests)
    summary: dict = {
        "repetitions_measured": int(measured["repetition"].nunique()) if not measured.empty else 0,
        "requests_measured": int(len(measured)),
        "requests_failed": int(failed_mask(requests).sum()) if not requests.empty else 0,
        "gen_tokens_total": int(pd.to_numeric(measured["gen_tokens"]).sum()) if not measured.empty else 0,
    }
    for name, metric in metrics.items():
        summary[f"{name}_median"] = metric.summary.median
        summary[f"{name}_iqr"] = metric.summary.iqr
        summary[f"{name}_cv"] = metric.summary.cv
    summary["peak_rss_bytes"] = peak_rss_bytes(samples, final_peak_rss)
    summary["max_temperature_c"] = max_temperature_c(samples)
    if bandwidth_gbs and model_bytes and decode.median:
        ceiling = bandwidth_gbs * 1e9 / model_bytes
        summary["roofline_ceiling_tps"] = ceiling
        summary["roofline_efficiency"] = decode.median / ceiling
    else:
        summary["roofline_ceiling_tps"] = summary["roofline_efficiency"] = None
    cv = decode.cv
    summary["validity"] = {
        "charging": charging,
        "throttled": throttled,
        "unstable": None if cv is None else bool(cv > UNSTABLE_CV),
        "unstable_rule": f"decode t/s CV over repetitions > {UNSTABLE_CV:.0%}",
    }
    return summary


def decode_drift(requests: pd.DataFrame) -> float | None:
    """Sustained runs: last repetition's decode t/s relative to the first (-0.2 = 20% slower)."""
    values = per_repetition(requests, "decode_tps")
    if len(values) < 2 or not values[0]:
        return None
    return values[-1] / values[0] - 1


def jsonable(value):
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
