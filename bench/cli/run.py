"""`bench run`, `bench ab` and `bench matrix`: arguments to targets and runs (bench.targets,
bench.runner, bench.ab, bench.matrix), and their tables on the terminal."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from ..errors import UsageError
from ..targets import HOST, connect, device_ids
from .compare import check_verdict_flags, report_comparisons, stored_comparisons, threshold_of
from .flags import (adb_servers_of, cpu_list, draft_models, positive_float, positive_int, run_flags, sequence_counts,
                    shard_slice, thread_counts, token_counts, verdict_flags)
from .output import BarProgress, err, out, print_json, run_exit_code


def add_run(commands) -> None:
    """`bench run`: one scenario on one or more devices, or a sweep."""
    run = commands.add_parser("run", help="run a scenario on a device and store the results")
    run.add_argument("--device", default="host",
                     help="host (default), a device profile id, a serial, or any; several (a,b) or all run in parallel")
    run.add_argument("--model", default="smollm2-135m", help="catalog alias or .gguf path (default smollm2-135m)")
    run.add_argument("--scenario", default="quick", help="scenario name or .toml path (default quick)")
    run.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    run.add_argument("--repetitions", type=positive_int, help="override the scenario's repetitions")
    run.add_argument("--threads", type=thread_counts, metavar="N[,N...]",
                     help="override the scenario's threads; several (1,2,4,5) run a sweep, one run per point")
    run.add_argument("--affinity", action="append", type=cpu_list, metavar="CPUS",
                     help="pin the runtime to these CPUs (4-7, 0,2,4); repeat for a sweep over CPU sets")
    run.add_argument("--depth", type=token_counts, metavar="N[,N...]",
                     help="tokens in the KV cache before each request (llama-bench's n_depth); several "
                          "(0,512,2048) run a sweep, one run per depth (default: the scenario's depth)")
    run.add_argument("--parallel", type=sequence_counts, metavar="N[,N...]",
                     help="concurrent sequences, each in a llama-server slot (llama-batched-bench's -npl); several "
                          "(1,2,4,8) run a sweep, one run per count (default: the scenario's parallel, else one "
                          "sequence in the target's runtime)")
    run.add_argument("--draft", type=draft_models, metavar="MODEL[,MODEL...]",
                     help="speculative decoding with this draft model (catalog alias or .gguf path, the model's "
                          "vocabulary): one run without a draft and one with each, in llama-server, on the same "
                          "device (default: the scenario's draft, else none)")
    run.add_argument("--telemetry-hz", type=positive_float, default=10.0, help="sampling rate (default 10)")
    run.add_argument("--no-telemetry", action="store_true", help="do not sample telemetry")
    run_flags(run)
    run.add_argument("--json", action="store_true", help="print one JSON object: run_dir, status, summary")


def add_ab(commands) -> None:
    """`bench ab`: interleaved base/head runs on one device."""
    ab = commands.add_parser("ab", help="interleaved A/B on one device: base and head alternate (ABBA), then a paired comparison")
    ab.add_argument("--base", required=True, metavar="MODEL_OR_RUNTIME",
                    help="a catalog alias or .gguf path, or (phones) a llama.cpp runtime folder")
    ab.add_argument("--head", required=True, metavar="MODEL_OR_RUNTIME", help="the same kinds as --base")
    ab.add_argument("--pairs", type=positive_int, default=8,
                    help="ABBA pairs (default 8; 6 is the fewest a paired test can call, and then every pair must agree)")
    ab.add_argument("--device", default="host", help="host (default), a device profile id, a serial, or any")
    ab.add_argument("--model", default="smollm2-135m", help="the model when --base and --head are runtimes")
    ab.add_argument("--scenario", default="quick", help="scenario name or .toml path (default quick)")
    ab.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    ab.add_argument("--repetitions", type=positive_int, help="override the scenario's repetitions (per run)")
    ab.add_argument("--telemetry-hz", type=positive_float, default=10.0, help="sampling rate (default 10)")
    ab.add_argument("--no-telemetry", action="store_true", help="do not sample telemetry")
    run_flags(ab)
    verdict_flags(ab)


def add_matrix(commands) -> None:
    """`bench matrix`: devices x models x scenarios x threads from a file."""
    matrix = commands.add_parser("matrix", help="run a matrix file: devices x models x scenarios x threads, resumable")
    matrix.add_argument("file", type=Path, help="the matrix TOML (devices, models, scenarios, threads, affinity, ...)")
    matrix.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    matrix.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted matrix in DIR")
    matrix.add_argument("--shard", type=shard_slice, metavar="K/N",
                        help="run only the K-th of N disjoint slices of the matrix (one per host or CI job; "
                             "the same file on every host, together every point once)")
    run_flags(matrix)
    matrix.add_argument("--json", action="store_true", help="print one JSON object: matrix_dir, status, points")


def _check_backends(args, scenarios) -> None:
    """--backend and --gpu-layers against each other and the scenarios, before anything runs."""
    gpu = [name for name in args.backend if name != "cpu"]
    if args.gpu_layers is not None and not gpu:
        raise UsageError("--gpu-layers offloads to a GPU backend, and the backend is cpu", "add --backend vulkan or opencl")
    for scenario in scenarios:
        if gpu and scenario.kind == "llama-bench":
            raise UsageError(f"scenario '{scenario.name}' runs llama-bench, whose output does not say what llama.cpp "
                             f"offloaded, so a {gpu[0]} run could not be verified",
                             "use a generate scenario (prompts and n_predict), which runs in llama-server")


def _target(args, listed=None, affinity: tuple[int, ...] | None = None, scenario=None, progress=None,
            backend: str | None = None):
    """`backend`: a backend sweep's point (else the one --backend names). In a sweep every point runs
    in llama-server, the CPU's too, so their ratio compares one runtime with itself."""
    from ..targets import TargetChoice, open_target

    choice = TargetChoice(model=args.model, scenario=args.scenario, runtime=args.runtime, repack=args.repack,
                          fixed_performance=args.fixed_performance, backend=backend or args.backend[0],
                          gpu_layers=args.gpu_layers, serve=len(args.backend) > 1)
    return open_target(choice, listed, affinity, scenario, progress)


def _run_options(args, label: str, scenario, model, target, out_root: Path):
    from ..runner import RunOptions

    allow = frozenset(args.allow)
    return RunOptions(device=label, scenario=scenario, model=model, out_root=out_root,
                      telemetry_hz=None if args.no_telemetry else args.telemetry_hz, allow=allow,
                      max_temp_c=args.max_temp, declare_unplugged=args.declare_unplugged,
                      correctness=not args.no_correctness, load_times=_load_times(args, scenario),
                      min_battery_pct=None if "battery" in allow else target.min_battery_pct)


def _load_times(args, scenario) -> bool:
    if args.load_times and scenario.kind == "llama-bench":
        raise UsageError("--load-times times llama-server's or llama-cpp-python's load; llama-bench loads the model "
                         "itself and reports no load time", "use a generate scenario (prompts and n_predict)")
    return args.load_times


def _check_model(name: str) -> None:
    from ..catalog import lookup

    if not Path(name).suffix == ".gguf" and "/" not in name:
        lookup(name)  # an unknown alias fails here, before any download


def _check_drafts(models: list[str], drafts: list[str], headers: dict) -> None:
    """A draft whose vocabulary llama.cpp would refuse: one line before anything runs (llama-server
    itself would serve on without speculating). `headers`: name -> GGUFInfo, or None where the
    file is not here yet (that pair is checked once it is)."""
    from ..gguf import draft_vocabulary_problem

    for model in models:
        for draft in drafts:
            problem = headers[model] and headers[draft] and draft_vocabulary_problem(headers[model], headers[draft])
            if problem:
                raise UsageError(f"draft model '{draft}' cannot draft for '{model}': {problem}",
                                 "give a draft of the model's own family (the same tokenizer), e.g. a smaller or "
                                 "more quantized sibling")


def cmd_run(args) -> int:
    from ..catalog import model_info
    from ..config import resolve_scenario, sweep_depths, sweep_drafts, sweep_parallels
    from ..runner import run_benchmark

    threads, affinities = args.threads or [None], args.affinity or [None]
    scenario = resolve_scenario(args.scenario).with_overrides(repetitions=args.repetitions, threads=threads[0])
    depths = sweep_depths(scenario, args.depth)
    parallels = sweep_parallels(scenario, args.parallel, depths)
    drafts = sweep_drafts(scenario, args.draft, depths, parallels)
    scenario = scenario.with_overrides(depth=depths[0], parallel=parallels[0])
    _check_backends(args, [scenario])
    for name in [args.model, *(draft for draft in drafts[1:])]:
        _check_model(name)
    servers = adb_servers_of(args)
    connect(args.connect, servers)
    selectors = [part.strip() for part in args.device.split(",") if part.strip()]
    devices = device_ids(selectors, servers)
    if len(devices) > 1 or len(threads) > 1 or len(affinities) > 1 or len(depths) > 1 or len(parallels) > 1 \
            or len(drafts) > 1 or len(args.backend) > 1:
        from ..matrix import MatrixSpec

        # the matrix reads the scenario again by name: what the flags changed travels in the spec
        spec = MatrixSpec(devices=tuple(devices), models=(args.model,), scenarios=(args.scenario,),
                          threads=tuple(threads), affinities=tuple(affinities), name=scenario.name,
                          repetitions=args.repetitions,
                          depths=tuple(depths) if args.depth or len(depths) > 1 else (None,),
                          parallels=tuple(parallels) if args.parallel or len(parallels) > 1 else (None,),
                          drafts=tuple(drafts), backends=tuple(args.backend) if len(args.backend) > 1 else (None,))
        return _run_matrix(args, spec, devices, resume=None)
    listed = next(iter(devices.values()))
    with BarProgress(err) as progress:
        label, target = _target(args, listed, affinities[0], scenario, progress)
        try:
            options = _run_options(args, label, scenario, model_info(args.model, progress), target, args.out)
            result = run_benchmark(options, target, progress)
        finally:
            target.release()  # the lock and anything left, also when the run never started
    summary = result.summary
    if args.json:
        print_json({"run_dir": str(result.run_dir), "status": result.status, "reason": result.reason,
                     "summary": summary}, default=str)
    else:
        _print_summary(result)
    return run_exit_code(result.status, result.reason, result.run_dir)


def _run_matrix(args, spec, devices: dict, resume: Path | None, points=None, shard: dict | None = None) -> int:
    """Every point of the matrix (or of `points`, its slice), devices in parallel; the rows go to
    matrix.json as they finish."""
    from dataclasses import replace

    from ..catalog import local_header, model_info
    from ..config import resolve_scenario, sweep_depths, sweep_drafts, sweep_parallels
    from ..matrix import load_rows, new_directory, run_matrix
    from ..records import NO_DRAFT

    scenarios = {name: resolve_scenario(name) for name in spec.scenarios}
    for name, scenario in scenarios.items():
        for key, listed, asked in (("depth", scenario.depths, spec.depths), ("parallel", scenario.parallels, spec.parallels),
                                   ("draft", scenario.drafts[1:], tuple(d for d in spec.drafts if d != NO_DRAFT))):
            if len(listed) > (0 if key == "draft" else 1) and asked in ((None,), ()):
                raise UsageError(f"scenario '{name}' sweeps {key} {list(listed)}, and a matrix sweeps only "
                                 "what its file names", f"add {key} = {list(listed)} to the matrix file")
        depths = sweep_depths(scenario, list(spec.depths))  # each depth fits each scenario's n_ctx, before any run
        parallels = sweep_parallels(scenario, list(spec.parallels), depths)
        sweep_drafts(scenario, [d for d in spec.drafts if d], depths, parallels)
    if spec.backends != (None,):
        if args.backend not in (["cpu"], list(spec.backends)):
            raise UsageError(f"the matrix sweeps backend {list(spec.backends)}, and --backend names {','.join(args.backend)}",
                             "drop --backend, or the file's backend key")
        args = argparse.Namespace(**{**vars(args), "backend": list(spec.backends)})
    _check_backends(args, scenarios.values())
    named_drafts = [draft for draft in spec.drafts if draft not in (None, NO_DRAFT)]
    for name in [*spec.models, *named_drafts]:
        _check_model(name)
    if named_drafts:
        _check_drafts(list(spec.models), named_drafts, {name: local_header(name) for name in [*spec.models, *named_drafts]})
    with BarProgress(err) as progress:
        models = {name: model_info(name, progress) for name in [*spec.models, *named_drafts]}  # pulled once, before the threads
        if named_drafts:  # those that were not on disk before
            _check_drafts(list(spec.models), named_drafts, {name: info.gguf for name, info in models.items()})
        directory = resume if resume is not None else new_directory(args.out, spec)
        rows = load_rows(directory) if resume is not None else None

        def make_run(point):
            scenario = scenarios[point.scenario].with_overrides(
                repetitions=spec.repetitions, threads=point.threads, depth=point.depth, parallel=point.parallel,
                draft=point.draft, drafts=spec.drafts if point.draft is not None else None)
            listed = devices[point.device]
            label, target = _target(args, listed, point.affinity, scenario, progress, point.backend)
            if listed is not None and len(devices) > 1:  # two phones of one profile need names of their own
                label = f"{label}-{listed.serial}"
            model = models[point.model]
            if scenario.draft is not None:
                model = replace(model, draft=models[scenario.draft])
            return _run_options(args, label, scenario, model, target, directory), target

        title = (f"{spec.name}: {len(spec.devices)} device(s) x {len(spec.models)} model(s) x "
                 f"{len(spec.scenarios)} scenario(s) x {len(spec.threads)} thread count(s) x "
                 f"{len(spec.affinities)} CPU set(s)")
        if shard is not None:
            title += f", shard {shard['index']}/{shard['count']} ({len(shard['points'])} of {shard['points_in_matrix']} points)"
        result = run_matrix(spec.points() if points is None else points, directory, make_run, progress, title=title,
                            resume=rows, shard=shard)
    if args.json:
        print_json({"matrix_dir": str(result.directory), "status": result.status, "points": list(result.rows)},
                    default=str)
    else:
        out.print((result.directory / "matrix.md").read_text(), markup=False)
        out.print(f"Matrix: {result.directory}")
    interrupted = any("interrupted" in (row.get("reason") or "") for row in result.rows)
    return run_exit_code(result.status, "interrupted" if interrupted else "some points did not complete",
                          result.directory)


def _ab_arm(args, spec: str) -> dict:
    """--base/--head: a runtime folder (phones) or a model; what it changes in the run's arguments."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if args.device == HOST:
            raise UsageError(f"'{spec}' is a runtime folder, and host runs use llama-cpp-python",
                             "pass --device PHONE to A/B two runtimes, or give two models for the host")
        from ..runtimes.build import describe_runtime_dir

        describe_runtime_dir(path)  # no llama-server there: one line, exit 2, before any run
        return {"runtime": path}
    _check_model(spec)
    return {"model": spec}


def cmd_ab(args) -> int:
    from ..ab import new_directory, run_ab
    from ..catalog import model_info
    from ..config import resolve_scenario, sweep_depths, sweep_parallels

    check_verdict_flags(args)
    arms = {"base": _ab_arm(args, args.base), "head": _ab_arm(args, args.head)}
    if set(arms["base"]) != set(arms["head"]):
        raise UsageError("--base and --head must be the same kind (two models, or two runtime folders)",
                         "e.g. --base 1b-q4 --head 3b-q4, or --base OLD_BUILD --head NEW_BUILD --device pixel8")
    differs = "runtime" if "runtime" in arms["base"] else "model"  # the match key the sides differ in on purpose
    args.ignore = []
    scenario = resolve_scenario(args.scenario).with_overrides(repetitions=args.repetitions)
    depths = sweep_depths(scenario)
    if len(depths) > 1:
        raise UsageError(f"scenario '{scenario.name}' sweeps depth {depths}; an A/B compares at one depth",
                         "give `bench ab` a scenario with one depth, or sweep with `bench run --depth`")
    parallels = sweep_parallels(scenario, depths=depths)
    if len(parallels) > 1:
        raise UsageError(f"scenario '{scenario.name}' sweeps parallel {parallels}; an A/B compares at one count",
                         "give `bench ab` a scenario with one parallel, or sweep with `bench run --parallel`")
    if scenario.drafts:
        raise UsageError(f"scenario '{scenario.name}' measures draft model(s) {list(scenario.drafts[1:])} with and "
                         "without; an A/B compares one setup", "run it with `bench run`, or give `bench ab` a "
                         "scenario without a draft")
    scenario = scenario.with_overrides(depth=depths[0])
    if len(args.backend) > 1:
        raise UsageError(f"--backend {','.join(args.backend)} is a sweep; an A/B compares base and head on one backend",
                         "give `bench ab` one --backend, or sweep with `bench run --backend`")
    _check_backends(args, [scenario])
    if differs == "runtime":
        _check_model(args.model)
    servers = adb_servers_of(args)
    connect(args.connect, servers)
    devices = device_ids([args.device], servers)
    listed = next(iter(devices.values()))
    with BarProgress(err) as progress:
        models = {side: model_info(arm.get("model", args.model), progress) for side, arm in arms.items()}
        directory = new_directory(args.out, f"{scenario.name}")

        def make_run(side: str, index: int):
            side_args = argparse.Namespace(**{**vars(args), "affinity": None, **arms[side]})
            label, target = _target(side_args, listed, None, scenario, progress)
            return _run_options(side_args, label, scenario, models[side], target, directory / side), target

        result = run_ab(directory, args.pairs, make_run, progress, meta={
            "base": args.base, "head": args.head, "device": args.device, "scenario": scenario.name,
            "differs_in": differs if args.base != args.head else None, "pairs_asked": args.pairs})
    if result.pairs:
        code = report_comparisons(args, stored_comparisons(args, [result.directory], threshold_of(args)))
        err.print(f"A/B: {result.directory} ({len(result.pairs)} pairs)", markup=False)
        if result.status == "complete":
            return code
    return run_exit_code(result.status, result.reason, result.directory)


def cmd_matrix(args) -> int:
    from dataclasses import replace

    from ..matrix import check_resume, load_matrix_file, slice_points
    from ..targets import devices_by_selector

    spec = load_matrix_file(args.file)
    points, shard = slice_points(spec, args.shard)
    if args.resume is not None:
        check_resume(args.resume, shard)
    servers = adb_servers_of(args, spec.adb_servers)
    connect([*spec.connect, *(args.connect or [])], servers)
    named, devices = devices_by_selector(list(dict.fromkeys(point.device for point in points)), servers)
    points = [replace(point, device=device, selector=point.device) for point in points for device in named[point.device]]
    spec = replace(spec, devices=tuple(devices))
    args.no_telemetry = spec.telemetry_hz is None
    args.telemetry_hz = spec.telemetry_hz
    args.model, args.scenario = ",".join(spec.models), ",".join(spec.scenarios)
    return _run_matrix(args, spec, devices, resume=args.resume, points=points, shard=shard)


def _print_summary(result) -> None:
    summary = result.summary
    table = Table(title=f"{result.run_dir.name} ({result.status})")
    for column in ("metric", "median", "spread (IQR)", "unit"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    rows = [("prefill", "prefill_tps", "tokens/s"), ("decode", "decode_tps", "tokens/s"),
            ("time to first token", "ttft_ms", "ms"), ("inter-token p50", "itl_p50_ms", "ms"),
            ("inter-token p95", "itl_p95_ms", "ms")]
    for label, key, unit in rows:
        median, iqr = summary.get(f"{key}_median"), summary.get(f"{key}_iqr")
        table.add_row(label, "n/a" if median is None else f"{median:,.1f}", "n/a" if iqr is None else f"{iqr:,.1f}", unit)
    peak = summary.get("peak_rss_bytes")
    table.add_row("peak RSS", "n/a" if peak is None else f"{peak / 2**20:,.1f}", "", "MiB")
    if summary.get("peak_pss_bytes"):
        table.add_row("peak PSS", f"{summary['peak_pss_bytes'] / 2**20:,.1f}", "", "MiB")
    if summary.get("roofline_efficiency"):
        table.add_row("share of bandwidth ceiling", f"{summary['roofline_efficiency']:.0%}", "",
                      f"of {summary['roofline_ceiling_tps']:,.0f} t/s")
    check = next((c for c in (summary.get("validity") or {}).get("checks") or () if c["name"] == "correctness"), None)
    if check is not None:
        verdict = {True: "pass", False: "FAIL", None: "not checked"}[check["ok"]]
        table.add_row("correctness", verdict, "", "vs host CPU")
    out.print(table)
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {warning}")
    out.print(f"Report: {result.run_dir / 'report.md'}")
