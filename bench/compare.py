"""Statistically honest comparison of run sets (base vs head). Pure: loaded runs in, a Comparison
record out; Markdown and JSON renderings are functions of that record.

Each metric is compared on per-repetition values pooled over the runs of a side. Verdicts need
both significance (Mann-Whitney U, two-sided) and a bootstrap 95% interval of the median ratio
that excludes 1, plus a change beyond the threshold; "unchanged" needs the whole interval inside
the threshold band. Too few repetitions can only be inconclusive."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .stats import bootstrap_ratio_ci, mann_whitney_p

MIN_REPETITIONS = 4   # 4 vs 4 is the smallest design whose Mann-Whitney p can go below 0.05
ALPHA = 0.05
MATCH_KEYS = ("device", "model", "scenario", "runtime", "threads", "affinity", "fixed_performance", "repack")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    unit: str
    higher_is_better: bool
    energy: bool = False


METRICS = (
    MetricSpec("prefill_tps", "Prefill", "tokens/s", True),
    MetricSpec("decode_tps", "Decode", "tokens/s", True),
    MetricSpec("ttft_ms", "Time to first token", "ms", False),
    MetricSpec("itl_p95_ms", "Inter-token latency p95", "ms", False),
    MetricSpec("peak_rss_bytes", "Peak RSS", "MiB", False),
    MetricSpec("max_temperature_c", "Max temperature", "C", False),
    MetricSpec("j_per_token", "Energy per token", "J/token", False, energy=True),
    MetricSpec("time_throttled_s", "Time throttled", "s", False),
)


def run_key(run: dict) -> dict[str, str]:
    device = run.get("device") or {}
    runtime = run.get("runtime") or {}
    return {
        "device": "/".join(str(device.get(k)) for k in ("kind", "profile", "manufacturer", "model", "device")),
        "model": str((run.get("model") or {}).get("sha256")),
        "scenario": str((run.get("scenario") or {}).get("hash")),
        "runtime": str(runtime.get("kind")),
        "threads": str(runtime.get("threads")),
        # where the threads ran and how the clocks and weights were set change the numbers as much
        "affinity": ",".join(str(cpu) for cpu in runtime.get("affinity") or []) or "unpinned",
        "fixed_performance": str(bool(runtime.get("fixed_performance"))),
        "repack": str(runtime.get("repack", True)),
    }


def setup_label(key: dict[str, str]) -> str:
    """How a run was set up beyond device, model and scenario: threads, CPU set, clocks, repacking."""
    parts = [f"{key['threads']} threads"]
    if key.get("affinity", "unpinned") != "unpinned":
        parts.append(f"CPUs {key['affinity']}")
    if key.get("fixed_performance") == "True":
        parts.append("fixed performance")
    if key.get("repack") == "False":
        parts.append("no repack")
    return ", ".join(parts)


@dataclass(frozen=True)
class Side:
    label: str
    runs: tuple[str, ...]
    key: dict[str, str]
    values: dict[str, tuple[float, ...]]
    flags: dict[str, bool]         # charging / throttled / unstable over its runs
    facts: dict


@dataclass(frozen=True)
class RunValues:
    """One stored run as compare sees it: its run.json and its per-repetition metric values."""

    dir: str
    run: dict
    values: dict[str, list[float]]


def make_side(label: str, runs: Sequence[RunValues]) -> Side:
    pooled: dict[str, list[float]] = {spec.name: [] for spec in METRICS}
    flags = {"charging": False, "throttled": False, "unstable": False}
    for item in runs:
        for name in pooled:
            pooled[name].extend(item.values.get(name) or [])
        validity = (item.run.get("summary") or {}).get("validity") or {}
        for flag in flags:
            flags[flag] = flags[flag] or bool(validity.get(flag))
    first = runs[0].run
    facts = {"device": first.get("device", {}), "model": first.get("model", {}), "runtime": first.get("runtime", {}),
             "scenario": {k: (first.get("scenario") or {}).get(k) for k in ("name", "hash")},
             "harness": first.get("harness", {}), "statuses": sorted({str(r.run.get("status")) for r in runs})}
    return Side(label, tuple(r.dir for r in runs), run_key(first), {k: tuple(v) for k, v in pooled.items()},
                flags, facts)


@dataclass(frozen=True)
class MetricComparison:
    spec: MetricSpec
    base_n: int
    head_n: int
    base_median: float | None
    head_median: float | None
    change: float | None            # head / base - 1
    ci: tuple[float, float] | None  # of head / base
    p_value: float | None
    test: str | None
    verdict: str                    # improved | regressed | unchanged | inconclusive | not compared
    reason: str = ""
    flags: tuple[str, ...] = ()


def compare_metric(spec: MetricSpec, base: Sequence[float], head: Sequence[float], *, threshold: float,
                   flags: tuple[str, ...] = (), seed: int = 0) -> MetricComparison:
    base_a, head_a = np.asarray(base, float), np.asarray(head, float)
    if base_a.size == 0 or head_a.size == 0:
        return MetricComparison(spec, base_a.size, head_a.size, None, None, None, None, None, None, "not compared",
                                "not measured on " + ("both sides" if base_a.size == head_a.size else
                                                      "base" if base_a.size == 0 else "head"), flags)
    base_median, head_median = float(np.median(base_a)), float(np.median(head_a))
    change = head_median / base_median - 1 if base_median else None
    ci = bootstrap_ratio_ci(base_a, head_a, seed=seed)
    enough = base_a.size >= MIN_REPETITIONS and head_a.size >= MIN_REPETITIONS
    p_value = mann_whitney_p(base_a, head_a) if enough else None
    test = "Mann-Whitney U (two-sided)" if enough else None
    verdict, reason = "inconclusive", ""
    if not enough:
        reason = f"fewer than {MIN_REPETITIONS} repetitions on a side ({base_a.size} vs {head_a.size})"
    elif change is None or ci is None:
        reason = "base median is zero"
    else:
        significant = p_value is not None and p_value < ALPHA and (ci[0] > 1 or ci[1] < 1)
        better = change > 0 if spec.higher_is_better else change < 0
        if significant and abs(change) >= threshold:
            verdict = "improved" if better else "regressed"
        elif 1 - threshold <= ci[0] and ci[1] <= 1 + threshold:
            verdict = "unchanged"
        else:
            reason = "interval reaches past the threshold" if not significant else "significant but smaller than the threshold"
    return MetricComparison(spec, base_a.size, head_a.size, base_median, head_median, change, ci, p_value, test,
                            verdict, reason, flags)


@dataclass(frozen=True)
class Comparison:
    base: Side
    head: Side
    comparable: bool
    mismatches: tuple[str, ...]
    metrics: tuple[MetricComparison, ...]
    threshold: float
    ignored: tuple[str, ...] = field(default_factory=tuple)

    @property
    def regressed(self) -> bool:
        return any(m.verdict == "regressed" for m in self.metrics)


def mismatches(base: Side, head: Side, ignore: Sequence[str] = ()) -> list[str]:
    return [f"{key} differs: {base.key[key]} vs {head.key[key]}" for key in MATCH_KEYS
            if key not in ignore and base.key[key] != head.key[key]]


def compare_sides(base: Side, head: Side, *, threshold: float = 0.05, ignore: Sequence[str] = ()) -> Comparison:
    problems = mismatches(base, head, ignore)
    results = []
    side_flags = tuple(sorted({f"{side.label} {flag}" for side in (base, head)
                               for flag, on in side.flags.items() if on}))
    for spec in METRICS:
        if problems:
            results.append(MetricComparison(spec, 0, 0, None, None, None, None, None, None, "not compared", problems[0]))
            continue
        if spec.energy and (base.flags["charging"] or head.flags["charging"]):
            results.append(MetricComparison(spec, len(base.values[spec.name]), len(head.values[spec.name]), None, None,
                                            None, None, None, None, "not compared",
                                            "energy from a charging run is never compared", side_flags))
            continue
        results.append(compare_metric(spec, base.values[spec.name], head.values[spec.name], threshold=threshold,
                                      flags=side_flags))
    return Comparison(base, head, not problems, tuple(problems), tuple(results), threshold, tuple(ignore))


# -- rendering ---------------------------------------------------------------------------------

_ICON = {"improved": "🟢 improved", "regressed": "🔴 regressed", "unchanged": "⚪ unchanged",
         "inconclusive": "🟡 inconclusive", "not compared": "➖ not compared"}


def _value(spec: MetricSpec, value: float | None) -> str:
    if value is None:
        return "n/a"
    if spec.unit == "MiB":
        value /= 2**20
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def headline(comparisons: Sequence[Comparison]) -> str:
    counts: dict[str, int] = {}
    for comparison in comparisons:
        for metric in comparison.metrics:
            counts[metric.verdict] = counts.get(metric.verdict, 0) + 1
    regressed = [f"{m.spec.label} {m.change:+.1%}" for c in comparisons for m in c.metrics if m.verdict == "regressed"]
    order = ("regressed", "improved", "unchanged", "inconclusive", "not compared")
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts.get(v))
    if regressed:
        return f"**🔴 Regression: {'; '.join(regressed)}** ({tally})"
    if not any(c.comparable for c in comparisons):
        return f"**➖ Nothing comparable** ({tally})"
    return f"**{'🟢 No regression' if counts.get('improved') else '⚪ No regression'}** ({tally})"


def markdown(comparisons: Sequence[Comparison]) -> str:
    lines = [headline(comparisons), ""]
    for comparison in comparisons:
        base, head = comparison.base, comparison.head
        lines.append(f"### {base.label} → {head.label}")
        lines.append("")
        if not comparison.comparable:
            lines += [f"Not comparable: {'; '.join(comparison.mismatches)}.", ""]
        lines += [f"Threshold ±{comparison.threshold:.0%}; interval: 95% bootstrap of the median ratio head/base over "
                  "repetitions; verdicts need p < 0.05 and the interval excluding 1.", "",
                  "| metric | base | head | change | 95% CI | p | verdict | notes |",
                  "|---|---:|---:|---:|---|---:|---|---|"]
        for m in comparison.metrics:
            unit = f" {m.spec.unit}"
            ci = "n/a" if m.ci is None else f"{m.ci[0] - 1:+.1%} … {m.ci[1] - 1:+.1%}"
            p = "n/a" if m.p_value is None else f"{m.p_value:.3g}"
            change = "n/a" if m.change is None else f"{m.change:+.1%}"
            notes = "; ".join(filter(None, [m.reason, *m.flags, f"n={m.base_n}/{m.head_n}"]))
            lines.append(f"| {m.spec.label} ({m.spec.unit}{', higher is better' if m.spec.higher_is_better else ', lower is better'}) "
                         f"| {_value(m.spec, m.base_median)}{unit if m.base_median is not None else ''} "
                         f"| {_value(m.spec, m.head_median)}{unit if m.head_median is not None else ''} "
                         f"| {change} | {ci} | {p} | {_ICON[m.verdict]} | {notes} |")
        lines += ["", "<details><summary>Runs, device, model and runtime</summary>", ""]
        for side in (base, head):
            facts = side.facts
            device, model, runtime = facts["device"], facts["model"], facts["runtime"]
            lines += [f"**{side.label}** ({len(side.runs)} run{'s' if len(side.runs) != 1 else ''}, status {', '.join(map(str, facts['statuses']))})",
                      "",
                      f"- device: {device.get('kind')} `{device.get('profile')}` {device.get('manufacturer') or ''} {device.get('model') or ''}".rstrip(),
                      f"- model: `{model.get('alias')}` sha256 `{str(model.get('sha256'))[:16]}`, {model.get('quant')}",
                      f"- runtime: {runtime.get('kind')} {runtime.get('version')}, llama.cpp {runtime.get('llama_cpp_commit')}, {runtime.get('threads')} threads",
                      f"- scenario: `{facts['scenario'].get('name')}` hash `{str(facts['scenario'].get('hash'))[:12]}`",
                      f"- harness: {facts['harness'].get('version')} commit {facts['harness'].get('git_commit')}",
                      f"- flags: {', '.join(k for k, v in side.flags.items() if v) or 'none'}",
                      ""]
            lines += [f"  - `{run}`" for run in side.runs[:20]]
            if len(side.runs) > 20:
                lines.append(f"  - … and {len(side.runs) - 20} more")
            lines.append("")
        if comparison.ignored:
            lines += [f"Match keys ignored on request: {', '.join(comparison.ignored)}.", ""]
        lines += ["</details>", ""]
    return "\n".join(lines)


def to_json(comparisons: Sequence[Comparison]) -> dict:
    def number(value):
        return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value

    return {
        "schema_version": 1,
        "headline": headline(comparisons),
        "regressed": any(c.regressed for c in comparisons),
        "comparisons": [{
            "base": {"label": c.base.label, "runs": list(c.base.runs), "key": c.base.key, "flags": c.base.flags},
            "head": {"label": c.head.label, "runs": list(c.head.runs), "key": c.head.key, "flags": c.head.flags},
            "comparable": c.comparable, "mismatches": list(c.mismatches), "threshold": c.threshold,
            "metrics": [{
                "metric": m.spec.name, "unit": m.spec.unit, "higher_is_better": m.spec.higher_is_better,
                "base_n": m.base_n, "head_n": m.head_n, "base_median": number(m.base_median),
                "head_median": number(m.head_median), "change": number(m.change),
                "ci_low": number(m.ci[0]) if m.ci else None, "ci_high": number(m.ci[1]) if m.ci else None,
                "p_value": number(m.p_value), "test": m.test, "verdict": m.verdict, "reason": m.reason,
                "flags": list(m.flags),
            } for m in c.metrics],
        } for c in comparisons],
    }
