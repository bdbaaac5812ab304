"""report.md from a stored run. Pure: takes the loaded tables, returns Markdown. Every number says
its unit and where it came from."""

from __future__ import annotations

from .summary import request_metrics

_SOURCES = {
    "prefill_tps": "runtime timings (prompt tokens / prompt eval time)",
    "decode_tps": "(generated - 1) / time from first to last generated token, timed by the generating process",
    "aggregate_decode_tps": "host clock: all sequences' (generated - 1) / earliest first token to latest last token, per step",
    "draft_acceptance": "llama-server's timings: draft tokens accepted / drafted, summed over the repetition",
    "ttft_ms": "host clock, request sent to first token",
    "itl_p50_ms": "host clock, gaps between token arrivals",
    "itl_p95_ms": "host clock, gaps between token arrivals",
    "e2e_ms": "host clock, request sent to last token",
}


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.1f} MiB"


def _flag(value) -> str:
    return {True: "yes", False: "no", None: "unknown"}[value]


def markdown(run: dict, requests, samples, events, plots: list[str]) -> str:
    lines = [*_header(run), *_results(run, requests, samples), *_load(run), *_memory(run), *_stress(run), *_threads(run), *_roofline(run), *_energy(run), *_rail_energy(run), *_energy_phases(run),
             *_correctness(run), *_validity(run), *_facts(run), *_warnings_and_events(run, events), *_plots(plots),
             "---", "Tables: `requests.csv` (one row per request), `samples.csv` (long format: t_s, source, name, value, "
             "unit), `events.jsonl`. Times are seconds since run start on one host clock."]
    return "\n".join(lines) + "\n"


def _header(run: dict) -> list[str]:
    harness = run.get("harness", {})
    return [f"# bench run `{run.get('run_id')}`", "",
            f"**Status: {run.get('status')}**" + (f" ({run['reason']})" if run.get("reason") else ""),
            *_invalid(run), "", f"Started {run.get('started_at')}, finished {run.get('finished_at')}. "
            f"Harness {harness.get('version')} (commit {harness.get('git_commit') or 'unknown'}).", ""]


def _invalid(run: dict) -> list[str]:
    validity = (run.get("summary") or {}).get("validity") or {}
    if validity.get("valid", True):
        return []
    return ["", f"**Invalid: {validity.get('invalid_reason')}.** The figures below are kept for diagnosis only."]


def _results(run: dict, requests, samples) -> list[str]:
    summary, runtime = run.get("summary") or {}, run.get("runtime", {})
    lines = ["## Results", "",
             f"Median over {summary.get('repetitions_measured', 0)} measured repetitions "
             f"({summary.get('requests_measured', 0)} requests; warmup excluded). Each repetition's value is the "
             "median of its requests; spread is the interquartile range and the coefficient of variation.", "",
             "| metric | median | IQR | min | max | CV | n | unit | source |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, metric in request_metrics(requests).items():
        s = metric.summary
        lines.append(f"| {metric.label} | {_fmt(s.median)} | {_fmt(s.iqr)} | {_fmt(s.minimum)} | {_fmt(s.maximum)} | "
                     f"{'n/a' if s.cv is None else f'{s.cv:.1%}'} | {s.n} | {metric.unit} | {_SOURCES[name]} |")
    lines += _process_rows(summary, runtime) + _gpu_rows(run, samples)
    return lines + ["", _LLAMA_BENCH_DEFINITION if runtime.get("kind") == "llama-bench" else _DECODE_DEFINITION, ""]


def _load(run: dict) -> list[str]:
    """Load times: the run's own load, and with --load-times a cold first load and a warm reload,
    each with the first token after it."""
    runtime, load = run.get("runtime") or {}, run.get("load") or {}
    mode = (run.get("memory") or {}).get("load_mode") or (run.get("scenario") or {}).get("load_mode") or "mmap"
    if not load:
        if runtime.get("load_ms") is None:
            return []
        return ["## Load", "", f"The model loaded in {_fmt(runtime['load_ms'], 0)} ms (load mode {mode}), with the model "
                "file as the page cache held it; `bench run --load-times` times a cold load and a warm reload.", ""]
    values = (run.get("summary") or {}).get("per_repetition") or {}

    def first(name: str) -> str:
        found = values.get(name) or []
        return f"{found[0]:,.0f}" if found else "n/a"

    cold, warm = load.get("cold") or {}, load.get("warm") or {}
    before = cold.get("resident_before")
    cached = f"; {before:.0%} of the file was cached before" if before is not None else ""
    lines = ["## Load", "", f"Load mode {mode} (as llama.cpp reported it). Load: the runtime's own load (llama-server: "
             "process start to healthy). First token: that load plus the TTFT of the first request after it, what an "
             "app's user waits for.", "",
             "| | load ms | load + first token ms | page cache |", "|---|---:|---:|---|",
             f"| cold (the run's first load) | {first('load_cold_ms') if cold.get('dropped') else _fmt(cold.get('load_ms'), 0) + ' (not cold)'} | "
             f"{first('first_token_cold_ms')} | {cold.get('how', 'n/a')}{cached} |"]
    if warm.get("error"):
        lines.append(f"| warm (reload) | n/a | n/a | the reload failed: {warm['error']} |")
    else:
        lines.append(f"| warm (reload after the measured requests) | {first('load_warm_ms')} | {first('first_token_warm_ms')} | "
                     "the model file cached by the first load |")
    return lines + [""]


_MEMORY_PARTS = (("weights", "weights"), ("kv_cache", "KV cache"), ("compute", "compute buffers"),
                 ("output", "output buffer"))


def _memory(run: dict) -> list[str]:
    """Where the memory goes: llama.cpp's buffers by part, beside what the process and the device
    showed while the run ran."""
    memory, summary, kv = run.get("memory") or {}, run.get("summary") or {}, run.get("kv_cache") or {}
    if not memory:
        return []  # a run stored before the breakdown was recorded
    lines = ["## Where the memory goes", ""]
    if not memory.get("reported"):
        lines += [f"llama.cpp's buffers: not reported ({memory.get('reason')}).", ""]
    lines += ["| part | MiB | buffers | source |", "|---|---:|---|---|"]
    buffers = memory.get("buffers") or []
    for part, label in _MEMORY_PARTS:
        picked = [b for b in buffers if b["part"] == part]
        if picked:
            note = "llama.cpp at load"
            if part == "kv_cache" and kv.get("bytes_all_slots") is not None:
                note += f"; the preflight counted {_mib(kv['bytes_all_slots'])} from the model's shapes"
            lines.append(f"| {label} | {_fmt(sum(b['bytes'] for b in picked) / 2**20)} | "
                         f"{', '.join(b['buffer'] for b in picked)} | {note} |")
    offload = memory.get("offload") or {}
    if offload:
        used = ", ".join(f"{item['device']} ({item['name']}{'; software on the CPU' if item.get('software') else ''})"
                         for item in offload.get("used") or []) or "no device used"
        layers = (f"{offload['layers_offloaded']}/{offload['layers_total']} layers offloaded"
                  if offload.get("layers_total") is not None else "no offload line")
        on_device = offload.get("weights_on_device_bytes")
        lines.append(f"| weights on GPU devices | {_fmt(on_device / 2**20 if on_device is not None else None)} | {used} | "
                     f"llama.cpp at load: {layers} (a layer counted as offloaded can keep its weights in a CPU buffer) |")
    draft = memory.get("draft") or {}
    if draft.get("total_bytes") is not None:
        parts = ", ".join(f"{label} {_fmt((draft.get(f'{part}_bytes') or 0) / 2**20)}" for part, label in _MEMORY_PARTS
                          if draft.get(f"{part}_bytes"))
        lines.append(f"| draft model, all its buffers | {_fmt(draft['total_bytes'] / 2**20)} | "
                     f"{', '.join(sorted({b['buffer'] for b in draft.get('buffers') or []}))} | llama.cpp at load, "
                     f"after the model's: {parts} MiB |")
    if memory.get("total_bytes") is not None:
        lines.append(f"| llama.cpp's buffers in all | {_fmt((memory['total_bytes'] + (draft.get('total_bytes') or 0)) / 2**20)} "
                     f"| | llama.cpp at load{', the draft included' if draft.get('total_bytes') is not None else ''} |")
    peak = summary.get("peak_rss_bytes")
    lines.append(f"| peak RSS of the runtime | {_fmt(peak / 2**20 if peak else None)} | | sampled: VmHWM, VmRSS + VmSwap |")
    lowest, first = summary.get("mem_available_min_bytes"), summary.get("mem_available_first_bytes")
    if lowest is not None:
        lines.append(f"| MemAvailable at its lowest | {_fmt(lowest / 2**20)} | | /proc/meminfo, sampled (at the start: "
                     f"{_mib(first)}): what the rest of the device had left |")
    lines.append("")
    if memory.get("reported"):
        lines += [f"Source: {memory.get('source')}.", ""]
    return lines


def _process_rows(summary: dict, runtime: dict) -> list[str]:
    peak_source = ("VmHWM / VmRSS+VmSwap of the runtime process" +
                   (" (the llama-cpp-python worker)" if runtime.get("kind") == "llama-cpp-python" else " (llama-server)"))
    lines = [f"| Peak RSS | {_mib(summary.get('peak_rss_bytes'))} | | | | | | MiB | {peak_source} |"]
    if summary.get("peak_pss_bytes") is not None:
        lines.append(f"| Peak PSS | {_mib(summary.get('peak_pss_bytes'))} | | | | | | MiB | Pss of /proc/PID/smaps_rollup "
                     "(shared pages divided among the processes mapping them), about once a second |")
    if summary.get("peak_rss_bytes") and runtime.get("rss_before_load_bytes"):
        growth = summary["peak_rss_bytes"] - runtime["rss_before_load_bytes"]
        lines.append(f"| Peak RSS above pre-load | {_mib(growth)} | | | | | | MiB | peak minus the process RSS just before model load |")
    lines.append(f"| Max temperature | {_fmt(summary.get('max_temperature_c'))} | | | | | | C | hottest temperature sensor sampled |")
    if summary.get("decode_tps_drift") is not None:
        lines.append(f"| Decode drift, last vs first repetition | {summary['decode_tps_drift']:+.1%} | | | | | | % | runtime timings |")
    return lines


def _gpu_rows(run: dict, samples) -> list[str]:
    summary, telemetry = run.get("summary") or {}, run.get("telemetry") or {}
    lines = []
    if summary.get("gpu_busy_pct") is not None:
        lines.append(f"| GPU busy, mean in the requests | {_fmt(summary['gpu_busy_pct'])} | | | | | | % | the GPU's own "
                     "busy share (kgsl), sampled; what the screen and other apps drew counts too |")
    if summary.get("gpu_cap_min") is not None:
        lines.append(f"| GPU clock cap, lowest in the requests | {summary['gpu_cap_min']:.0%} | | | | | | of its top clock "
                     "| kgsl max_gpuclk or devfreq max_freq, sampled: thermal mitigation or a power limit lowers it |")
    sampled = (not samples.empty and "source" in samples
               and bool(((samples["source"] == "gpu") & samples["name"].isin(["busy", "cap"])).any()))
    if not lines and sampled and telemetry.get("hz"):
        # both figures are windowed: requests shorter than the sampling period can fall between two samples
        lines.append(f"| GPU busy and clock cap, in the requests | n/a | | | | | | | {telemetry.get('gpu')} was sampled at "
                     f"{telemetry['hz']:g} Hz, but no sample fell inside a measured request (each was shorter than "
                     f"{1000 / telemetry['hz']:.0f} ms): raise --telemetry-hz or n_predict |")
    return lines


_LLAMA_BENCH_DEFINITION = (
    "These rows come from llama.cpp's llama-bench (pp and tg tests, one row per repetition), and keep "
    "llama-bench's own definition so published tables compare: tokens / repetition time, where a tg "
    "test counts every generated token and a pp test the prompt; llama-bench runs a warmup of its own "
    "before each test. Each row's time window is rebuilt backwards from when its test's line reached "
    "the host, from llama-bench's per-repetition durations. TTFT and inter-token latency do not exist "
    "for llama-bench.")
_DECODE_DEFINITION = (
    "Decode tokens/s has one definition on the host and on phones: (generated tokens - 1) divided by "
    "the time from the first generated token to the last, timed by the process that generates them "
    "(llama-cpp-python's generate loop in the worker; llama-server's own `predicted_ms`). It includes "
    "sampling, as llama-server's does, and excludes the prompt, which is prefill.")


def _stress(run: dict) -> list[str]:
    stress = (run.get("summary") or {}).get("stress") or {}
    if not stress.get("available"):
        return []
    throttle = stress.get("time_to_first_throttle_s")
    if throttle is None:
        throttle_text = "unknown (the device reports neither thermal status nor frequency caps)"
    elif stress.get("never_throttled"):
        throttle_text = f"never in {throttle:.0f} s of load (a lower bound)"
    else:
        throttle_text = f"{throttle:.1f} s after the load started (at {stress['first_throttle_at_s']:.1f} s)"
    steady = stress.get("steady_state")
    steady_text = (f"{steady['zone']} settled at {steady['temperature_c']:.1f} °C from {steady['at_s']:.0f} s "
                   f"(slope {steady['slope_c_per_min']:+.2f} °C/min over 60 s)" if steady else
                   "not reached: the hottest zone was still moving by 0.5 °C/min or more over every 60 s")

    def end(item) -> str:
        return f"{item['temperature_c']:.1f} °C (`{item['sensor']}`)" if item else "n/a"

    return ["## Thermal stress profile", "",
            f"{len(stress['loops'])} loops over {stress['seconds']:.0f} s, back to back. Decode per loop is the median "
            "of its requests (runtime timings).", "",
            "| figure | value | how |", "|---|---:|---|",
            f"| peak decode | {stress['peak_decode_tps']:.1f} tokens/s | fastest loop |",
            f"| sustained decode | {stress['sustained_decode_tps']:.1f} tokens/s | median of the loops in the last 20% of the run |",
            f"| stability | {stress['stability']:.1%} | slowest loop / fastest loop (higher is steadier) |",
            f"| time to first throttle | {throttle_text} | thermal status above NONE or a cluster capped below 99% |",
            f"| steady state | {steady_text} | first 60 s in which the hottest zone's slope stays under 0.5 °C/min |",
            f"| skin at the end | {end(stress.get('skin_end'))} | last reading |",
            f"| battery at the end | {end(stress.get('battery_end'))} | last reading |", ""]


def _threads(run: dict) -> list[str]:
    placement = (run.get("summary") or {}).get("threads") or {}
    if not placement.get("available"):
        return []
    runtime = run.get("runtime") or {}
    asked = (f"cores {','.join(map(str, runtime['affinity']))}" if runtime.get("affinity") else "no CPU set")
    lines = ["## Where the threads ran", "",
             f"From `/proc/PID/task/*/stat` of the runtime in each telemetry tick: each thread's new CPU time is put on "
             f"the CPU it last ran on. {placement['cpu_seconds']:.1f} s of CPU time during the measured requests; asked for "
             f"{runtime.get('threads')} threads on {asked}; busy threads per tick: median "
             f"{_fmt(placement.get('busy_threads_median'), 0)}, max {_fmt(placement.get('busy_threads_max'))}.", "",
             "| cluster or CPU | CPUs | share of the runtime's CPU time |", "|---|---|---:|"]
    for name, share in placement["cluster_shares"].items():
        cpus = ",".join(map(str, placement["clusters"][name]))
        lines.append(f"| {name} | {cpus} | {'n/a' if share is None else f'{share:.1%}'} |")
    lines += ["", *[f"**Warning:** {warning}." for warning in placement.get("warnings", [])]]
    return lines + ([""] if placement.get("warnings") else [])


def _roofline(run: dict) -> list[str]:
    summary, device, model = run.get("summary") or {}, run.get("device", {}), run.get("model", {})
    if summary.get("roofline_note"):
        return ["## Roofline", "", f"No ceiling: {summary['roofline_note']}.", ""]
    if not summary.get("roofline_ceiling_tps"):
        return ["## Roofline", "", "No ceiling: memory bandwidth or decode speed unknown.", ""]
    return ["## Roofline", "",
            f"Memory bandwidth {device.get('memory_bandwidth_gbs'):.1f} GB/s ({device.get('memory_bandwidth_source')}); "
            f"model {model.get('bytes', 0) / 1e9:.3f} GB read per token gives a decode ceiling of "
            f"{summary['roofline_ceiling_tps']:.1f} tokens/s. Measured median decode is "
            f"**{summary['roofline_efficiency']:.0%} of the ceiling**.", ""]


def _energy(run: dict) -> list[str]:
    energy = (run.get("summary") or {}).get("energy") or {}
    if energy.get("energy_j") is None:
        return []
    normalisation = run.get("telemetry", {}).get("current_normalisation", {})
    lines = ["## Energy", ""]
    if not energy.get("valid"):
        lines += [f"**Invalid:** {energy.get('reason', 'not measured')}. The figures below are shown for reference only.", ""]
    unplugged = "; the user declared the phone unplugged (--declare-unplugged)" if energy.get("declared_unplugged") else ""
    return lines + [
        "| metric | value | unit |", "|---|---:|---|",
        f"| energy over the measured requests | {_fmt(energy.get('energy_j'), 2)} | J |",
        f"| energy per generated token | {_fmt(energy.get('j_per_token'), 4)} | J/token |",
        f"| energy per prompt token, prompt-only requests (llama-bench pp) | {_fmt(energy.get('prefill_j_per_prompt_token'), 5)} | J/token |",
        f"| charge per 1,000 generated tokens | {_fmt(energy.get('mah_per_1k_tokens'), 2)} | mAh |",
        f"| charge-counter drop over the whole run (cross-check) | {_fmt(energy.get('charge_counter_drop_mah_whole_run'), 2)} | mAh |",
        "", f"Source: {energy.get('source')}; {energy.get('windows_covered')} of {energy.get('windows')} request windows covered "
        f"by power samples (valid only when all are){unplugged}. Current normalisation: {normalisation.get('unit', 'n/a')}; "
        f"{normalisation.get('sign', 'n/a')}.", ""]


def _energy_phases(run: dict) -> list[str]:
    phases = (run.get("summary") or {}).get("energy_phases") or {}
    if not phases.get("available"):
        return []
    idle = run.get("idle") or {}
    if phases.get("idle_w") is not None:
        screen = {True: "on", False: "off"}.get(phases.get("screen_on"), "state unknown")
        idle_text = (f"Idle power {phases['idle_w']:.3f} W, measured for {phases['idle_s']:.1f} s with the model loaded "
                     f"and nothing asked of it, before the first request (screen {screen}).")
    else:
        idle_text = f"No idle baseline ({idle.get('skipped', 'the power readings do not cover it')}): no figures above idle."
    ci = phases.get("j_per_token_ci95")
    ci_text = (f"{_fmt(ci[0], 4)} to {_fmt(ci[1], 4)} (95% bootstrap interval of the median over "
               f"{phases['j_per_token_repetitions']} repetitions)" if ci else "n/a (fewer than 2 repetitions)")
    lines = ["## Energy per phase, above idle", "",
             f"Source: {phases['source']}, {phases['requests_covered']} of {phases['requests']} measured requests "
             "covered. Each request is split at its first token: before it is prefill (J per evaluated prompt "
             "token), after it decode (J per token the decode window produced: generated - 1, as decode t/s counts; "
             "a llama-bench row is all prefill (pp) or all decode (tg))"
             f"{'; split ' + phases['split'] if phases.get('split') else ''}. "
             f"{idle_text}"
             + ("" if phases.get("valid", True) else f" **Invalid: {phases.get('reason')}.**"), "",
             "| figure | total | above idle | unit |", "|---|---:|---:|---|",
             f"| energy over the measured requests | {_fmt(phases['energy_j'], 2)} | {_fmt(phases['energy_above_idle_j'], 2)} | J |",
             f"| energy per generated token (whole requests that generated tokens) | {_fmt(phases['j_per_token'], 4)} | "
             f"{_fmt(phases['j_per_token_above_idle'], 4)} | J/token |",
             f"| prefill, per evaluated prompt token | {_fmt(phases['prefill_j_per_prompt_token'], 5)} | "
             f"{_fmt(phases['prefill_j_per_prompt_token_above_idle'], 5)} | J/token |",
             f"| decode, per token of the decode window | {_fmt(phases['decode_j_per_token'], 4)} | "
             f"{_fmt(phases['decode_j_per_token_above_idle'], 4)} | J/token |",
             f"| mean power during the requests | {_fmt(phases['mean_power_w'], 3)} | | W |", "",
             f"J per generated token, spread: {ci_text}.", ""]
    projection = phases.get("projection")
    if projection:
        lines += [f"**Projection, not a measurement:** a full charge of {projection['capacity_mah']:,.0f} mAh at "
                  f"{projection['volts']:.2f} V ({projection['capacity_j'] / 1000:,.1f} kJ; "
                  f"{(run.get('device', {}).get('extra') or {}).get('battery_capacity_source', 'capacity source unknown')}) "
                  f"would last about {projection['tokens_per_full_charge']:,.0f} generated tokens, or "
                  f"{projection['hours_of_generation']:.1f} hours of back-to-back generation at this run's mean power "
                  "while generating, "
                  "if every other drain stayed as it was during the run.", ""]
    return lines


_RAIL_GROUP_LABELS = {"cpu_big": "CPU big (group)", "cpu_mid": "CPU mid (group)", "cpu_little": "CPU little (group)",
                      "memory": "memory (group)", "gpu": "GPU (group)", "total": "**total, all rails**"}


def _rail_energy(run: dict) -> list[str]:
    rails = (run.get("summary") or {}).get("rail_energy") or {}
    if not rails.get("available"):
        return []
    lines = ["## Energy from power rails", "",
             f"{rails['requests_covered']} of {rails['requests']} measured requests, {rails['seconds']:.1f} s, "
             f"{rails['tokens']:.0f} generated tokens. Source: {rails['source']}. The rails measure the SoC's "
             "supplies, not the battery, so these figures stay valid while the phone charges; each request's "
             "energy is cut out of each counter by linear interpolation at its start and end. J/token counts "
             "the requests that generated tokens; prompt-only ones (llama-bench's pp rows) give J per prompt token."
             + ("" if rails.get("valid", True) else f" **Invalid: {rails.get('reason')}.**"), "",
             "| rail or group | energy (J) | mean power (W) | J/token | J/prompt token (prompt-only requests) |",
             "|---|---:|---:|---:|---:|"]
    for name, item in list(rails["groups"].items()) + list(rails["channels"].items()):
        label = _RAIL_GROUP_LABELS.get(name, f"`{name}`")
        lines.append(f"| {label} | {_fmt(item['joules'], 3)} | {_fmt(item['watts'], 3)} | {_fmt(item['j_per_token'], 5)} "
                     f"| {_fmt(item.get('prefill_j_per_prompt_token'), 5)} |")
    return lines + [""]


def _correctness(run: dict) -> list[str]:
    record = run.get("correctness") or {}
    verdict = record.get("verdict")
    if verdict not in ("pass", "fail"):
        return ["## Correctness", "", f"Not checked: {record.get('reason') or 'this run stored no correctness check'}.", ""]
    value, threshold, reference = record["value"], record["threshold"], record["reference"]
    agreement = value.get("top1_agreement")
    low, high = threshold["perplexity_ratio"]
    return ["## Correctness", "",
            f"**{'Passed' if verdict == 'pass' else 'FAILED: ' + str(record.get('reason'))}** — {record['statistic']}: "
            f"bench's probe ({record['probe']['tokens']} tokens) scored teacher-forced by {record['runtime']} and by "
            f"{reference['source']}{' (cached)' if reference.get('cached') else ''}; {record['seconds']:.1f} s on the device.", "",
            "| statistic | value | pass when |", "|---|---:|---|",
            f"| top-1 agreement (decisive positions) | {'n/a' if agreement is None else f'{agreement:.1%}'} "
            f"({value['decisive_positions']}) | ≥ {threshold['top1_agreement']:.0%} of positions where the reference's top "
            f"token leads by ≥ {threshold['decisive_margin_nats']} nats |",
            f"| perplexity / reference | {value['perplexity_ratio']:.4f} ({value['perplexity']:,.2f} vs "
            f"{reference['perplexity']:,.2f}) | {low:.3f} to {high:.3f} |",
            f"| reference vs chance (ln ppl / ln vocab) | {value['chance_fraction']:.3f} | ≤ {threshold['chance_fraction']} "
            "(else the model file itself is broken) |", ""]


def _validity(run: dict) -> list[str]:
    validity = (run.get("summary") or {}).get("validity") or {}
    declared = " — declared unplugged by the user" if validity.get("declared_unplugged") else ""
    return ["## Validity", "", "| flag | value | rule |", "|---|---|---|",
            f"| charging | {_flag(validity.get('charging'))} | on external power at any sample: charging, full, or plugged "
            f"with charging paused ('Not charging'), or a USB/AC/wireless supply online (energy figures invalid)"
            f"{declared} |",
            f"| throttled | {_flag(validity.get('throttled'))} | thermal status above NONE, or a CPU capped below its max under load |",
            f"| unstable | {_flag(validity.get('unstable'))} | {validity.get('unstable_rule', '')} |",
            *[f"| self-check: {_CHECKS.get(c['name'], c['name'])} | {_check(c['ok'])} | {c['detail']} |"
              for c in validity.get("checks") or ()], ""]


_CHECKS = {"roofline": "decode within the roofline", "token_count": "streamed tokens = generated tokens",
           "device_clock": "device clock steady", "telemetry_gaps": "no telemetry gaps",
           "correctness": "output matches the host CPU reference"}


def _check(ok: bool | None) -> str:
    return {True: "passed", False: "**FAILED**", None: "not checked"}[ok]


def _facts(run: dict) -> list[str]:
    device, model, scenario = run.get("device", {}), run.get("model", {}), run.get("scenario", {})
    extra, telemetry = device.get("extra") or {}, run.get("telemetry", {})
    cores = (f"{device.get('cores_physical')} cores / {device.get('cores_logical')} threads" if device.get("cores_physical")
             else f"{device.get('cores_logical')} CPUs")
    lines = ["## Facts", "", "| | |", "|---|---|",
             f"| device | {device.get('kind')} `{device.get('profile')}` {device.get('manufacturer') or ''} {device.get('model') or ''}"
             f" ({device.get('device')}, serial `{device.get('serial')}`) |",
             f"| OS | {device.get('os')}" + (f", build `{extra['build_fingerprint']}`" if extra.get("build_fingerprint") else "") + " |",
             f"| CPU | {device.get('cpu_model')}, {cores}, ABI {device.get('abi')} |"]
    if extra.get("clusters"):
        clusters = "; ".join(f"cpu{','.join(map(str, c['cpus']))} <= {(c.get('max_khz') or 0) / 1e6:.2f} GHz" for c in extra["clusters"])
        lines.append(f"| clusters | {clusters} |")
    lines += [
        f"| RAM | {_mib(device.get('ram_bytes'))} |",
        f"| model | `{model.get('alias')}` {model.get('file')} ({model.get('arch')}, {_fmt(model.get('params') and model['params'] / 1e6)} M params, {model.get('quant')}, {_mib(model.get('bytes'))}) |",
        f"| model sha256 | `{model.get('sha256')}` ({'pinned in the catalog' if model.get('pinned') else 'unpinned: computed locally'}) |",
        _runtime_fact(run.get("runtime", {})),
        f"| scenario | `{scenario.get('name')}` (hash `{str(scenario.get('hash'))[:12]}`): {scenario.get('repetitions')} repetitions, "
        f"{scenario.get('warmup')} warmup, n_predict {scenario.get('n_predict')}, temperature {scenario.get('temperature')}, seed {scenario.get('seed')} |",
        *([_depth_fact(scenario, run.get("kv_cache") or {})] if scenario.get("depth") else []),
        *([_parallel_fact(scenario, run.get("kv_cache") or {})] if scenario.get("parallel") else []),
        *([_draft_fact(scenario, model.get("draft"), run.get("summary") or {})] if scenario.get("drafts") else []),
        f"| telemetry | {('%s Hz' % telemetry.get('hz')) if telemetry.get('enabled') else 'off'}; {telemetry.get('clock')}"
        + (f"; GPU {telemetry['gpu']}" if telemetry.get("gpu") else "") + " |"]
    for kind, item in (run.get("pushed") or {}).items():
        if item.get("cached"):
            how = "already on the device (0 bytes pushed)"
        else:
            how = f"{item.get('bytes_pushed', 0) / 1e6:.1f} MB pushed at {item.get('mb_per_s')} MB/s"
        lines.append(f"| {kind} on the device | {how}: `{item.get('path')}` |")
    lines.append("")
    absent = telemetry.get("absent") or {}
    if absent:
        lines += ["Sensors not available (recorded as absent, not zero):", ""]
        lines += [f"- `{name}`: {why}" for name, why in absent.items()]
        lines.append("")
    return lines


def _depth_fact(scenario: dict, kv_cache: dict) -> str:
    kv = kv_cache.get("bytes_at_depth")
    return (f"| depth | {scenario['depth']} tokens in the KV cache before each measured request (filled outside "
            f"the timed windows, as llama-bench's n_depth); the KV cache at that depth: {_mib(kv) if kv is not None else 'unknown'} "
            f"({kv_cache.get('source', 'from the model shapes')}) |")


def _parallel_fact(scenario: dict, kv_cache: dict) -> str:
    kv = kv_cache.get("bytes_all_slots")
    return (f"| parallel | {scenario['parallel']} concurrent sequences, each in a llama-server slot with n_ctx "
            f"{scenario.get('n_ctx')} (KV cache of all slots {_mib(kv) if kv is not None else 'unknown'}, from the model "
            "shapes); every step sends its prompt to all of them at once and waits for all. Decode and TTFT are each "
            "sequence's own; aggregate decode is what all of them generate together |")


def _draft_fact(scenario: dict, draft: dict | None, summary: dict) -> str:
    sweep = ", ".join(f"`{name}`" for name in scenario["drafts"])
    if draft is None:
        return (f"| draft | none: this run is the model alone, in llama-server, beside the same sweep's run(s) with a "
                f"draft ({sweep}); their speed-up is measured against this run's decode |")
    acceptance = summary.get("draft_acceptance_median")
    return (f"| draft | speculative decoding: `{draft.get('alias')}` {draft.get('file')} ({_mib(draft.get('bytes'))}, "
            f"sha256 `{str(draft.get('sha256'))[:12]}`) drafts up to {scenario.get('draft_max')} tokens a step for the "
            f"model to verify; {'n/a' if acceptance is None else f'{acceptance:.0%}'} of drafted tokens accepted "
            f"(median over repetitions); the sweep ({sweep}) has the run without it. Tokens reach the host in bursts (a "
            f"verified draft at once): inter-token latency p50 is a gap inside a burst and p95 the wait between bursts, "
            f"so decode t/s is the figure to compare |")


def _runtime_fact(runtime: dict) -> str:
    return (f"| runtime | {runtime.get('kind')} {runtime.get('version') or ''}, llama.cpp {runtime.get('llama_cpp_commit') or 'unknown'}; "
            f"{runtime.get('threads')} threads" + (f" pinned to cpu {runtime['affinity']}" if runtime.get("affinity") else "") +
            f", n_ctx {runtime.get('n_ctx')}, n_batch {runtime.get('n_batch')}; load {_fmt(runtime.get('load_ms'))} ms"
            + (f"; {runtime['repack_reason']}" if runtime.get("repack_reason") else "")
            + ("; fixed performance mode on (`cmd power set-fixed-performance-mode-enabled`)"
               if runtime.get("fixed_performance") else "")
            + (f"; {runtime['backend']} backend on {runtime.get('gpu_device')}"
               + (f" (driver {runtime['gpu_driver']})" if runtime.get("gpu_driver") else "")
               + f", {runtime.get('gpu_layers')} layers asked "
               "(what llama.cpp offloaded: Where the memory goes)" if runtime.get("backend") not in (None, "cpu") else "")
            + " |")


def _warnings_and_events(run: dict, events) -> list[str]:
    warnings = list(run.get("warnings") or [])
    errors = [e.get("message") for e in events if e.get("kind") == "error"]
    cooldowns = [e for e in events if e.get("kind") == "cooldown"]
    if not (warnings or errors or cooldowns):
        return []
    return ["## Warnings and events", "",
            *[f"- warning: {w}" for w in warnings],
            *[f"- error: {e}" for e in errors],
            *[f"- cooldown at {e.get('t_s', 0):.1f} s: {e.get('message')}" for e in cooldowns], ""]


def _plots(plots: list[str]) -> list[str]:
    if not plots:
        return []
    return ["## Plots", "", *[f"![{name}](plots/{name})" for name in plots], ""]
