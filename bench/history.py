"""`bench history RESULTS`: every metric across runs, by date or by commit, with its noise band.

Runs are grouped into series by what `bench compare` matches on (device, model, scenario, runtime,
threads); each run is a point at its median over repetitions, with the interquartile range of its
repetitions as the band, so a step that leaves the band is a change and one inside it is noise.
Writes history.json, one PNG per metric and history.html, a static page (no scripts but one that
marks the page once its images have loaded, for headless checks)."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compare import MATCH_KEYS, run_host, run_key, setup_label
from .errors import UsageError
from .files import atomic_write_bytes, atomic_write_json
from .metrics import BY_NAME
from .store import find_runs, load_run_meta
from .summary import run_repetition_values

SCHEMA_VERSION = 1
# metric -> (label, unit, scale from the stored unit), from the one catalogue
METRICS = {name: (BY_NAME[name].label, BY_NAME[name].unit, BY_NAME[name].scale)
           for name in ("decode_tps", "prefill_tps", "ttft_ms", "peak_rss_bytes", "max_temperature_c", "j_per_token")}


@dataclass(frozen=True)
class HistoryPoint:
    run_dir: str
    started_at: str
    commit: str | None
    status: str
    values: dict[str, list[float]]   # metric -> per-repetition values


def collect(root: Path) -> dict[str, list[HistoryPoint]]:
    """Series label -> points in time order."""
    series: dict[str, list[HistoryPoint]] = {}
    runs = [(run_dir, load_run_meta(run_dir)) for run_dir in find_runs(root)]
    several_hosts = len({run_host(run) for _, run in runs}) > 1  # results merged from a sharded matrix's hosts
    for run_dir, run in runs:
        key = run_key(run)
        device, model = run.get("device") or {}, run.get("model") or {}
        label = (f"{device.get('profile')} | {model.get('alias')} | {(run.get('scenario') or {}).get('name')} | "
                 f"{(run.get('runtime') or {}).get('kind')} | {setup_label(key)}")
        label += f" [{'/'.join(key[k][:8] for k in MATCH_KEYS if k in ('model', 'scenario'))}]"
        if several_hosts:
            label += f" on {run_host(run)}"
        commit = (run.get("harness") or {}).get("git_commit")
        series.setdefault(label, []).append(HistoryPoint(str(run_dir), str(run.get("started_at")),
                                                         commit[:9] if commit else None, str(run.get("status")),
                                                         run_repetition_values(run_dir, run).values))
    for points in series.values():
        points.sort(key=lambda p: p.started_at)
    return series


def _band(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    q1, median, q3 = np.percentile(np.asarray(values, dtype=float), [25, 50, 75])
    return float(q1), float(median), float(q3)


def write_history(root: Path, out: Path, by: str = "date") -> Path:
    if by not in ("date", "commit"):
        raise UsageError(f"unknown --by '{by}'", "use date or commit")
    series = collect(root)
    out.mkdir(parents=True, exist_ok=True)
    from .plots import write_history_plot

    images = []
    for metric, (label, unit, scale) in METRICS.items():
        lines = {}
        for name, points in series.items():
            rows = []
            for point in points:
                band = _band(point.values.get(metric) or [])
                if band is not None:
                    x = point.started_at[:19].replace("T", " ") if by == "date" else (point.commit or "uncommitted")
                    rows.append((x, *(v * scale for v in band), point.status))
            if rows:
                lines[name] = rows
        if lines:
            images.append((metric, label, unit, write_history_plot(out / f"history_{metric}.png", lines,
                                                                     f"{label} ({unit})", by)))
    atomic_write_json(out / "history.json", {
        "schema_version": SCHEMA_VERSION, "root": str(root), "by": by,
        "series": {name: [{"run_dir": p.run_dir, "started_at": p.started_at, "commit": p.commit, "status": p.status,
                           **{m: _band(p.values.get(m) or []) for m in METRICS}} for p in points]
                   for name, points in series.items()}})
    page = out / "history.html"
    atomic_write_bytes(page, _html(root, series, images, by).encode("utf-8"))
    return page


def _html(root: Path, series: dict[str, list[HistoryPoint]], images: list, by: str) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>bench history: {esc(str(root))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}img{max-width:100%;border:1px solid #ddd}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "th{background:#f3f3f3}td.l{text-align:left}</style></head><body>",
        f"<h1>bench history</h1><p>{sum(len(p) for p in series.values())} runs under <code>{esc(str(root))}</code>, "
        f"{len(series)} series, by {esc(by)}. Each point is a run's median over its repetitions; the band is "
        "the interquartile range of those repetitions (its noise).</p>",
    ]
    for metric, label, unit, image in images:
        parts.append(f"<h2>{esc(label)} ({esc(unit)})</h2><img src=\"{esc(Path(image).name)}\" "
                     f"alt=\"{esc(label)} across runs\" class=plot>")
    for name, points in series.items():
        parts.append(f"<h3>{esc(name)}</h3><table><tr><th>started</th><th>commit</th><th>status</th>"
                     + "".join(f"<th>{esc(METRICS[m][0])} ({esc(METRICS[m][1])})</th>" for m in METRICS) + "</tr>")
        for point in points:
            cells = []
            for metric, (_, _, scale) in METRICS.items():
                band = _band(point.values.get(metric) or [])
                cells.append("<td>n/a</td>" if band is None else
                             f"<td>{band[1] * scale:,.2f} <small>[{band[0] * scale:,.2f}, {band[2] * scale:,.2f}]</small></td>")
            parts.append(f"<tr class=run><td class=l>{esc(point.started_at[:19])}</td><td class=l>{esc(point.commit or '')}"
                         f"</td><td class=l>{esc(point.status)}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
    parts.append("<script>addEventListener('load',()=>{const i=[...document.images];"
                 "document.body.dataset.imagesLoaded=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
                 "document.body.dataset.images=i.length})</script></body></html>")
    return "\n".join(parts) + "\n"
