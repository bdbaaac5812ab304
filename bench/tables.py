"""The stored tables as the figures read them: which requests count, each request's window, one
sample series, and a run's samples split once per series. Pure: DataFrames in, arrays out."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .records import request_end_s


def measured_requests(requests: pd.DataFrame) -> pd.DataFrame:
    """Requests that count: not warmup, no error."""
    if requests.empty:
        return requests
    return requests[~warmup_mask(requests) & ~failed_mask(requests)]


def request_windows(requests: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each request's (start, end) in seconds since run start, as arrays."""
    starts = pd.to_numeric(requests["t_start_s"]).to_numpy(dtype=float)
    return starts, request_end_s(starts, pd.to_numeric(requests["e2e_ms"]).to_numpy(dtype=float))


def overlap_groups(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A group number for each window: windows that overlap (concurrent sequences), directly or
    through another, share one; groups are numbered in time order."""
    groups = np.zeros(starts.size, dtype=int)
    current, reach = -1, -np.inf
    for index in np.argsort(starts, kind="stable"):
        if starts[index] >= reach:
            current, reach = current + 1, ends[index]
        else:
            reach = max(reach, ends[index])
        groups[index] = current
    return groups


def merge_concurrent(requests: pd.DataFrame) -> pd.DataFrame:
    """Requests whose windows overlap as one row each (first sent to last done, tokens summed,
    `sequences` counting them), so energy is measured over a stretch of time once however many
    sequences shared it. A row that overlaps nothing stays as it was, with sequences 1. A merged
    row's ttft_ms is to the earliest first token."""
    if requests.empty:
        return requests.assign(sequences=pd.Series(dtype=int))
    starts, ends = request_windows(requests)
    groups = overlap_groups(starts, ends)
    if np.unique(groups).size == len(requests):
        return requests.assign(sequences=1)
    first = starts + pd.to_numeric(requests["ttft_ms"], errors="coerce").to_numpy(dtype=float) / 1000
    frame = pd.DataFrame({"group": groups, "repetition": requests["repetition"].to_numpy(), "t_start_s": starts,
                          "end": ends, "first": first, **{column: pd.to_numeric(requests[column]).to_numpy(dtype=float)
                                                          for column in ("gen_tokens", "prompt_tokens", "cached_tokens")}})
    merged = frame.groupby("group", sort=True).agg(
        repetition=("repetition", "first"), t_start_s=("t_start_s", "min"), end=("end", "max"), first=("first", "min"),
        gen_tokens=("gen_tokens", "sum"), prompt_tokens=("prompt_tokens", "sum"),
        cached_tokens=("cached_tokens", "sum"), sequences=("group", "size"))
    merged["e2e_ms"] = (merged["end"] - merged["t_start_s"]) * 1000
    merged["ttft_ms"] = (merged["first"] - merged["t_start_s"]) * 1000
    return merged.drop(columns=["end", "first"]).reset_index(drop=True)


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


def sample_series(samples: pd.DataFrame, source: str, name: str | None = None) -> pd.DataFrame:
    if samples.empty:
        return samples
    mask = samples["source"] == source
    if name is not None:
        mask &= samples["name"] == name
    return samples[mask]


def split_series(samples: pd.DataFrame) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, str]]:
    """(source, name) -> (t_s sorted, value, unit), split once per run."""
    if samples.empty:
        return {}
    times = samples["t_s"].to_numpy(dtype=float)
    values = samples["value"].to_numpy(dtype=float)
    units = samples["unit"].to_numpy()
    source_codes, sources = pd.factorize(samples["source"])
    name_codes, names = pd.factorize(samples["name"])
    codes = source_codes * len(names) + name_codes
    order = np.lexsort((times, codes))  # by series, then by time
    boundaries = np.flatnonzero(np.diff(codes[order])) + 1
    found = {}
    for index in np.split(order, boundaries):
        code = codes[index[0]]
        key = (str(sources[code // len(names)]), str(names[code % len(names)]))
        found[key] = (times[index], values[index], str(units[index[0]]))
    return found


def series_window(series: tuple[np.ndarray, np.ndarray, str], start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
    times, values, _ = series
    low, high = np.searchsorted(times, start, "left"), np.searchsorted(times, end, "right")
    return times[low:high], values[low:high]

