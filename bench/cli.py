"""The `bench` command. The only module that prints or exits: it catches the BenchError tree and
prints one line; tracebacks only with --debug."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress as RichBar, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.table import Table

from . import __version__
from .errors import BenchError, UsageError
from .targets import HOST, connect, device_ids

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class _BarTask:
    def __init__(self, bar: RichBar, task_id):
        self.bar, self.id = bar, task_id

    def advance(self, amount: float = 1) -> None:
        self.bar.advance(self.id, amount)

    def update(self, *, completed=None, total=None, label=None) -> None:
        fields = {k: v for k, v in (("completed", completed), ("total", total), ("description", label)) if v is not None}
        self.bar.update(self.id, **fields)

    def done(self) -> None:
        task = next(t for t in self.bar.tasks if t.id == self.id)
        total = task.total if task.total else 1
        self.bar.update(self.id, total=total, completed=total)
        self.bar.stop_task(self.id)


class BarProgress:
    """Live bars on stderr for every step a user waits for (downloads, load, repetitions). A console
    shows one live display at a time (rich raises LiveError on a second): a BarProgress opened while
    another is live on the same console adds its bars to the live one, so a step that opens its own
    (a phone runtime built inside `bench ab` or a matrix once did) cannot end the run."""

    _open: dict[int, "BarProgress"] = {}  # console id -> the outermost BarProgress open on it

    def __init__(self, console: Console):
        self.console = console
        self.bar = RichBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                           TimeElapsedColumn(), console=console, transient=False)
        self.bytes_bar = RichBar(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=console, transient=False)
        self._live: list[RichBar] = []
        self._outer: BarProgress | None = None

    def __enter__(self):
        self._outer = BarProgress._open.setdefault(id(self.console), self)
        if self._outer is self:
            self._outer = None
        return self

    def __exit__(self, *exc):
        if self._outer is None:
            BarProgress._open.pop(id(self.console), None)
        for bar in self._live:
            bar.stop()

    def _start(self, bar: RichBar) -> RichBar:
        if bar not in self._live:
            for other in self._live:
                other.stop()
            self._live = [bar]
            bar.start()
        return bar

    def task(self, label: str, total: float | None = None, unit: str = "") -> _BarTask:
        if self._outer is not None:
            return self._outer.task(label, total, unit)
        bar = self._start(self.bytes_bar if unit == "B" else self.bar)
        return _BarTask(bar, bar.add_task(label, total=total))


def _print_json(value, **dumps_options) -> None:
    # Plain stdout, not rich: a console may wrap long strings and break the JSON.
    sys.stdout.write(json.dumps(value, indent=2, **dumps_options) + "\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints usage too)
        raise UsageError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _thread_counts(text: str) -> list[int]:
    counts = [_positive_int(part.strip()) for part in text.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a thread count")
    return counts


def _token_counts(text: str) -> list[int]:
    counts = []
    for part in text.split(","):
        try:
            counts.append(int(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is not a number of tokens") from None
    if any(count < 0 for count in counts) or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"'{text}' must be distinct token counts >= 0")
    return counts


def _cpu_list(text: str) -> tuple[int, ...]:
    from .cpu import parse_cpus

    try:
        return parse_cpus(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shard(text: str):
    from .matrix import parse_shard

    try:
        return parse_shard(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adb-server", action="append", metavar="HOST:PORT",
                        help="an adb server to find devices on (repeatable; default: ADB_SERVER_SOCKET, or "
                             "ANDROID_ADB_SERVER_ADDRESS and ANDROID_ADB_SERVER_PORT, or 127.0.0.1:5037)")
    parser.add_argument("--connect", action="append", metavar="HOST:PORT",
                        help="`adb connect` this network device first (Wi-Fi adb, a device farm's endpoint)")


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """What `bench run` and `bench matrix` share: devices, preflight, runtime and guards."""
    _server_flags(parser)
    parser.add_argument("--allow", action="append", default=[], metavar="CHECK",
                        help="turn a failed preflight check into a warning")
    parser.add_argument("--runtime", type=Path, metavar="DIR",
                        help="prebuilt llama.cpp runtime for a phone (from `bench runtime build` or an extracted release)")
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp weight repacking: auto (off only on an x86 build with AMX, llama.cpp issue 20824)")
    parser.add_argument("--declare-unplugged", action="store_true",
                        help="the phone runs on its battery although a supply reports online (rooted input suspend, "
                             "a data-only cable): energy figures count as valid; recorded in run.json")
    parser.add_argument("--fixed-performance", action="store_true",
                        help="phones (Android 11+): hold clocks with `cmd power set-fixed-performance-mode-enabled` "
                             "for the run, always turned off after; recorded in run.json")
    parser.add_argument("--max-temp", type=_positive_float, metavar="C",
                        help="abort the run (partial) when the hottest CPU sensor passes C degrees")
    parser.add_argument("--no-correctness", action="store_true",
                        help="skip the correctness probe after the measured requests (recorded in run.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="Benchmark and profile LLMs on Android phones and on the host.")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add_command in (_add_run_command, _add_ab_command, _add_matrix_command, _add_devices_command,
                        _add_models_command, _add_scenarios_command, _add_compare_command, _add_sim_command,
                        _add_capture_command, _add_runtime_command, _add_history_command, _add_report_command):
        add_command(commands)
    return parser


def _add_run_command(commands) -> None:
    """`bench run`: one scenario on one or more devices, or a sweep."""
    run = commands.add_parser("run", help="run a scenario on a device and store the results")
    run.add_argument("--device", default="host",
                     help="host (default), a device profile id, a serial, or any; several (a,b) or all run in parallel")
    run.add_argument("--model", default="smollm2-135m", help="catalog alias or .gguf path (default smollm2-135m)")
    run.add_argument("--scenario", default="quick", help="scenario name or .toml path (default quick)")
    run.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    run.add_argument("--repetitions", type=_positive_int, help="override the scenario's repetitions")
    run.add_argument("--threads", type=_thread_counts, metavar="N[,N...]",
                     help="override the scenario's threads; several (1,2,4,5) run a sweep, one run per point")
    run.add_argument("--affinity", action="append", type=_cpu_list, metavar="CPUS",
                     help="pin the runtime to these CPUs (4-7, 0,2,4); repeat for a sweep over CPU sets")
    run.add_argument("--depth", type=_token_counts, metavar="N[,N...]",
                     help="tokens in the KV cache before each request (llama-bench's n_depth); several "
                          "(0,512,2048) run a sweep, one run per depth (default: the scenario's depth)")
    run.add_argument("--telemetry-hz", type=_positive_float, default=10.0, help="sampling rate (default 10)")
    run.add_argument("--no-telemetry", action="store_true", help="do not sample telemetry")
    _run_flags(run)
    run.add_argument("--json", action="store_true", help="print one JSON object: run_dir, status, summary")


def _add_ab_command(commands) -> None:
    """`bench ab`: interleaved base/head runs on one device."""
    ab = commands.add_parser("ab", help="interleaved A/B on one device: base and head alternate (ABBA), then a paired comparison")
    ab.add_argument("--base", required=True, metavar="MODEL_OR_RUNTIME",
                    help="a catalog alias or .gguf path, or (phones) a llama.cpp runtime folder")
    ab.add_argument("--head", required=True, metavar="MODEL_OR_RUNTIME", help="the same kinds as --base")
    ab.add_argument("--pairs", type=_positive_int, default=8,
                    help="ABBA pairs (default 8; 6 is the fewest a paired test can call, and then every pair must agree)")
    ab.add_argument("--device", default="host", help="host (default), a device profile id, a serial, or any")
    ab.add_argument("--model", default="smollm2-135m", help="the model when --base and --head are runtimes")
    ab.add_argument("--scenario", default="quick", help="scenario name or .toml path (default quick)")
    ab.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    ab.add_argument("--repetitions", type=_positive_int, help="override the scenario's repetitions (per run)")
    ab.add_argument("--telemetry-hz", type=_positive_float, default=10.0, help="sampling rate (default 10)")
    ab.add_argument("--no-telemetry", action="store_true", help="do not sample telemetry")
    _run_flags(ab)
    _verdict_flags(ab)


def _add_matrix_command(commands) -> None:
    """`bench matrix`: devices x models x scenarios x threads from a file."""
    matrix = commands.add_parser("matrix", help="run a matrix file: devices x models x scenarios x threads, resumable")
    matrix.add_argument("file", type=Path, help="the matrix TOML (devices, models, scenarios, threads, affinity, ...)")
    matrix.add_argument("--out", default="results", type=Path, help="results root (default results/)")
    matrix.add_argument("--resume", type=Path, metavar="DIR", help="continue the interrupted matrix in DIR")
    matrix.add_argument("--shard", type=_shard, metavar="K/N",
                        help="run only the K-th of N disjoint slices of the matrix (one per host or CI job; "
                             "the same file on every host, together every point once)")
    _run_flags(matrix)
    matrix.add_argument("--json", action="store_true", help="print one JSON object: matrix_dir, status, points")


def _add_devices_command(commands) -> None:
    """`bench devices`: what is attached, and --reset."""
    devices = commands.add_parser("devices", help="attached devices: profile, battery, thermal")
    devices.add_argument("--json", action="store_true")
    devices.add_argument("--reset", action="store_true",
                         help="undo what a dead run left on each idle device: its lock, its llama-server, fixed performance mode")
    devices.add_argument("--device", default=None, help="with --reset: only this device (serial or profile)")
    _server_flags(devices)


def _add_models_command(commands) -> None:
    """`bench models [pull]`."""
    models = commands.add_parser("models", help="list catalog models, or pull one")
    models.add_argument("--json", action="store_true")
    models_sub = models.add_subparsers(dest="models_command", parser_class=_Parser)
    pull = models_sub.add_parser("pull", help="download a model into the cache and verify it")
    pull.add_argument("alias")
    pull.add_argument("--force", action="store_true", help="download again even if cached")


def _add_scenarios_command(commands) -> None:
    """`bench scenarios`."""
    scenarios = commands.add_parser("scenarios", help="list scenarios")
    scenarios.add_argument("--json", action="store_true")


def _add_compare_command(commands) -> None:
    """`bench compare`: run sets against a base."""
    compare = commands.add_parser("compare", help="compare run sets: did head get slower, hotter, hungrier?")
    compare.add_argument("paths", nargs="+", type=Path, metavar="RUNS",
                         help="BASE HEAD [MORE...]: run directories or folders of runs (only heads with --baseline)")
    compare.add_argument("--baseline", metavar="NAME", help="use RESULTS/baselines/NAME as the base")
    compare.add_argument("--results", type=Path, default=Path("results"),
                         help="results root for --baseline and for the run-to-run noise of earlier runs (default results/)")
    compare.add_argument("--ignore", action="append", default=[], choices=("device", "model", "scenario", "runtime", "threads", "affinity", "fixed_performance", "repack"),
                         help="compare even though this match key differs (e.g. two models on purpose)")
    _verdict_flags(compare)


def _add_sim_command(commands) -> None:
    """`bench sim start|stop|status`."""
    sim = commands.add_parser("sim", help="an emulated Android phone on loopback, behind the real adb server")
    sim_sub = sim.add_subparsers(dest="sim_command", required=True, parser_class=_Parser)
    sim_start = sim_sub.add_parser("start", help="start a sim in the background and connect it to adb")
    sim_start.add_argument("--name", default="sim")
    sim_start.add_argument("--port", type=_positive_int, help="loopback port (default: first free from 6520)")
    sim_start.add_argument("--profile", default="default", help="sim profile (default, hot)")
    sim_start.add_argument("--replay", type=Path, metavar="DIR", help="answer with captured text from DIR")
    sim_start.add_argument("--unplugged", action="store_true", help="battery really discharges (default: on USB)")
    sim_start.add_argument("--unauthorized", action="store_true", help="act like a phone that never accepts this host's key")
    sim_start.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override a profile value, e.g. battery.level_pct=30, memory.lmk_kill_above_mb=500, "
                                "storage.data_quota_mb=2048")
    sim_stop = sim_sub.add_parser("stop", help="disconnect and stop a sim")
    sim_stop.add_argument("--name", default=None)
    sim_stop.add_argument("--all", action="store_true")
    sim_sub.add_parser("status", help="list running sims")


def _add_capture_command(commands) -> None:
    """`bench capture`."""
    capture = commands.add_parser("capture", help="save a device's getprop/dumpsys/sysfs text for --replay")
    capture.add_argument("--device", required=True, help="serial")
    capture.add_argument("dir", type=Path)


def _add_runtime_command(commands) -> None:
    """`bench runtime build|list`."""
    runtime = commands.add_parser("runtime", help="build or list llama.cpp runtimes")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", required=True, parser_class=_Parser)
    runtime_build = runtime_sub.add_parser("build", help="build llama-server, llama-bench and llama-completion")
    runtime_build.add_argument("--target", required=True, choices=("host", "android-arm64", "linux-arm64"),
                               help="host; android-arm64 (NDK); linux-arm64 (static aarch64, for `bench sim --profile arm64`)")
    runtime_build.add_argument("--ndk", help="Android NDK root (default $ANDROID_NDK_HOME)")
    runtime_build.add_argument("--src", help="a llama.cpp source tree (default: the one vendored in llama-cpp-python's sdist)")
    runtime_build.add_argument("--jobs", type=_positive_int)
    runtime_build.add_argument("--arm-arch", default=None, help="GGML_CPU_ARM_ARCH for android-arm64 and linux-arm64")
    runtime_build.add_argument("--print-plan", action="store_true", help="print the cmake configuration and stop")
    runtime_sub.add_parser("list", help="list cached runtimes")


def _add_history_command(commands) -> None:
    """`bench history`."""
    history = commands.add_parser("history", help="each metric across runs (by date or commit) with its noise band")
    history.add_argument("path", type=Path, help="a folder of runs (results/)")
    history.add_argument("--by", choices=("date", "commit"), default="date")
    history.add_argument("--out", type=Path, help="where history.html and its PNGs go (default PATH/history)")


def _add_report_command(commands) -> None:
    """`bench report`."""
    report = commands.add_parser("report", help="regenerate report.md and plots from a stored run")
    report.add_argument("run_dir", type=Path)


# -- commands ---------------------------------------------------------------------------------

def _verdict_flags(parser) -> None:
    """What `bench compare` and `bench ab` share: threshold, output, and the gate's exit code."""
    parser.add_argument("--threshold", type=_positive_float, default=5.0, help="smallest change that counts, in %% (default 5)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the comparison plot here")
    parser.add_argument("--fail-on-regression", nargs="?", const=-1.0, type=_positive_float, metavar="PCT",
                        help="exit 1 when any metric regressed (PCT, if given, sets the threshold)")
    parser.add_argument("--strict", action="store_true",
                        help="with --fail-on-regression: a suspected regression (within run-to-run noise) fails too")
    parser.add_argument("--gate", metavar="METRICS",
                        help="the metrics whose regression fails --fail-on-regression: a comma list or 'all' (default: "
                             "prefill_tps,decode_tps,ttft_ms; the rest are reported)")


def _servers(args, also: tuple[str, ...] = ()) -> list:
    from .targets import adb_servers

    return adb_servers([*also, *(getattr(args, "adb_server", None) or [])])


def _target(args, listed=None, affinity: tuple[int, ...] | None = None, scenario=None, progress=None):
    from .targets import TargetChoice, open_target

    choice = TargetChoice(model=args.model, scenario=args.scenario, runtime=args.runtime, repack=args.repack,
                          fixed_performance=args.fixed_performance)
    return open_target(choice, listed, affinity, scenario, progress)


def _run_options(args, label: str, scenario, model, target, out_root: Path):
    from .runner import RunOptions

    allow = frozenset(args.allow)
    return RunOptions(device=label, scenario=scenario, model=model, out_root=out_root,
                      telemetry_hz=None if args.no_telemetry else args.telemetry_hz, allow=allow,
                      max_temp_c=args.max_temp, declare_unplugged=args.declare_unplugged,
                      correctness=not args.no_correctness,
                      min_battery_pct=None if "battery" in allow else target.min_battery_pct)


def _check_model(name: str) -> None:
    from .catalog import lookup

    if not Path(name).suffix == ".gguf" and "/" not in name:
        lookup(name)  # an unknown alias fails here, before any download


def cmd_run(args) -> int:
    from .catalog import model_info
    from .config import resolve_scenario, sweep_depths
    from .runner import run_benchmark

    threads, affinities = args.threads or [None], args.affinity or [None]
    scenario = resolve_scenario(args.scenario).with_overrides(repetitions=args.repetitions, threads=threads[0])
    depths = sweep_depths(scenario, args.depth)
    scenario = scenario.with_overrides(depth=depths[0])
    _check_model(args.model)
    servers = _servers(args)
    connect(args.connect, servers)
    selectors = [part.strip() for part in args.device.split(",") if part.strip()]
    devices = device_ids(selectors, servers)
    if len(devices) > 1 or len(threads) > 1 or len(affinities) > 1 or len(depths) > 1:
        from .matrix import MatrixSpec

        spec = MatrixSpec(devices=tuple(devices), models=(args.model,), scenarios=(args.scenario,),
                          threads=tuple(threads), affinities=tuple(affinities), name=scenario.name,
                          repetitions=args.repetitions, depths=tuple(depths) if len(depths) > 1 else (None,))
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
        _print_json({"run_dir": str(result.run_dir), "status": result.status, "reason": result.reason,
                     "summary": summary}, default=str)
    else:
        _print_summary(result)
    return _run_exit_code(result.status, result.reason, result.run_dir)


def _run_exit_code(status: str, reason: str | None, where) -> int:
    if status == "complete":
        return 0
    if reason and "interrupted" in reason:
        return 130
    err.print(f"run {status}: {reason}; measured rows are kept in {where}", markup=False, soft_wrap=True)
    return 3


def _run_matrix(args, spec, devices: dict, resume: Path | None, points=None, shard: dict | None = None) -> int:
    """Every point of the matrix (or of `points`, its slice), devices in parallel; the rows go to
    matrix.json as they finish."""
    from .catalog import model_info
    from .config import resolve_scenario, sweep_depths
    from .matrix import load_rows, new_directory, run_matrix

    scenarios = {name: resolve_scenario(name) for name in spec.scenarios}
    for name, scenario in scenarios.items():
        if scenario.depths and spec.depths == (None,) and len(scenario.depths) > 1:
            raise UsageError(f"scenario '{name}' sweeps depth {list(scenario.depths)}, and a matrix sweeps only "
                             "what its file names", f"add depth = {list(scenario.depths)} to the matrix file")
        sweep_depths(scenario, list(spec.depths))  # each depth fits each scenario's n_ctx, before any run
    for name in spec.models:
        _check_model(name)
    with BarProgress(err) as progress:
        models = {name: model_info(name, progress) for name in spec.models}  # pulled once, before the threads
        directory = resume if resume is not None else new_directory(args.out, spec)
        rows = load_rows(directory) if resume is not None else None

        def make_run(point):
            scenario = scenarios[point.scenario].with_overrides(repetitions=spec.repetitions, threads=point.threads,
                                                                 depth=point.depth)
            listed = devices[point.device]
            label, target = _target(args, listed, point.affinity, scenario, progress)
            if listed is not None and len(devices) > 1:  # two phones of one profile need names of their own
                label = f"{label}-{listed.serial}"
            return _run_options(args, label, scenario, models[point.model], target, directory), target

        title = (f"{spec.name}: {len(spec.devices)} device(s) x {len(spec.models)} model(s) x "
                 f"{len(spec.scenarios)} scenario(s) x {len(spec.threads)} thread count(s) x "
                 f"{len(spec.affinities)} CPU set(s)")
        if shard is not None:
            title += f", shard {shard['index']}/{shard['count']} ({len(shard['points'])} of {shard['points_in_matrix']} points)"
        result = run_matrix(spec.points() if points is None else points, directory, make_run, progress, title=title,
                            resume=rows, shard=shard)
    if args.json:
        _print_json({"matrix_dir": str(result.directory), "status": result.status, "points": list(result.rows)},
                    default=str)
    else:
        out.print((result.directory / "matrix.md").read_text(), markup=False)
        out.print(f"Matrix: {result.directory}")
    interrupted = any("interrupted" in (row.get("reason") or "") for row in result.rows)
    return _run_exit_code(result.status, "interrupted" if interrupted else "some points did not complete",
                          result.directory)


def _ab_arm(args, spec: str) -> dict:
    """--base/--head: a runtime folder (phones) or a model; what it changes in the run's arguments."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if args.device == HOST:
            raise UsageError(f"'{spec}' is a runtime folder, and host runs use llama-cpp-python",
                             "pass --device PHONE to A/B two runtimes, or give two models for the host")
        from .runtimes.build import describe_runtime_dir

        describe_runtime_dir(path)  # no llama-server there: one line, exit 2, before any run
        return {"runtime": path}
    _check_model(spec)
    return {"model": spec}


def cmd_ab(args) -> int:
    from .ab import new_directory, run_ab
    from .catalog import model_info
    from .config import resolve_scenario, sweep_depths

    _check_verdict_flags(args)
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
    scenario = scenario.with_overrides(depth=depths[0])
    if differs == "runtime":
        _check_model(args.model)
    servers = _servers(args)
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
        code = _report_comparisons(args, _comparisons(args, [result.directory], _threshold(args)))
        err.print(f"A/B: {result.directory} ({len(result.pairs)} pairs)", markup=False)
        if result.status == "complete":
            return code
    return _run_exit_code(result.status, result.reason, result.directory)


def cmd_matrix(args) -> int:
    from dataclasses import replace

    from .matrix import check_resume, load_matrix_file, slice_points
    from .targets import devices_by_selector

    spec = load_matrix_file(args.file)
    points, shard = slice_points(spec, args.shard)
    if args.resume is not None:
        check_resume(args.resume, shard)
    servers = _servers(args, spec.adb_servers)
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


def cmd_devices(args) -> int:
    from .targets import describe_devices, reset_devices

    servers = _servers(args)
    connect(args.connect, servers)
    if args.reset:
        entries = reset_devices(args.device, servers)
        if args.json:
            _print_json({"schema_version": 1, "reset": entries})
        for entry in entries if not args.json else []:
            out.print(f"{entry['serial']}: {'; '.join(entry['done']) or 'nothing left over'}", markup=False)
        return 0
    entries = describe_devices(servers)
    if args.json:
        _print_json({"schema_version": 1, "devices": entries})
        return 0
    if not entries:
        out.print("no device attached (`bench run` without --device runs on the host; `bench sim start` gives an emulated phone)")
    for entry in entries:
        if entry["state"] != "device":
            out.print(f"{entry['serial']}\t{entry['state']}\t{entry['fix']}")
            continue
        battery, thermal = entry["battery"], entry["thermal"]
        hottest = max((s["celsius"] for s in thermal["sensors"]), default=None)
        out.print(f"{entry['serial']}\t{entry['profile']}\t{entry['manufacturer']} {entry['model']} ({entry['device']}), "
                  f"{entry['soc']}, {entry['abi']}, SDK {entry['sdk']}, RAM {(entry['ram_available_bytes'] or 0) / 2**30:.1f}/"
                  f"{(entry['ram_total_bytes'] or 0) / 2**30:.1f} GiB free; battery {battery['level_pct']}% {battery['status']} "
                  f"({battery['plugged']}); thermal status {thermal['status']}, hottest {hottest} C"
                  + (f"; in use by {entry['in_use_by']}" if entry.get("in_use_by") else ""), markup=False)
    return 0


def cmd_models(args) -> int:
    from .catalog import is_downloaded, load_catalog, lookup, model_info, model_path

    if args.models_command == "pull":
        entry = lookup(args.alias)
        with BarProgress(err) as progress:
            from .catalog import pull

            path = pull(entry, progress, force=args.force)
            info = model_info(str(path), progress)
        out.print(f"{entry.alias}: {path} ({info.bytes / 2**20:.1f} MiB, sha256 {info.sha256}"
                  f"{', pinned' if entry.pinned else ', unpinned: hash recorded now'})")
        return 0
    catalog = load_catalog()
    rows = []
    for alias, entry in catalog.items():
        downloaded = is_downloaded(entry)
        rows.append({"alias": alias, "description": entry.description, "source": entry.source,
                     "file": entry.filename, "sha256": entry.sha256, "pinned": entry.pinned,
                     "size_bytes": entry.size_bytes, "approx_bytes": entry.approx_bytes,
                     "local_bytes": model_path(entry).stat().st_size if downloaded else None,
                     "downloaded": downloaded, "path": str(model_path(entry)),
                     "catalog_file": entry.catalog_file})
    if args.json:
        _print_json({"schema_version": 1, "models": rows})
        return 0
    table = Table(title="Models (bench models pull ALIAS)")
    for column in ("alias", "source", "size", "pinned", "downloaded", "description"):
        table.add_column(column, no_wrap=column != "description")
    for row in rows:
        exact = row["local_bytes"] or row["size_bytes"]
        size = f"{exact / 1e9:.2f} GB" if exact else f"~{row['approx_bytes'] / 1e9:.2f} GB" if row["approx_bytes"] else "?"
        table.add_row(row["alias"], row["source"], size, "yes" if row["pinned"] else "no",
                      "yes" if row["downloaded"] else "no", row["description"])
    out.print(table)
    return 0


def cmd_scenarios(args) -> int:
    from .config import known_scenarios, parse_scenario
    from .records import to_dict

    scenarios = [parse_scenario(path) for path in known_scenarios().values()]
    if args.json:
        _print_json({"schema_version": 1, "scenarios": [to_dict(s) for s in scenarios]})
        return 0
    table = Table(title="Scenarios (bench run --scenario NAME)")
    for column in ("name", "reps", "warmup", "n_predict", "prompts", "duration", "description"):
        table.add_column(column)
    for s in scenarios:
        table.add_row(s.name, str(s.repetitions), str(s.warmup), str(s.n_predict), str(len(s.prompts)),
                      f"{s.duration_s:.0f} s" if s.duration_s else "", s.description)
    out.print(table)
    return 0


def cmd_history(args) -> int:
    from .history import write_history

    page = write_history(args.path, args.out or args.path / "history", args.by)
    out.print(f"History: {page}")
    return 0


def cmd_report(args) -> int:
    from .render import write_report
    from .store import persist_settled_status

    if persist_settled_status(args.run_dir):
        err.print(f"bench: {args.run_dir} was left 'running' by a bench process that is gone: marked failed",
                  markup=False, soft_wrap=True)
    path = write_report(args.run_dir)
    out.print(f"Report: {path}")
    return 0


def _comparisons(args, paths: list[Path], threshold: float):
    from .comparisons import compare_stored, gate_metrics

    return compare_stored(paths, threshold=threshold, ignore=args.ignore, gate=gate_metrics(getattr(args, "gate", None)),
                          results=getattr(args, "results", Path("results")))


def _report_comparisons(args, comparisons) -> int:
    """Print (and plot) comparisons; the exit code of the gate."""
    if not any(c.comparable for c in comparisons):
        raise UsageError(f"runs are not comparable: {comparisons[0].mismatches[0]}",
                         "compare runs of the same device, model, scenario, runtime, threads, CPU set, clocks and repacking, or pass --ignore KEY")
    from .compare import markdown, to_json

    if args.plot:
        from .plots import write_compare_plot

        write_compare_plot(args.plot, comparisons)
    if args.format == "json":
        _print_json(to_json(comparisons))
    else:
        sys.stdout.write(markdown(comparisons))
    failed = any(c.regressed or (args.strict and c.suspected) for c in comparisons)
    return 1 if args.fail_on_regression is not None and failed else 0


def _check_verdict_flags(args) -> None:
    if args.strict and args.fail_on_regression is None:
        raise UsageError("--strict only changes what fails --fail-on-regression, which is not given",
                         "add --fail-on-regression, or drop --strict")
    from .comparisons import gate_metrics

    gate_metrics(getattr(args, "gate", None))


def _threshold(args) -> float:
    return (args.fail_on_regression if args.fail_on_regression and args.fail_on_regression > 0 else args.threshold) / 100


def cmd_compare(args) -> int:
    _check_verdict_flags(args)
    if args.baseline:
        base_path = args.results / "baselines" / args.baseline
        if not base_path.exists():
            raise UsageError(f"no baseline '{args.baseline}' at {base_path}",
                             f"save one with `mkdir -p {base_path.parent} && cp -r RUN_DIR {base_path}`")
        paths = [base_path, *args.paths]
    else:
        paths = list(args.paths)
    return _report_comparisons(args, _comparisons(args, paths, _threshold(args)))


def cmd_sim(args) -> int:
    from .android import adb
    from .catalog import cache_root
    from .sim import control

    cache = cache_root()
    if args.sim_command == "start":
        port = control.plan_start(cache, name=args.name, port=args.port, profile=args.profile, replay=args.replay)
        with BarProgress(err) as progress:
            task = progress.task(f"starting sim '{args.name}' on 127.0.0.1:{port}")
            info = control.start(cache, name=args.name, port=port, profile=args.profile, replay=args.replay,
                                 unplugged=args.unplugged, unauthorized=args.unauthorized, settings=tuple(args.set))
            try:
                adb.connect(info.serial)
                adb.wait_for_state(info.serial, "unauthorized" if args.unauthorized else "device", timeout=20)
            except BenchError:
                control.stop(info)
                raise
            task.done()
        if info.replay_missing:
            err.print(f"replay: not in {info.replay}, simulated instead: {', '.join(info.replay_missing)}")
        out.print(f"sim '{info.name}' ({info.profile}{', unplugged' if info.unplugged else ', on USB'}) "
                  f"on 127.0.0.1:{info.port}, pid {info.pid}")
        out.print(info.serial)
        return 0
    if getattr(args, "name", None):
        control.check_name(args.name)
    sims = control.running(cache)
    if args.sim_command == "status":
        if not sims:
            out.print("no sim is running")
        for info in sims:
            out.print(f"{info.name}\t{info.serial}\tpid {info.pid}\tprofile {info.profile}")
        return 0
    targets = sims if args.all else [s for s in sims if s.name == (args.name or "sim")]
    if not targets:
        out.print("no sim is running" if not sims else f"no sim named '{args.name or 'sim'}' is running "
                  f"(running: {', '.join(s.name for s in sims)})")
        return 0
    for info in targets:
        adb.disconnect(info.serial)
        control.stop(info)
        out.print(f"stopped sim '{info.name}' ({info.serial})")
    return 0


def cmd_capture(args) -> int:
    from .android.adb import Device
    from .android.capture import capture

    written = capture(Device(args.device), args.dir)
    out.print(f"wrote {len(written)} files to {args.dir} (replay with `bench sim start --replay {args.dir}`)")
    return 0


def cmd_runtime(args) -> int:
    from .catalog import cache_root
    from .runtimes import build as builder

    cache = cache_root()
    if args.runtime_command == "list":
        found = builder.list_runtimes(cache)
        if not found:
            out.print("no runtime built yet (bench runtime build --target host)")
        for item in found:
            out.print(f"{item['target']}\tllama.cpp {item['llama_cpp_commit']}\t{item['path']}")
        return 0
    with BarProgress(err) as progress:
        plan = builder.plan_build(args.target, cache, src=args.src, ndk=args.ndk, jobs=args.jobs,
                                  arm_arch=args.arm_arch or builder.DEFAULT_ARM_ARCH, progress=progress)
        if args.print_plan:
            _print_json({"target": plan.target, "source": str(plan.source), "commit": plan.commit,
                         "cmake_flags": list(plan.configure), "install_dir": str(plan.install_dir)})
            return 0
        cached = builder.installed(plan)
        path = builder.build(plan, progress)
    out.print(f"{'cached' if cached else 'built'}: {path}")
    return 0


COMMANDS = {"run": cmd_run, "ab": cmd_ab, "matrix": cmd_matrix, "devices": cmd_devices, "compare": cmd_compare, "sim": cmd_sim, "capture": cmd_capture, "runtime": cmd_runtime, "models": cmd_models, "scenarios": cmd_scenarios, "report": cmd_report, "history": cmd_history}


def _terminate(signum, frame) -> None:
    # SIGTERM (a CI timeout, `kill`) ends a run like Ctrl-C: kept, marked partial, device cleaned.
    raise KeyboardInterrupt("SIGTERM")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BenchError as error:
        if debug:
            raise
        err.print(f"bench: {error}", markup=False, soft_wrap=True)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("bench: interrupted", markup=False)
        return 130


if __name__ == "__main__":
    sys.exit(main())
