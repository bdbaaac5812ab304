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
  "improved" also needs the change to exceed the run-to-run noise of earlier runs of the base's
  setup and build (a t prediction interval), or with none known the metric's stated default bound,
  else it is "suspected" (which fails a gate only with --strict).
The gate (prefill, decode, TTFT by default) alone decides the exit code; it and the reported rest
are each a family tested at ALPHA (Bonferroni within each). Values that are lower bounds (a run
that never throttled) are never compared as measurements. Verdicts need significance and an
interval at the metric's level that excludes 1, plus a change beyond the threshold; "unchanged"
needs the whole interval inside the threshold band. Too few samples are inconclusive."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from .metrics import BY_NAME, COMPARED, DEFAULT_RUN_TO_RUN, DEFAULT_RUN_TO_RUN_SOURCE, PRIMARY, Metric
from .stats import (bootstrap_median_ci, bootstrap_ratio_ci, finite, hierarchical_ratio_ci, mann_whitney_p,
                    wilcoxon_signed_rank_p)

MIN_REPETITIONS = 4   # 4 vs 4 is the smallest design whose Mann-Whitney p can go below 0.05
MIN_PAIRS = 6         # 6 pairs: the smallest design whose exact signed-rank p can go below 0.05 (2/64)
MIN_NOISE_RUNS = 3    # earlier runs of the same setup needed to know its run-to-run noise
ALPHA = 0.05          # per family of metrics: the gate's, and the reported rest's (Bonferroni within each)
MATCH_KEYS = ("device", "model", "scenario", "runtime", "backend", "threads", "affinity", "fixed_performance", "repack",
              "depth", "parallel", "draft")
METRICS = COMPARED


def run_key(run: dict) -> dict[str, str]:
    device = run.get("device") or {}
    runtime = run.get("runtime") or {}
    return {
        "device": "/".join(str(device.get(k)) for k in ("kind", "profile", "manufacturer", "model", "device")),
        "model": str((run.get("model") or {}).get("sha256")),
        "scenario": str((run.get("scenario") or {}).get("hash")),
        "runtime": str(runtime.get("kind")),
        # the ggml backend that ran the model, and how many layers it took: a GPU run is not the CPU's
        "backend": str(runtime.get("backend") or "cpu") + (f"/{runtime['gpu_layers']}" if runtime.get("gpu_layers") else ""),
        "threads": str(runtime.get("threads")),
        # where the threads ran and how the clocks and weights were set change the numbers as much
        "affinity": ",".join(str(cpu) for cpu in runtime.get("affinity") or []) or "unpinned",
        "fixed_performance": str(bool(runtime.get("fixed_performance"))),
        "repack": str(runtime.get("repack", True)),
        # tokens in the KV cache before each request: prefill and decode slow down with it
        "depth": str((run.get("scenario") or {}).get("depth") or 0),
        # concurrent sequences share the compute: each one's rate falls as their number grows
        "parallel": str((run.get("scenario") or {}).get("parallel") or "none"),
        # a draft model speculating for it changes decode speed by design (its own sweep measures by how much)
        "draft": str(((run.get("model") or {}).get("draft") or {}).get("sha256") or "none"),
    }


def run_host(run: dict) -> str:
    """The machine that drove a run (its phones are attached there), as run.json's owner names it."""
    return str((run.get("owner") or {}).get("host") or "unknown host")


def build_key(run: dict) -> str:
    """Which runtime build a run used: its version, llama.cpp commit, variant and flags, and the
    hashes of the binaries pushed to a phone. Run-to-run noise is taken only from runs of the
    base's build, so earlier runs of a regressed head never widen the band that judges it."""
    runtime = run.get("runtime") or {}
    pushed = run.get("pushed") or {}
    binaries = ",".join(f"{kind}={item.get('sha256')}" for kind, item in sorted(pushed.items())
                        if kind not in ("model", "draft") and isinstance(item, dict))
    return "|".join(str(runtime.get(k)) for k in ("kind", "version", "llama_cpp_commit", "runtime_variant",
                                                    "build_flags")) + "|" + binaries


def setup_label(key: dict[str, str]) -> str:
    """How a run was set up beyond device, model and scenario: threads, CPU set, clocks, repacking."""
    parts = [f"{key['threads']} threads"]
    if key.get("affinity", "unpinned") != "unpinned":
        parts.append(f"CPUs {key['affinity']}")
    if key.get("fixed_performance") == "True":
        parts.append("fixed performance")
    if key.get("repack") == "False":
        parts.append("no repack")
    if key.get("depth", "0") != "0":
        parts.append(f"depth {key['depth']}")
    if key.get("parallel", "none") != "none":
        parts.append(f"{key['parallel']} parallel sequences")
    if key.get("draft", "none") != "none":
        parts.append(f"draft model {key['draft'][:12]}")
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
    censored: dict[str, tuple[tuple[bool, ...], ...]] = field(default_factory=dict)  # metric -> each run's flags
    incomplete: str | None = None  # an A/B cut short: why, said beside every verdict
    correctness: tuple[dict, ...] = ()  # each run's correctness record (run.json), {} when it has none

    @property
    def correctness_verdict(self) -> tuple[str, str | None]:
        """(fail | pass | unchecked, what to say): fail when any run's output was wrong."""
        failed = [c for c in self.correctness if c.get("verdict") == "fail"]
        if failed:
            return "fail", f"{len(failed)} of {len(self.correctness)} runs wrong: {failed[0].get('reason')}"
        passed = [c for c in self.correctness if c.get("verdict") == "pass"]
        if passed and len(passed) == len(self.correctness):
            agreements = [c["value"]["top1_agreement"] for c in passed if c["value"].get("top1_agreement") is not None]
            ratios = [c["value"]["perplexity_ratio"] for c in passed]
            return "pass", (f"{len(passed)} run{'s' if len(passed) != 1 else ''}: top-1 agreement "
                            f"{f'≥ {min(agreements):.0%}' if agreements else 'n/a'}, perplexity / reference "
                            f"{min(ratios):.3f}–{max(ratios):.3f}")
        why = next((c.get("reason") for c in self.correctness if c.get("reason")), "no correctness check stored")
        return "unchecked", f"{len(passed)} of {len(self.correctness)} runs checked ({why})"

    def censored_count(self, name: str) -> int:
        return sum(sum(flags) for flags in self.censored.get(name, ()))


@dataclass(frozen=True)
class NoiseBand:
    """How far one run's median of a metric moves from another's when nothing changed, for one
    setup: measured from earlier runs' medians (a t prediction interval for the ratio of two new
    runs, n - 1 degrees of freedom), or a stated default bound when no history is known."""

    runs: int        # the earlier runs it was measured on (0: the default bound)
    source: str
    log_sd: float | None = None   # standard deviation of the earlier runs' log medians
    fixed: float | None = None    # a stated bound, a fraction

    def band(self, alpha: float = ALPHA) -> float:
        """The ± fraction that two runs of an unchanged build stay inside with probability 1 - alpha."""
        if self.fixed is not None:
            return self.fixed
        quantile = float(scipy_stats.t.ppf(1 - alpha / 2, self.runs - 1))
        return float(math.exp(quantile * math.sqrt(2) * self.log_sd) - 1)

    @property
    def measured(self) -> bool:
        return self.fixed is None


def noise_from_medians(run_medians: Sequence[float], source: str) -> NoiseBand | None:
    """The band from earlier runs' medians; None with fewer than MIN_NOISE_RUNS."""
    medians = finite(run_medians)
    medians = medians[medians > 0]
    if medians.size < MIN_NOISE_RUNS:
        return None
    return NoiseBand(int(medians.size), source, log_sd=float(np.std(np.log(medians), ddof=1)))


def default_noise(name: str) -> NoiseBand | None:
    bound = DEFAULT_RUN_TO_RUN.get(name)
    return NoiseBand(0, DEFAULT_RUN_TO_RUN_SOURCE, fixed=bound) if bound is not None else None


def run_to_run_band(run_medians: Sequence[float], alpha: float = ALPHA) -> float | None:
    """The ±band of the ratio of two single runs' medians at 1 - alpha; None with too few runs."""
    noise = noise_from_medians(run_medians, "")
    return noise.band(alpha) if noise else None


@dataclass(frozen=True)
class RunValues:
    """One stored run as compare sees it: its run.json, its per-repetition metric values, and which
    of them are lower bounds (censored)."""

    dir: str
    run: dict
    values: dict[str, list[float]]
    censored: dict[str, list[bool]] = field(default_factory=dict)


def make_side(label: str, runs: Sequence[RunValues], incomplete: str | None = None) -> Side:
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
    censored = {name: tuple(tuple(bool(f) for f in (item.censored.get(name) or [False] * len(item.values.get(name) or [])))
                            for item in runs) for name in pooled}
    return Side(label, tuple(r.dir for r in runs), run_key(first), {k: tuple(v) for k, v in pooled.items()},
                flags, facts, per_run, censored, incomplete, tuple(r.run.get("correctness") or {} for r in runs))


@dataclass(frozen=True)
class MetricComparison:
    spec: Metric
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
    alpha: float = ALPHA            # the level this metric was tested at (its family's, corrected)
    gating: bool = True             # decides the exit code (in the gate set)

    @property
    def worse(self) -> bool:
        """The change goes the bad way for this metric (a suspected regression, not an improvement)."""
        if self.change is None:
            return False
        return self.change < 0 if self.spec.higher_is_better else self.change > 0


def _not_compared(spec: Metric, base_n: int, head_n: int, reason: str, flags: tuple[str, ...] = (),
                  method: str = "repetitions") -> MetricComparison:
    return MetricComparison(spec, base_n, head_n, None, None, None, None, None, None, "not compared", reason, flags,
                            method)


def compare_metric(spec: Metric, base: Sequence[float], head: Sequence[float], *, threshold: float,
                   flags: tuple[str, ...] = (), seed: int = 0, alpha: float = ALPHA) -> MetricComparison:
    base_a, head_a = np.asarray(base, float), np.asarray(head, float)
    if base_a.size == 0 or head_a.size == 0:
        return _not_compared(spec, base_a.size, head_a.size, "not measured on " + (
            "both sides" if base_a.size == head_a.size else "base" if base_a.size == 0 else "head"), flags)
    base_median, head_median = float(np.median(base_a)), float(np.median(head_a))
    change = head_median / base_median - 1 if base_median else None
    ci = bootstrap_ratio_ci(base_a, head_a, seed=seed, confidence=1 - alpha)
    enough = base_a.size >= MIN_REPETITIONS and head_a.size >= MIN_REPETITIONS
    p_value = mann_whitney_p(base_a, head_a) if enough else None
    test = "Mann-Whitney U (two-sided)" if enough else None
    if not enough:
        verdict, reason = "inconclusive", f"fewer than {MIN_REPETITIONS} repetitions on a side ({base_a.size} vs {head_a.size})"
    else:
        significant = p_value is not None and p_value < alpha and ci is not None and (ci[0] > 1 or ci[1] < 1)
        verdict, reason = _verdict(spec, change, ci, significant, threshold)
    return MetricComparison(spec, base_a.size, head_a.size, base_median, head_median, change, ci, p_value, test,
                            verdict, reason, flags, alpha=alpha)


def _verdict(spec: Metric, change: float | None, ci: tuple[float, float] | None, significant: bool,
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


def compare_paired(spec: Metric, base_runs: Sequence[Sequence[float]], head_runs: Sequence[Sequence[float]], *,
                   threshold: float, flags: tuple[str, ...] = (), seed: int = 0, alpha: float = ALPHA) -> MetricComparison:
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
        return _not_compared(spec, base_all.size, head_all.size, "no pair measured it on both sides", flags, "paired")
    ratio = np.asarray(ratios)
    change = float(np.median(ratio)) - 1
    ci = bootstrap_median_ci(ratio, seed=seed, confidence=1 - alpha)
    enough = ratio.size >= MIN_PAIRS
    p_value = wilcoxon_signed_rank_p(np.log(ratio[ratio > 0])) if enough else None
    test = f"Wilcoxon signed-rank over {ratio.size} pairs (two-sided)" if enough else None
    if not enough:
        verdict, reason = "inconclusive", f"fewer than {MIN_PAIRS} pairs ({ratio.size})"
    else:
        significant = p_value is not None and p_value < alpha and ci is not None and (ci[0] > 1 or ci[1] < 1)
        verdict, reason = _verdict(spec, change, ci, significant, threshold)
        if verdict == "inconclusive" and 2 / 2 ** ratio.size >= alpha:  # the exact test's smallest p
            reason += f"; {ratio.size} pairs cannot reach p < {alpha:.2g} (at best {2 / 2 ** ratio.size:.2g}): use more pairs"
    return MetricComparison(spec, base_all.size, head_all.size, float(np.median(base_all)), float(np.median(head_all)),
                            change, ci, p_value, test, verdict, reason, flags, "paired", alpha)


def compare_runs(spec: Metric, base_runs: Sequence[Sequence[float]], head_runs: Sequence[Sequence[float]], *,
                 threshold: float, flags: tuple[str, ...] = (), seed: int = 0, alpha: float = ALPHA) -> MetricComparison:
    """Several runs a side: the interval resamples runs, then repetitions within them, so the
    variance between runs counts; with MIN_REPETITIONS runs a side, Mann-Whitney over run medians."""
    base_runs = [finite(r) for r in base_runs if finite(r).size]
    head_runs = [finite(r) for r in head_runs if finite(r).size]
    base_all, head_all = np.concatenate(base_runs), np.concatenate(head_runs)
    base_median, head_median = float(np.median(base_all)), float(np.median(head_all))
    change = head_median / base_median - 1 if base_median else None
    ci = hierarchical_ratio_ci(base_runs, head_runs, seed=seed, confidence=1 - alpha)
    enough = len(base_runs) >= MIN_REPETITIONS and len(head_runs) >= MIN_REPETITIONS
    p_value = mann_whitney_p([np.median(r) for r in base_runs], [np.median(r) for r in head_runs]) if enough else None
    test = (f"Mann-Whitney U over run medians ({len(base_runs)} vs {len(head_runs)} runs)" if enough else
            f"two-level bootstrap ({len(base_runs)} vs {len(head_runs)} runs, then repetitions)")
    excludes_one = ci is not None and (ci[0] > 1 or ci[1] < 1)
    significant = excludes_one and (p_value is None or p_value < alpha)
    verdict, reason = _verdict(spec, change, ci, significant, threshold)
    return MetricComparison(spec, base_all.size, head_all.size, base_median, head_median, change, ci, p_value, test,
                            verdict, reason, flags, "runs", alpha)


def against_noise(result: MetricComparison, noise: NoiseBand | None) -> MetricComparison:
    """One run a side: repetitions inside one run are not independent samples of a build (the
    machine drifts between runs), so "regressed" or "improved" also needs the change to exceed the
    run-to-run noise known for this setup, or, with none known, the stated default bound for the
    metric; within it the verdict is "suspected". The reason names the bound that decided."""
    if result.verdict not in ("regressed", "improved") or result.change is None:
        return result
    noise = noise or default_noise(result.spec.name)
    if noise is None:
        why = ("one run a side and no run-to-run noise known for this setup or metric: use `bench ab`, more runs a "
               f"side, or keep {MIN_NOISE_RUNS}+ runs of it in the results folder")
        return replace(result, verdict="suspected", reason=why)
    band = noise.band(result.alpha)
    described = (f"the run-to-run noise of ±{band:.1%} ({noise.runs} earlier runs, {noise.source})" if noise.measured
                 else f"±{band:.0%}, {noise.source}")
    # a band on a ratio is symmetric on a log scale: ±50% is 1/1.5 to 1.5, so a change of -33% already leaves it
    if abs(math.log1p(result.change)) <= math.log1p(band):
        return replace(result, verdict="suspected", reason=f"within {described}")
    return replace(result, reason=f"beyond {described}")


def censoring(spec: Metric, base: Side, head: Side) -> tuple[str | None, str | None]:
    """(why the metric is not compared, or None; the side holding lower bounds, or None). Both
    sides censored: not compared. One side: the verdict stands only where the bound decides it."""
    if not spec.censored:
        return None, None
    base_n, head_n = base.censored_count(spec.name), head.censored_count(spec.name)
    if base_n and head_n:
        return (f"both sides hold lower bounds ({base_n} base and {head_n} head runs never reached the event): "
                "a bound is not a measurement"), None
    return None, ("base" if base_n else "head" if head_n else None)


def bound_decides(result: MetricComparison, censored_side: str, count: int) -> MetricComparison:
    """A lower bound understates its side's value: a verdict that agrees with the truth only moving
    further the bound's way (the censored side better when higher is better, worse when lower is)
    stands; any other is undecided."""
    if result.verdict == "not compared":
        return result
    note = f"{censored_side} never reached the event in {count} run(s): its value is a lower bound"
    if result.verdict in ("improved", "regressed"):
        censored_shown_better = (result.verdict == "improved") == (censored_side == "head")
        if censored_shown_better == result.spec.higher_is_better:
            return replace(result, reason="; ".join(filter(None, [result.reason, note + ", so the change is at least this"])))
    return replace(result, verdict="inconclusive", reason=note + " that does not decide the comparison")


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
    gate: tuple[str, ...] = PRIMARY

    @property
    def wrong(self) -> str | None:
        """The head's output is wrong (bench.correctness): a regression whatever its speed, said with
        whether the base's was wrong too."""
        verdict, detail = self.head.correctness_verdict
        if verdict != "fail":
            return None
        base = {"fail": "the base's is wrong too", "pass": "the base's was right"}.get(self.base.correctness_verdict[0],
                                                                                      "the base's was not checked")
        return f"{self.head.label} computes something else ({detail}); {base}"

    @property
    def regressed(self) -> bool:
        """A metric of the gate set regressed, or the head's output is wrong: what fails --fail-on-regression."""
        return self.wrong is not None or any(m.verdict == "regressed" and m.gating for m in self.metrics)

    @property
    def suspected(self) -> bool:
        """A change the bad way in the gate set that the run-to-run noise could explain."""
        return any(m.verdict == "suspected" and m.worse and m.gating for m in self.metrics)

    @property
    def incomplete(self) -> str | None:
        return self.base.incomplete or self.head.incomplete

    @property
    def method(self) -> str:
        """How the verdicts were reached, in words: the design, runs a side, the noise floor used."""
        runs = f"{len(self.base.runs)} vs {len(self.head.runs)} run{'s' if len(self.head.runs) != 1 else ''}"
        if self.paired:
            return (f"paired and interleaved: {min(len(self.base.runs), len(self.head.runs))} ABBA pairs on one device, "
                    "Wilcoxon signed-rank on per-pair ratios, bootstrap interval of the median paired ratio"
                    + (f" (A/B cut short: {self.incomplete})" if self.incomplete else ""))
        if len(self.base.runs) >= 2 and len(self.head.runs) >= 2:
            return f"{runs} a side: between-run variance counted (bootstrap over runs, then repetitions)"
        measured = [band for band in self.noise.values() if band.measured]
        if measured:
            floor = ", ".join(f"{name} ±{band.band():.1%}" for name, band in list(self.noise.items())[:3] if band.measured)
            return (f"{runs}: repetitions within runs, gated by the run-to-run noise of {measured[0].runs} earlier runs "
                    f"of the base's build ({floor})")
        bounds = ", ".join(f"{BY_NAME[name].label.lower()} ±{bound:.0%}" for name, bound in DEFAULT_RUN_TO_RUN.items())
        return (f"{runs}: repetitions within runs; no run-to-run noise known for this setup, so a change is a verdict "
                f"only beyond bench's default bound for its metric ({bounds}), else suspected")


def mismatches(base: Side, head: Side, ignore: Sequence[str] = ()) -> list[str]:
    return [f"{key} differs: {base.key[key]} vs {head.key[key]}" for key in MATCH_KEYS
            if key not in ignore and base.key[key] != head.key[key]]


def _skip_reason(spec: Metric, base: Side, head: Side, problems: list[str], censored_why: str | None) -> str | None:
    if problems:
        return problems[0]
    if spec.energy and (base.flags["charging"] or head.flags["charging"]):
        return "energy from a charging run is never compared"
    if not base.values[spec.name] or not head.values[spec.name]:
        return None  # the comparison itself says which side did not measure it
    return censored_why


def compare_sides(base: Side, head: Side, *, threshold: float = 0.05, ignore: Sequence[str] = (), paired: bool = False,
                  noise: dict[str, NoiseBand] | None = None, gate: Sequence[str] = PRIMARY) -> Comparison:
    """`paired`: base run i and head run i were taken back to back (bench ab). `noise`: the
    run-to-run noise per metric for this setup, used when a side has one run. `gate`: the metrics
    that decide the exit code; they and the reported rest are each a family tested at ALPHA
    (Bonferroni: ALPHA / the family's metrics measured on both sides)."""
    problems = mismatches(base, head, ignore)
    noise = noise or {}
    side_flags = tuple(sorted({f"{side.label} {flag}" for side in (base, head)
                               for flag, on in side.flags.items() if on}))
    censored = {spec.name: censoring(spec, base, head) for spec in METRICS}  # (why not compared, bound side)
    skips = {spec.name: _skip_reason(spec, base, head, problems, censored[spec.name][0]) for spec in METRICS}
    tested = [spec.name for spec in METRICS if skips[spec.name] is None and base.values[spec.name]
              and head.values[spec.name]]
    family_size = {True: max(1, sum(name in gate for name in tested)),
                   False: max(1, sum(name not in gate for name in tested))}
    results = []
    for spec in METRICS:
        gating = spec.name in gate
        alpha = ALPHA / family_size[gating]
        if skips[spec.name] is not None:
            results.append(replace(_not_compared(spec, len(base.values[spec.name]), len(head.values[spec.name]),
                                                 skips[spec.name], side_flags), gating=gating))
            continue
        base_runs = [r for r in base.per_run.get(spec.name, ()) if r] or [base.values[spec.name]]
        head_runs = [r for r in head.per_run.get(spec.name, ()) if r] or [head.values[spec.name]]
        if paired:
            result = compare_paired(spec, base.per_run.get(spec.name, ()), head.per_run.get(spec.name, ()),
                                    threshold=threshold, flags=side_flags, alpha=alpha)
        elif len(base_runs) >= 2 and len(head_runs) >= 2:
            result = compare_runs(spec, base_runs, head_runs, threshold=threshold, flags=side_flags, alpha=alpha)
        else:
            result = against_noise(compare_metric(spec, base.values[spec.name], head.values[spec.name],
                                                  threshold=threshold, flags=side_flags, alpha=alpha),
                                   noise.get(spec.name))
        censored_side = censored[spec.name][1]
        if censored_side is not None:
            side = base if censored_side == "base" else head
            result = bound_decides(result, censored_side, side.censored_count(spec.name))
        results.append(replace(result, gating=gating))
    return Comparison(base, head, not problems, tuple(problems), tuple(results), threshold, tuple(ignore), paired,
                      dict(noise), tuple(gate))


# -- rendering ---------------------------------------------------------------------------------

_ICON = {"improved": "🟢 improved", "regressed": "🔴 regressed", "suspected": "🟠 suspected", "unchanged": "⚪ unchanged",
         "inconclusive": "🟡 inconclusive", "not compared": "➖ not compared"}


def _value(spec: Metric, value: float | None) -> str:
    if value is None:
        return "n/a"
    value *= spec.scale
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def headline(comparisons: Sequence[Comparison]) -> str:
    counts: dict[str, int] = {}
    for comparison in comparisons:
        for metric in comparison.metrics:
            counts[metric.verdict] = counts.get(metric.verdict, 0) + 1
    regressed = [f"{m.spec.label} {m.change:+.1%}" for c in comparisons for m in c.metrics
                 if m.verdict == "regressed" and m.gating]
    reported = [f"{m.spec.label} {m.change:+.1%}" for c in comparisons for m in c.metrics
                if m.verdict == "regressed" and not m.gating]
    suspected = [f"{m.spec.label} {m.change:+.1%}" for c in comparisons for m in c.metrics
                 if m.verdict == "suspected" and m.worse and m.gating]
    wrong = [c.wrong for c in comparisons if c.wrong]
    if wrong:
        regressed = [f"wrong output: {wrong[0]}"] + regressed
    order = ("regressed", "suspected", "improved", "unchanged", "inconclusive", "not compared")
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts.get(v))
    also = f"; also worse, not gating: {'; '.join(reported)}" if reported else ""
    cut = next((c.incomplete for c in comparisons if c.incomplete), None)
    tally += f"; A/B cut short: {cut}" if cut else ""
    if regressed:
        return f"**🔴 Regression: {'; '.join(regressed)}** ({tally}{also})"
    if not any(c.comparable for c in comparisons):
        return f"**➖ Nothing comparable** ({tally})"
    if suspected:
        return f"**🟠 Suspected regression, within run-to-run noise: {'; '.join(suspected)}** ({tally}{also})"
    improved = any(m.verdict == "improved" for c in comparisons for m in c.metrics)
    return f"**{'🟢 No regression' if improved else '⚪ No regression'}** ({tally}{also})"


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
        gate = ", ".join(m.spec.label for m in comparison.metrics if m.gating)
        lines += ["| correctness (the probe against the host CPU reference) | verdict |", "|---|---|"]
        for side in (base, head):
            verdict, detail = side.correctness_verdict
            icon = {"pass": "🟢 pass", "fail": "🔴 wrong output", "unchecked": "➖ unchecked"}[verdict]
            lines.append(f"| {side.label} | {icon}: {detail} |")
        lines.append("")
        lines += [f"Threshold ±{comparison.threshold:.0%}; {comparison.method}. The gate ({gate}) decides the exit code; "
                  "it and the reported rest are each a family tested at 5% in all: a metric's verdict needs p below 0.05 "
                  "/ its family's measured metrics (or, with fewer than 4 runs a side, the two-level interval alone) and "
                  "its interval at that level excluding 1.", "",
                  "| metric | base | head | change | CI (at the row's level) | p | verdict | notes |",
                  "|---|---:|---:|---:|---|---:|---|---|"]
        # a figure neither side measured (energy on a host, parallel or load figures a run did not ask
        # for) is one line under the table, not a row
        unmeasured = [m.spec.label for m in comparison.metrics if m.base_n == 0 and m.head_n == 0]
        for m in comparison.metrics:
            if m.base_n == 0 and m.head_n == 0:
                continue
            unit = f" {m.spec.unit}"
            ci = "n/a" if m.ci is None else f"{m.ci[0] - 1:+.1%} … {m.ci[1] - 1:+.1%}"
            p = "n/a" if m.p_value is None else f"{m.p_value:.3g}"
            change = "n/a" if m.change is None else f"{m.change:+.1%}"
            level = f"at p < {m.alpha:.2g}" if m.verdict != "not compared" else ""
            notes = "; ".join(filter(None, [m.reason, *m.flags, f"n={m.base_n}/{m.head_n}", level]))
            gating = "" if m.gating else ", reported"
            lines.append(f"| {m.spec.label} ({m.spec.unit}{', higher is better' if m.spec.higher_is_better else ', lower is better'}{gating}) "
                         f"| {_value(m.spec, m.base_median)}{unit if m.base_median is not None else ''} "
                         f"| {_value(m.spec, m.head_median)}{unit if m.head_median is not None else ''} "
                         f"| {change} | {ci} | {p} | {_ICON[m.verdict]} | {notes} |")
        if unmeasured:
            lines += ["", f"Measured on neither side: {', '.join(unmeasured)}."]
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
        "schema_version": 3,
        "headline": headline(comparisons),
        "method": method_line(comparisons),
        "regressed": any(c.regressed for c in comparisons),
        "suspected": any(c.suspected for c in comparisons),
        "incomplete": next((c.incomplete for c in comparisons if c.incomplete), None),
        "comparisons": [{
            "base": {"label": c.base.label, "runs": list(c.base.runs), "key": c.base.key, "flags": c.base.flags},
            "head": {"label": c.head.label, "runs": list(c.head.runs), "key": c.head.key, "flags": c.head.flags},
            "comparable": c.comparable, "mismatches": list(c.mismatches), "threshold": c.threshold,
            "paired": c.paired, "method": c.method, "gate": list(c.gate),
            "correctness": {"base": dict(zip(("verdict", "detail"), c.base.correctness_verdict)),
                            "head": dict(zip(("verdict", "detail"), c.head.correctness_verdict)),
                            "wrong": c.wrong},
            "noise": {name: {"band": band.band(), "runs": band.runs, "source": band.source, "measured": band.measured}
                      for name, band in c.noise.items()},
            "metrics": [{
                "metric": m.spec.name, "unit": m.spec.unit, "higher_is_better": m.spec.higher_is_better,
                "base_n": m.base_n, "head_n": m.head_n, "base_median": number(m.base_median),
                "head_median": number(m.head_median), "change": number(m.change),
                "ci_low": number(m.ci[0]) if m.ci else None, "ci_high": number(m.ci[1]) if m.ci else None,
                "p_value": number(m.p_value), "test": m.test, "verdict": m.verdict, "reason": m.reason,
                "method": m.method, "worse": m.worse, "alpha": m.alpha, "gating": m.gating,
                "flags": list(m.flags),
            } for m in c.metrics],
        } for c in comparisons],
    }
