"""Statistically honest comparison of run sets (base vs head). Pure: loaded runs in, a Comparison
record out; Markdown and JSON renderings are functions of that record.

How a metric is compared depends on what was measured, because a run drifts as a whole (the
machine's load, the phone's heat and charge): repetitions inside one run are not independent
samples of a build.
- paired (interleaved A/B from `bench ab`): one ratio of medians per ABBA pair; Wilcoxon's
  signed-rank test and a bootstrap interval of the median paired ratio.
- several runs a side: a two-level bootstrap (runs, then repetitions) for the interval, and
  Mann-Whitney over run medians once a side has enough runs.
- one run a side: Mann-Whitney over repetitions and a bootstrap interval, but "regressed" or
  "improved" also needs the change to exceed the run-to-run noise known for that setup, else it is
  "suspected" (which fails a gate only with --strict).
Verdicts need significance and a 95% interval that excludes 1, plus a change beyond the threshold;
"unchanged" needs the whole interval inside the threshold band. Too few samples are inconclusive."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from .stats import (bootstrap_median_ci, bootstrap_ratio_ci, finite, hierarchical_ratio_ci, mann_whitney_p,
                    wilcoxon_signed_rank_p)

MIN_REPETITIONS = 4   # 4 vs 4 is the smallest design whose Mann-Whitney p can go below 0.05
MIN_PAIRS = 6         # 6 pairs: the smallest design whose exact signed-rank p can go below 0.05 (2/64)
MIN_NOISE_RUNS = 3    # earlier runs of the same setup needed to know its run-to-run noise
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
    # one value a run (run sets compare): slowest repetition / fastest, and load before the first throttle
    MetricSpec("stability", "Stability (slowest / fastest repetition)", "ratio", True),
    MetricSpec("time_to_throttle_s", "Time to first throttle", "s", True),
    MetricSpec("decode_j_per_token", "Decode energy per token", "J/token", False, energy=True),
    MetricSpec("prefill_j_per_prompt_token", "Prefill energy per prompt token", "J/token", False, energy=True),
    MetricSpec("j_per_token_above_idle", "Energy per token above idle", "J/token", False, energy=True),
    MetricSpec("off_affinity_share", "CPU time off the asked-for cores", "ratio", False),
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
    flags: dict[str, bool]         # charging / throttled / unstable / invalid (a failed self-check) over its runs
    facts: dict
    per_run: dict[str, tuple[tuple[float, ...], ...]] = field(default_factory=dict)  # metric -> each run's values


@dataclass(frozen=True)
class NoiseBand:
    """How far one run's median of a metric moves from another's when nothing changed, for one
    setup (device, model, scenario, runtime, threads, ...): 95% of single-run pairs stay inside."""

    band: float      # a fraction: 0.04 = ±4%
    runs: int        # the earlier runs it was measured on
    source: str


def run_to_run_band(run_medians: Sequence[float]) -> float | None:
    """The ±band of the ratio of two single runs' medians, from the spread of earlier runs' medians
    (log scale: 1.96 x sqrt(2) x their standard deviation); None with fewer than MIN_NOISE_RUNS."""
    medians = finite(run_medians)
    medians = medians[medians > 0]
    if medians.size < MIN_NOISE_RUNS:
        return None
    return float(math.exp(1.96 * math.sqrt(2) * float(np.std(np.log(medians), ddof=1))) - 1)


@dataclass(frozen=True)
class RunValues:
    """One stored run as compare sees it: its run.json and its per-repetition metric values."""

    dir: str
    run: dict
    values: dict[str, list[float]]


def make_side(label: str, runs: Sequence[RunValues]) -> Side:
    pooled: dict[str, list[float]] = {spec.name: [] for spec in METRICS}
    flags = {"charging": False, "throttled": False, "unstable": False, "invalid": False}
    for item in runs:
        for name in pooled:
            pooled[name].extend(item.values.get(name) or [])
        validity = (item.run.get("summary") or {}).get("validity") or {}
        for flag in ("charging", "throttled", "unstable"):
            flags[flag] = flags[flag] or bool(validity.get(flag))
        flags["invalid"] = flags["invalid"] or validity.get("valid") is False
    first = runs[0].run
    facts = {"device": first.get("device", {}), "model": first.get("model", {}), "runtime": first.get("runtime", {}),
             "scenario": {k: (first.get("scenario") or {}).get(k) for k in ("name", "hash")},
             "harness": first.get("harness", {}), "statuses": sorted({str(r.run.get("status")) for r in runs})}
    per_run = {name: tuple(tuple(item.values.get(name) or ()) for item in runs) for name in pooled}
    return Side(label, tuple(r.dir for r in runs), run_key(first), {k: tuple(v) for k, v in pooled.items()},
                flags, facts, per_run)


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
    verdict: str                    # improved | regressed | suspected | unchanged | inconclusive | not compared
    reason: str = ""
    flags: tuple[str, ...] = ()
    method: str = "repetitions"     # paired | runs | repetitions: what the interval and test resample

    @property
    def worse(self) -> bool:
        """The change goes the bad way for this metric (a suspected regression, not an improvement)."""
        if self.change is None:
            return False
        return self.change < 0 if self.spec.higher_is_better else self.change > 0


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


def _verdict(spec: MetricSpec, change: float | None, ci: tuple[float, float] | None, significant: bool,
             threshold: float) -> tuple[str, str]:
    if change is None or ci is None:
        return "inconclusive", "base median is zero"
    better = change > 0 if spec.higher_is_better else change < 0
    if significant and abs(change) >= threshold:
        return ("improved" if better else "regressed"), ""
    if 1 - threshold <= ci[0] and ci[1] <= 1 + threshold:
        return "unchanged", ""
    return "inconclusive", ("interval reaches past the threshold" if not significant
                            else "significant but smaller than the threshold")


def compare_paired(spec: MetricSpec, base_runs: Sequence[Sequence[float]], head_runs: Sequence[Sequence[float]], *,
                   threshold: float, flags: tuple[str, ...] = (), seed: int = 0) -> MetricComparison:
    """Interleaved A/B: pair i is base run i and head run i, taken back to back on one device. Each
    pair gives one ratio of medians, so drift between pairs cancels; Wilcoxon's signed-rank test
    on the log ratios, and a bootstrap interval of the median ratio."""
    ratios = []
    for base, head in zip(base_runs, head_runs):
        b, h = finite(base), finite(head)
        if b.size and h.size and np.median(b) > 0:
            ratios.append(float(np.median(h) / np.median(b)))
    base_all, head_all = finite([v for run in base_runs for v in run]), finite([v for run in head_runs for v in run])
    if not ratios:
        return MetricComparison(spec, base_all.size, head_all.size, None, None, None, None, None, None, "not compared",
                                "no pair measured it on both sides", flags, "paired")
    ratio = np.asarray(ratios)
    change = float(np.median(ratio)) - 1
    ci = bootstrap_median_ci(ratio, seed=seed)
    enough = ratio.size >= MIN_PAIRS
    p_value = wilcoxon_signed_rank_p(np.log(ratio[ratio > 0])) if enough else None
    test = f"Wilcoxon signed-rank over {ratio.size} pairs (two-sided)" if enough else None
    if not enough:
        verdict, reason = "inconclusive", f"fewer than {MIN_PAIRS} pairs ({ratio.size})"
    else:
        significant = p_value is not None and p_value < ALPHA and ci is not None and (ci[0] > 1 or ci[1] < 1)
        verdict, reason = _verdict(spec, change, ci, significant, threshold)
    return MetricComparison(spec, base_all.size, head_all.size, float(np.median(base_all)), float(np.median(head_all)),
                            change, ci, p_value, test, verdict, reason, flags, "paired")


def compare_runs(spec: MetricSpec, base_runs: Sequence[Sequence[float]], head_runs: Sequence[Sequence[float]], *,
                 threshold: float, flags: tuple[str, ...] = (), seed: int = 0) -> MetricComparison:
    """Several runs a side: the interval resamples runs, then repetitions within them, so the
    variance between runs counts; with MIN_REPETITIONS runs a side, Mann-Whitney over run medians."""
    base_runs = [finite(r) for r in base_runs if finite(r).size]
    head_runs = [finite(r) for r in head_runs if finite(r).size]
    base_all, head_all = np.concatenate(base_runs), np.concatenate(head_runs)
    base_median, head_median = float(np.median(base_all)), float(np.median(head_all))
    change = head_median / base_median - 1 if base_median else None
    ci = hierarchical_ratio_ci(base_runs, head_runs, seed=seed)
    enough = len(base_runs) >= MIN_REPETITIONS and len(head_runs) >= MIN_REPETITIONS
    p_value = mann_whitney_p([np.median(r) for r in base_runs], [np.median(r) for r in head_runs]) if enough else None
    test = (f"Mann-Whitney U over run medians ({len(base_runs)} vs {len(head_runs)} runs)" if enough else
            f"two-level bootstrap ({len(base_runs)} vs {len(head_runs)} runs, then repetitions)")
    excludes_one = ci is not None and (ci[0] > 1 or ci[1] < 1)
    significant = excludes_one and (p_value is None or p_value < ALPHA)
    verdict, reason = _verdict(spec, change, ci, significant, threshold)
    return MetricComparison(spec, base_all.size, head_all.size, base_median, head_median, change, ci, p_value, test,
                            verdict, reason, flags, "runs")


def against_noise(result: MetricComparison, noise: NoiseBand | None) -> MetricComparison:
    """One run a side: repetitions inside one run are not independent samples of a build (the
    machine drifts between runs), so "regressed" or "improved" also needs the change to exceed the
    run-to-run noise known for this setup; otherwise the verdict is "suspected"."""
    if result.verdict not in ("regressed", "improved") or result.change is None:
        return result
    if noise is None:
        why = ("one run a side and no run-to-run noise known for this setup: use `bench ab`, more runs a side, "
               f"or keep {MIN_NOISE_RUNS}+ runs of it in the results folder")
        return replace(result, verdict="suspected", reason=why)
    if abs(result.change) <= noise.band:
        return replace(result, verdict="suspected",
                       reason=f"within the run-to-run noise of ±{noise.band:.1%} ({noise.runs} runs, {noise.source})")
    return replace(result, reason=f"beyond the run-to-run noise of ±{noise.band:.1%} ({noise.runs} runs, {noise.source})")


@dataclass(frozen=True)
class Comparison:
    base: Side
    head: Side
    comparable: bool
    mismatches: tuple[str, ...]
    metrics: tuple[MetricComparison, ...]
    threshold: float
    ignored: tuple[str, ...] = field(default_factory=tuple)
    paired: bool = False
    noise: dict[str, NoiseBand] = field(default_factory=dict)

    @property
    def regressed(self) -> bool:
        return any(m.verdict == "regressed" for m in self.metrics)

    @property
    def suspected(self) -> bool:
        """A change the bad way that the run-to-run noise could explain."""
        return any(m.verdict == "suspected" and m.worse for m in self.metrics)

    @property
    def method(self) -> str:
        """How the verdicts were reached, in words: the design, runs a side, the noise floor used."""
        runs = f"{len(self.base.runs)} vs {len(self.head.runs)} run{'s' if len(self.head.runs) != 1 else ''}"
        if self.paired:
            return (f"paired and interleaved: {min(len(self.base.runs), len(self.head.runs))} ABBA pairs on one device, "
                    "Wilcoxon signed-rank on per-pair ratios, bootstrap interval of the median paired ratio")
        if len(self.base.runs) >= 2 and len(self.head.runs) >= 2:
            return f"{runs} a side: between-run variance counted (bootstrap over runs, then repetitions)"
        if self.noise:
            floor = ", ".join(f"{name} ±{band.band:.1%}" for name, band in list(self.noise.items())[:3])
            return f"{runs}: repetitions within runs, gated by the run-to-run noise of {next(iter(self.noise.values())).runs} earlier runs ({floor})"
        return f"{runs}: repetitions within runs; no run-to-run noise known for this setup, so changes are at most suspected"


def mismatches(base: Side, head: Side, ignore: Sequence[str] = ()) -> list[str]:
    return [f"{key} differs: {base.key[key]} vs {head.key[key]}" for key in MATCH_KEYS
            if key not in ignore and base.key[key] != head.key[key]]


def compare_sides(base: Side, head: Side, *, threshold: float = 0.05, ignore: Sequence[str] = (), paired: bool = False,
                  noise: dict[str, NoiseBand] | None = None) -> Comparison:
    """`paired`: base run i and head run i were taken back to back (bench ab). `noise`: the
    run-to-run noise per metric for this setup, used when a side has one run."""
    problems = mismatches(base, head, ignore)
    noise = noise or {}
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
        base_runs = [r for r in base.per_run.get(spec.name, ()) if r] or [base.values[spec.name]]
        head_runs = [r for r in head.per_run.get(spec.name, ()) if r] or [head.values[spec.name]]
        if paired:
            results.append(compare_paired(spec, base.per_run.get(spec.name, ()), head.per_run.get(spec.name, ()),
                                          threshold=threshold, flags=side_flags))
        elif len(base_runs) >= 2 and len(head_runs) >= 2:
            results.append(compare_runs(spec, base_runs, head_runs, threshold=threshold, flags=side_flags))
        else:
            single = compare_metric(spec, base.values[spec.name], head.values[spec.name], threshold=threshold,
                                    flags=side_flags)
            results.append(against_noise(single, noise.get(spec.name)))
    return Comparison(base, head, not problems, tuple(problems), tuple(results), threshold, tuple(ignore), paired,
                      dict(noise))


# -- rendering ---------------------------------------------------------------------------------

_ICON = {"improved": "🟢 improved", "regressed": "🔴 regressed", "suspected": "🟠 suspected", "unchanged": "⚪ unchanged",
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
    suspected = [f"{m.spec.label} {m.change:+.1%}" for c in comparisons for m in c.metrics
                 if m.verdict == "suspected" and m.worse]
    order = ("regressed", "suspected", "improved", "unchanged", "inconclusive", "not compared")
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts.get(v))
    if regressed:
        return f"**🔴 Regression: {'; '.join(regressed)}** ({tally})"
    if not any(c.comparable for c in comparisons):
        return f"**➖ Nothing comparable** ({tally})"
    if suspected:
        return f"**🟠 Suspected regression, within run-to-run noise: {'; '.join(suspected)}** ({tally})"
    return f"**{'🟢 No regression' if counts.get('improved') else '⚪ No regression'}** ({tally})"


def method_line(comparisons: Sequence[Comparison]) -> str:
    methods = list(dict.fromkeys(c.method for c in comparisons if c.comparable))
    return "How: " + ("; ".join(methods) if len(methods) <= 2 else f"{methods[0]}; and {len(methods) - 1} other designs")


def markdown(comparisons: Sequence[Comparison]) -> str:
    lines = [f"{headline(comparisons)} — {method_line(comparisons)}", ""]
    for comparison in comparisons:
        base, head = comparison.base, comparison.head
        lines.append(f"### {base.label} → {head.label}")
        lines.append("")
        if not comparison.comparable:
            lines += [f"Not comparable: {'; '.join(comparison.mismatches)}.", ""]
        lines += [f"Threshold ±{comparison.threshold:.0%}; {comparison.method}; verdicts need p < 0.05 (or, with "
                  "fewer than 4 runs a side, the two-level interval alone) and the 95% interval excluding 1.", "",
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
        "method": method_line(comparisons),
        "regressed": any(c.regressed for c in comparisons),
        "suspected": any(c.suspected for c in comparisons),
        "comparisons": [{
            "base": {"label": c.base.label, "runs": list(c.base.runs), "key": c.base.key, "flags": c.base.flags},
            "head": {"label": c.head.label, "runs": list(c.head.runs), "key": c.head.key, "flags": c.head.flags},
            "comparable": c.comparable, "mismatches": list(c.mismatches), "threshold": c.threshold,
            "paired": c.paired, "method": c.method,
            "noise": {name: {"band": band.band, "runs": band.runs, "source": band.source} for name, band in c.noise.items()},
            "metrics": [{
                "metric": m.spec.name, "unit": m.spec.unit, "higher_is_better": m.spec.higher_is_better,
                "base_n": m.base_n, "head_n": m.head_n, "base_median": number(m.base_median),
                "head_median": number(m.head_median), "change": number(m.change),
                "ci_low": number(m.ci[0]) if m.ci else None, "ci_high": number(m.ci[1]) if m.ci else None,
                "p_value": number(m.p_value), "test": m.test, "verdict": m.verdict, "reason": m.reason,
                "method": m.method, "worse": m.worse,
                "flags": list(m.flags),
            } for m in c.metrics],
        } for c in comparisons],
    }
