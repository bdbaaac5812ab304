"""The one catalogue of figures: what each metric is (unit, direction, level, the windows it
covers, whether it can be censored) and where its one computation lives. `summary`, `report`,
`compare`, `history` and the stored tables read it, so a figure has one definition everywhere.

Levels: a "repetition" metric has one value per repetition (the median of its requests, or its
window of samples), compared across repetitions, runs or pairs; a "run" metric has one value a
run (stability, time to first throttle), compared only across run sets or pairs.

Censoring: a "lower bound" metric may hold "at least this much" instead of a measurement (a run
that never throttled has a time to first throttle of at least its load's length). Such values
travel with a flag and are never compared as if measured (`compare.censored_verdict`).

Primary metrics (prefill, decode, TTFT) alone decide a comparison's exit code; the rest are
reported. Each family is corrected for the number of metrics it tests (Holm), so an A/A reads "no
change" on every row at the stated rate."""

from __future__ import annotations

from dataclasses import dataclass

@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str                  # as shown; the stored unit may be scaled (bytes shown as MiB)
    higher_is_better: bool
    level: str                 # repetition | run
    windows: str               # the span of time or requests the figure covers
    computed_by: str           # the one function that computes it (module.function)
    definition: str
    censored: str | None = None  # how it can be censored ("lower bound: ..."), None if never
    energy: bool = False       # never compared from a run on external power
    primary: bool = False      # decides a comparison's exit code
    compared: bool = True      # in `bench compare`'s table
    scale: float = 1.0         # stored unit -> shown unit


CATALOGUE: tuple[Metric, ...] = (
    Metric("prefill_tps", "Prefill", "tokens/s", True, "repetition",
           "each measured request's prompt evaluation, as the runtime timed it", "summary.per_repetition",
           "prompt tokens evaluated / prompt evaluation time (the runtime's own timings); per repetition the median "
           "over its requests", primary=True),
    Metric("decode_tps", "Decode", "tokens/s", True, "repetition",
           "first generated token to last, per measured request", "summary.per_repetition",
           "(generated tokens - 1) / time from the first token to the last (llama.cpp's convention: the first token "
           "belongs to prefill); per repetition the median over its requests", primary=True),
    Metric("aggregate_decode_tps", "Aggregate decode (all sequences)", "tokens/s", True, "repetition",
           "each step of a run with parallel sequences: the earliest first token of its sequences to the latest "
           "last token, host clock", "summary.aggregate_decode",
           "the step's generated tokens less each sequence's first / the time from the earliest first token to the "
           "latest last token (llama-batched-bench's S_TG, timed on the host); per repetition the median over its "
           "steps; only in runs that asked for parallel sequences (`decode_tps` is then each sequence's own rate)"),
    Metric("draft_acceptance", "Draft tokens accepted", "fraction", True, "repetition",
           "the measured requests of a run with a draft model (speculative decoding)", "summary.draft_acceptance",
           "tokens the model accepted / tokens the draft model proposed, as llama-server counted them (its timings' "
           "draft_n_accepted / draft_n), summed over the repetition's requests; only in runs with a draft model "
           "(its speed-up is decode_tps over that of the same sweep's run without the draft)"),
    Metric("ttft_ms", "Time to first token", "ms", False, "repetition",
           "request sent to first token received, host clock", "summary.per_repetition",
           "time from sending a request to receiving its first token; per repetition the median", primary=True),
    Metric("itl_p50_ms", "Inter-token latency p50", "ms", False, "repetition",
           "gaps between streamed tokens of each request", "summary.per_repetition",
           "median gap between consecutive streamed tokens", compared=False),
    Metric("itl_p95_ms", "Inter-token latency p95", "ms", False, "repetition",
           "gaps between streamed tokens of each request", "summary.per_repetition",
           "95th percentile of the gaps between consecutive streamed tokens"),
    Metric("e2e_ms", "End-to-end request", "ms", False, "repetition",
           "request sent to last token", "summary.per_repetition", "time from sending a request to its last token",
           compared=False),
    Metric("peak_rss_bytes", "Peak RSS", "MiB", False, "repetition",
           "each repetition's window (first request sent to last token)", "summary.repetition_values",
           "max over the window of the runtime's VmRSS + VmSwap", scale=1 / 2**20),
    Metric("max_temperature_c", "Max temperature", "C", False, "repetition",
           "each repetition's window", "summary.repetition_values",
           "the highest reading of any temperature sensor during the window"),
    Metric("j_per_token", "Energy per token", "J/token", False, "repetition",
           "the windows of the measured requests that generated tokens (request sent to last token)",
           "energy.token_energy",
           "energy of the covered windows that generated tokens / the tokens they generated; a prompt-only window "
           "(llama-bench pp) is never in it; valid only when every window is covered", energy=True),
    Metric("decode_j_per_token", "Decode energy per token", "J/token", False, "repetition",
           "first token to last token of each covered request (the decode t/s window); a llama-bench tg row: "
           "its whole window", "energy.energy_phases",
           "energy from the first token to the last / (generated tokens - 1), the tokens that window produced; "
           "a llama-bench tg row, which has no prompt phase: its energy / its tokens", energy=True),
    Metric("prefill_j_per_prompt_token", "Prefill energy per prompt token", "J/token", False, "repetition",
           "request sent to first token (a llama-bench pp row: its whole window)", "energy.energy_phases",
           "energy from sending the request to its first token / prompt tokens evaluated (not cached)", energy=True),
    Metric("j_per_token_above_idle", "Energy per token above idle", "J/token", False, "repetition",
           "the windows that generated tokens, less idle power x their length", "energy.energy_phases",
           "(energy of the windows that generated tokens - idle W x their seconds) / the tokens they generated",
           energy=True),
    Metric("gpu_busy_pct", "GPU busy", "%", False, "run",
           "the measured requests' windows (request sent to last token), phones whose GPU tells it (kgsl)",
           "summary.gpu_figures",
           "the mean of the GPU busy samples inside the windows (kgsl's gpu_busy_percentage, or gpubusy's busy / "
           "total of the driver's last window); a CPU backend's run shows what else kept the GPU busy (the screen, "
           "the compositor)", compared=False),
    Metric("gpu_cap_min", "GPU clock cap, lowest", "ratio", True, "run",
           "the measured requests' windows, phones whose GPU tells its allowed clock (kgsl max_gpuclk, devfreq "
           "max_freq)", "summary.gpu_figures",
           "the lowest sample inside the windows of the highest GPU clock allowed / the GPU's top clock (1.0 = "
           "no limit; thermal mitigation or a power limit lowers it)", compared=False),
    Metric("time_throttled_s", "Time throttled", "s", False, "repetition",
           "each repetition's window", "summary.repetition_values",
           "seconds of the window during which thermal status was above NONE"),
    Metric("stability", "Stability (slowest / fastest repetition)", "ratio", True, "run",
           "the measured repetitions", "summary.repetition_values",
           "the slowest repetition's decode t/s / the fastest's"),
    Metric("time_to_throttle_s", "Time to first throttle", "s", True, "run",
           "first measured request sent to the first throttled sample at or after it", "throttle.time_to_throttle",
           "seconds from the first measured request to the first sample with thermal status above NONE or a "
           "cluster's frequency cap below 99% of the cap in force when the run started (fixed-performance caps "
           "are not throttling)",
           censored="lower bound: a run that never throttled holds the length of its load, 'at least'"),
    Metric("off_affinity_share", "CPU time off the asked-for cores", "ratio", False, "run",
           "the runtime's CPU time inside the measured request windows", "placement.thread_placement",
           "CPU seconds on cores outside the asked-for set / all the runtime's CPU seconds in the windows"),
    # Correctness is a verdict, not a speed: `bench compare` shows each side's and fails the gate when
    # the head's output is wrong (Comparison.wrong), whatever its speed.
    Metric("correctness_top1_agreement", "Correctness: top-1 agreement with the host CPU reference", "fraction", True,
           "run", "the correctness probe after the measured requests: teacher-forced, outside every timed window",
           "correctness.evaluate",
           "of the probe's positions where the reference's most likely next token beats its second by at least "
           "0.5 nats, the share where the runtime's most likely token is the reference's; pass at 0.90 or more",
           compared=False),
    Metric("correctness_perplexity_ratio", "Correctness: probe perplexity / the reference's", "ratio", False, "run",
           "the correctness probe after the measured requests: teacher-forced, outside every timed window",
           "correctness.evaluate",
           "exp(-mean ln p(the probe's next token)) by the runtime / the same by the host CPU reference on the same "
           "model file; 1.0 = the same; pass within 0.905 to 1.105", compared=False),
    Metric("load_cold_ms", "Model load, cold", "ms", False, "run",
           "the run's first load, after the model file was dropped from the page cache (bench run --load-times)",
           "summary.load_values",
           "host: llama-cpp-python's Llama() in the worker; llama-server: process start to its first healthy /health "
           "(it warms up inside); only where the page cache could be dropped (the host; a phone with root)"),
    Metric("first_token_cold_ms", "Load + first token, cold", "ms", False, "run",
           "the cold load, then the run's first request sent to its first token", "summary.load_values",
           "load_cold_ms + the TTFT of the run's first request: what an app's user waits from a cold start (a "
           "mapped model reads its weights from storage as the first request touches them)"),
    Metric("load_warm_ms", "Model load, warm", "ms", False, "run",
           "the runtime stopped and loaded again after the measured requests, the model file in the page cache",
           "summary.load_values", "the same load as load_cold_ms, with the file's pages cached"),
    Metric("first_token_warm_ms", "Load + first token, warm", "ms", False, "run",
           "the warm reload, then one request of the scenario's first prompt sent to its first token",
           "summary.load_values", "load_warm_ms + that request's TTFT"),
    Metric("kv_cache_bytes_at_depth", "KV cache at the run's depth", "MiB", False, "run",
           "none: computed from the model's GGUF shapes at the run's depth, not measured", "gguf.kv_cache_bytes",
           "f16 K and V of every layer for the depth's tokens: depth x layers x key/value heads x (key + value head "
           "dimensions) x 2 bytes; an upper bound where layers use a sliding window", compared=False, scale=1 / 2**20),
)

BY_NAME = {metric.name: metric for metric in CATALOGUE}
COMPARED = tuple(metric for metric in CATALOGUE if metric.compared)
PRIMARY = tuple(metric.name for metric in COMPARED if metric.primary)
REQUEST_COLUMNS = ("prefill_tps", "decode_tps", "ttft_ms", "itl_p50_ms", "itl_p95_ms", "e2e_ms")
CENSORED_KEY = "censored"  # per_repetition[CENSORED_KEY][metric] = one flag per value: True = a lower bound

# How far one run's median may move from another's with nothing changed, when no run-to-run noise
# is known for a setup (no history): the largest difference between two tiny A/A runs that
# benchmarks/compare_false_alarms.py measured on this project's 2-core VM (2026-12-03, 128 and 320
# runs: prefill 75%, decode 66%, TTFT 74%, inter-token p95 91%), with about 10% more. A bound on a
# ratio, symmetric on a log scale (±75% is 1/1.75 to 1.75). A single-run change within it is
# "suspected"; beyond it, a verdict: it catches only what no noise this harness has measured
# explains. Metrics without an entry stay "suspected".
DEFAULT_RUN_TO_RUN = {
    "prefill_tps": 0.85,
    "decode_tps": 0.75,
    "ttft_ms": 0.85,
    "itl_p95_ms": 1.00,
}
DEFAULT_RUN_TO_RUN_SOURCE = ("bench's default run-to-run bound (the largest two-run difference its false-alarm "
                             "benchmark measured, with a margin; keep 3+ earlier runs of this setup for a measured one)")
