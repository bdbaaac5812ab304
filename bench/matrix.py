"""Matrices: devices x models x scenarios x threads x CPU sets, one run per point. Points on
different devices run in parallel (one thread per device); points on one device run one after the
other. A point that fails is recorded and the others go on. matrix.json is rewritten after every
point, so an interrupted matrix resumes where it stopped (`bench matrix FILE --resume DIR`).

A thread sweep (`bench run --threads 1,2,4`) and a run on several phones (`--device a,b` or
`all`) are matrices too. The folder holds the runs (ordinary run directories, so `bench compare`
and `bench report` read them), matrix.json, matrix.md and, when threads vary, threads.png: decode
and prefill against threads. On big.LITTLE phones decode collapses once threads spill onto the
little cores (llama.cpp issue 21763); a sweep shows where."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .config import depths_problem, drafts_problem, key_line, load_toml, parallels_problem
from .cpu import format_cpus, parse_cpus
from .errors import BenchError, ConfigError, StoreError, UsageError
from .files import atomic_write_bytes, atomic_write_json
from .progress import Progress
from .records import NO_DRAFT
from .runtimes.build import BACKENDS, backends_problem
from .runner import RunOptions, RunResult, Target, run_benchmark
from .store import load_run_meta, make_run_id

SCHEMA_VERSION = 1
MATRIX_FILE = "matrix.json"
FILE_KEYS = {"schema_version", "name", "devices", "models", "scenarios", "threads", "affinity", "repetitions",
             "adb_servers", "connect", "telemetry_hz", "depth",
             "parallel", "draft", "backend"}


@dataclass(frozen=True)
class MatrixPoint:
    device: str                        # a --device selector: host, a serial, a profile id
    model: str
    scenario: str
    threads: int | None
    affinity: tuple[int, ...] | None   # CPUs the runtime is pinned to; None = the target's default
    depth: int | None = None           # tokens in the KV cache before each request; None = the scenario's
    selector: str | None = None        # the device as the matrix file names it, when `device` is its id
    parallel: int | None = None        # concurrent sequences; None = the scenario's
    draft: str | None = None           # the draft model, or NO_DRAFT (the model alone); None: no draft sweep
    backend: str | None = None         # the ggml backend of a backend sweep; None: the command's --backend

    @property
    def key(self) -> str:
        """Stable name of the point, for resume."""
        cpus = "default" if self.affinity is None else format_cpus(self.affinity)
        depth = "" if self.depth is None else f"|depth {self.depth}"
        parallel = "" if self.parallel is None else f"|parallel {self.parallel}"
        draft = "" if self.draft is None else f"|draft {self.draft}"
        backend = "" if self.backend is None else f"|backend {self.backend}"
        return (f"{self.device}|{self.model}|{self.scenario}|{self.threads or 'default'}|{cpus}{depth}{parallel}{draft}"
                f"{backend}")

    @property
    def label(self) -> str:
        cpus = "default CPUs" if self.affinity is None else f"cpus {format_cpus(self.affinity)}"
        depth = "" if self.depth is None else f", depth {self.depth}"
        parallel = "" if self.parallel is None else f", {self.parallel} parallel"
        draft = "" if self.draft is None else ", no draft" if self.draft == NO_DRAFT else f", draft {self.draft}"
        backend = "" if self.backend is None else f", {self.backend} backend"
        return (f"{self.device}, {self.model}, {self.scenario}, {self.threads or 'default'} threads, "
                f"{cpus}{depth}{parallel}{draft}{backend}")


@dataclass(frozen=True)
class MatrixSpec:
    devices: tuple[str, ...]
    models: tuple[str, ...]
    scenarios: tuple[str, ...]
    threads: tuple[int | None, ...] = (None,)
    affinities: tuple[tuple[int, ...] | None, ...] = (None,)
    depths: tuple[int | None, ...] = (None,)
    parallels: tuple[int | None, ...] = (None,)
    drafts: tuple[str | None, ...] = (None,)
    backends: tuple[str | None, ...] = (None,)
    name: str = "matrix"
    repetitions: int | None = None
    adb_servers: tuple[str, ...] = ()
    connect: tuple[str, ...] = ()
    telemetry_hz: float | None = 10.0

    def points(self) -> list[MatrixPoint]:
        return [MatrixPoint(d, m, s, t, a, depth, parallel=n, draft=draft, backend=backend)
                for d in self.devices for m in self.models for s in self.scenarios for a in self.affinities
                for t in self.threads for depth in self.depths for n in self.parallels for draft in self.drafts
                for backend in self.backends]


@dataclass(frozen=True)
class Shard:
    """`--shard K/N`: the K-th of N disjoint slices of a matrix, so a lab's own scheduler (a CI job
    matrix, build agents, a farm's queue) spreads one matrix over N hosts with no coordinator. A
    point's slice is its position in the file's expansion (devices x models x scenarios x CPU sets
    x threads x depths x parallel counts x drafts x backends) modulo N: the same file gives every host the same slices, together every point once,
    and slice sizes differ by one at most."""

    index: int  # 1-based
    count: int

    def take(self, points: list[MatrixPoint]) -> list[MatrixPoint]:
        return [point for position, point in enumerate(points) if position % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    """"2/4" -> Shard(2, 4); ValueError naming what is wrong otherwise."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"'{text}' is not K/N (e.g. 2/4: the second of four slices)")
    shard = Shard(int(index), int(count))
    if shard.count < 1 or not 1 <= shard.index <= shard.count:
        raise ValueError(f"'{text}': K must be 1 to N and N at least 1")
    return shard


def load_matrix_file(path: Path) -> MatrixSpec:
    """A matrix TOML file; every error names the file, the key and the line."""
    data, text = load_toml(path)

    def fail(key: str, message: str, hint: str | None = None):
        raise ConfigError(str(path), message, key_line(text, key, None), hint)

    for key in data:
        if key not in FILE_KEYS:
            fail(key, f"unknown key '{key}'", f"known keys: {', '.join(sorted(FILE_KEYS))}")
    if data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        fail("schema_version", f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}", "upgrade bench")

    def strings(key: str, required: bool) -> tuple[str, ...]:
        value = data.get(key)
        if value is None:
            if required:
                fail(key, f"missing key '{key}'", f"add {key} = [\"...\"]")
            return ()
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            fail(key, f"'{key}' must be a non-empty list of strings")
        return tuple(value)

    threads = data.get("threads", [])
    if not isinstance(threads, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 1 for t in threads):
        fail("threads", "'threads' must be a list of integers >= 1")
    affinities: list = []
    for item in data.get("affinity", []) if isinstance(data.get("affinity", []), list) else fail("affinity", "'affinity' must be a list"):
        try:
            affinities.append(parse_cpus(str(item)))
        except ValueError as error:
            fail("affinity", str(error))
    sweeps = {}
    for key, problem_of, example in (("depth", depths_problem, "[0, 512, 2048]"),
                                     ("parallel", parallels_problem, "[1, 2, 4, 8]")):
        sweeps[key] = data.get(key, [])
        problem = problem_of(sweeps[key]) if sweeps[key] != [] else None  # [] asks for no sweep, as threads = [] does
        if problem:
            fail(key, f"'{key}' {problem}: {sweeps[key]!r}", f"e.g. {key} = {example}")
    drafts = data.get("draft", [])
    drafts = drafts if isinstance(drafts, list) else [drafts]
    problem = drafts_problem(drafts) if drafts else None
    if problem:
        fail("draft", f"'draft' {problem}: {data['draft']!r}", 'e.g. draft = ["smollm2-135m"]')
    drafts = [draft for draft in drafts if draft != NO_DRAFT]
    backends = data.get("backend", [])
    backends = backends if isinstance(backends, list) else [backends]
    problem = backends_problem(backends)
    if problem:
        fail("backend", f"'backend' must list each of {', '.join(BACKENDS)} at most once ({problem}): "
                        f"{data['backend']!r}", 'e.g. backend = ["cpu", "vulkan"]')
    repetitions = data.get("repetitions")
    if repetitions is not None and (not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1):
        fail("repetitions", "'repetitions' must be an integer >= 1")
    hz = data.get("telemetry_hz", 10.0)
    if hz is not None and (not isinstance(hz, (int, float)) or isinstance(hz, bool) or hz < 0):
        fail("telemetry_hz", "'telemetry_hz' must be a number >= 0 (0 turns telemetry off)")
    return MatrixSpec(devices=strings("devices", True), models=strings("models", True),
                      scenarios=strings("scenarios", True), threads=tuple(threads) or (None,),
                      affinities=tuple(affinities) or (None,), depths=tuple(sweeps["depth"]) or (None,),
                      parallels=tuple(sweeps["parallel"]) or (None,),
                      drafts=(NO_DRAFT, *drafts) if drafts else (None,),
                      backends=tuple(backends) or (None,),
                      name=str(data.get("name", path.stem)),
                      repetitions=repetitions, adb_servers=strings("adb_servers", False),
                      connect=strings("connect", False), telemetry_hz=float(hz) if hz else None)


@dataclass(frozen=True)
class MatrixResult:
    directory: Path
    rows: tuple[dict, ...]

    @property
    def status(self) -> str:
        statuses = {row["status"] for row in self.rows}
        return "complete" if statuses == {"complete"} else "failed" if statuses <= {"failed"} else "partial"


RunFactory = Callable[[MatrixPoint], tuple[RunOptions, Target]]


def new_directory(out_root: Path, spec: MatrixSpec) -> Path:
    """results/<UTC time>-matrix-<model or name>-<scenario or "runs">/"""
    model = spec.models[0] if len(spec.models) == 1 else spec.name
    scenario = spec.scenarios[0] if len(spec.scenarios) == 1 else "runs"
    directory = out_root / make_run_id(dt.datetime.now(dt.timezone.utc), "matrix", model, scenario)
    directory.mkdir(parents=True, exist_ok=False)
    return directory


def load_rows(directory: Path) -> dict[str, dict]:
    """The rows an earlier, interrupted matrix left in DIR, by point key."""
    path = directory / MATRIX_FILE
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        raise StoreError(f"{directory} holds no readable {MATRIX_FILE}", "give the folder an earlier matrix wrote") from None
    if stored.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"{path}: schema_version {stored.get('schema_version')!r} is not {SCHEMA_VERSION}")
    return {row["key"]: row for row in stored.get("points", [])}


def slice_points(spec: MatrixSpec, shard: Shard | None) -> tuple[list[MatrixPoint], dict | None]:
    """The points this host runs, devices as the file names them, and the record of its slice for
    matrix.json (None: the whole matrix)."""
    points = spec.points()
    if shard is None:
        return points, None
    if "all" in spec.devices:
        raise UsageError("--shard needs the matrix's devices listed: 'all' names other devices on each host",
                         "list profile ids (pixel8) or serials in devices")
    mine = shard.take(points)
    return mine, {"index": shard.index, "count": shard.count, "points_in_matrix": len(points),
                  "points": [point.key for point in mine]}


def check_resume(directory: Path, shard: dict | None) -> None:
    """--resume DIR: DIR holds an earlier matrix of the same slice."""
    try:
        stored = json.loads((directory / MATRIX_FILE).read_text())
    except (OSError, ValueError):
        raise UsageError(f"{directory} holds no {MATRIX_FILE}", "give the folder an earlier `bench matrix` wrote") from None
    ran, asked = (None if item is None else f"{item['index']}/{item['count']}" for item in (stored.get("shard"), shard))
    if ran != asked:
        raise UsageError(f"{directory} ran {'the whole matrix' if ran is None else f'shard {ran}'}, not "
                         f"{'the whole matrix' if asked is None else f'shard {asked}'}",
                         "resume without --shard" if ran is None else f"resume with --shard {ran}")


def run_matrix(points: list[MatrixPoint], directory: Path, make_run: RunFactory, progress: Progress, *,
               title: str, resume: dict[str, dict] | None = None, shard: dict | None = None) -> MatrixResult:
    """Run every point not already complete in `resume`; devices in parallel, points of one device
    in order. `shard` (stored in matrix.json): which slice of the file's matrix these points are."""
    matrix = _MatrixRun(points, directory, make_run, progress, title, resume or {}, shard)
    matrix.run()
    ordered = matrix.ordered_rows()
    from .plots import SWEEP_PANELS, write_draft_plot, write_sweep_plot

    for axis, panels in SWEEP_PANELS.items():
        if len({getattr(p, axis) for p in points}) > 1 and any(r.get(f"{panels[0][0]}_median") for r in ordered):
            write_sweep_plot(directory / f"{axis}.png", ordered, axis)
    if any(p.draft is not None for p in points) and any(r.get("decode_tps_median") for r in ordered):
        write_draft_plot(directory / "draft.png", ordered, draft_speedups(ordered))
    return MatrixResult(directory, tuple(ordered))


class _MatrixRun:
    """The rows of one matrix, saved after every point; Ctrl-C lets no new point start and stops
    the running ones."""

    def __init__(self, points: list[MatrixPoint], directory: Path, make_run: RunFactory, progress: Progress,
                 title: str, resume: dict[str, dict], shard: dict | None = None):
        self.points, self.directory, self.make_run, self.progress, self.title = points, directory, make_run, progress, title
        self.shard, self.host = shard, socket.gethostname()
        self.rows: dict[str, dict] = dict(resume)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.active: dict[str, Target] = {}
        self.todo = [p for p in points if resume.get(p.key, {}).get("status") != "complete"]
        self.task = progress.task(f"{title}: {len(self.todo)} of {len(points)} points to run", len(points))
        self.task.advance(len(points) - len(self.todo))

    def ordered_rows(self) -> list[dict]:
        return [self.rows[p.key] for p in self.points if p.key in self.rows]

    def save(self) -> None:
        ordered = self.ordered_rows()
        atomic_write_json(self.directory / MATRIX_FILE, {"schema_version": SCHEMA_VERSION, "title": self.title,
                                                         "host": self.host, "shard": self.shard,
                                                         "points": ordered})
        atomic_write_bytes(self.directory / "matrix.md", markdown(self.title, ordered).encode())

    def run(self) -> None:
        by_device: dict[str, list[MatrixPoint]] = {}
        for point in self.todo:
            by_device.setdefault(point.device, []).append(point)
        with self.lock:
            self.save()
        if len(by_device) <= 1:
            for device_points in by_device.values():
                self.run_device(device_points)  # in this thread: Ctrl-C reaches the run, which ends it partial
        else:
            self.run_in_parallel(list(by_device.values()))
        self.task.done()

    def run_in_parallel(self, per_device: list[list[MatrixPoint]]) -> None:
        pool = ThreadPoolExecutor(max_workers=len(per_device), thread_name_prefix="bench-device")
        futures = [pool.submit(self.run_device, device_points) for device_points in per_device]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            self.stop.set()
            for target in list(self.active.values()):
                try:
                    target.abort()
                except BenchError:
                    pass
            for future in futures:
                future.result()
        finally:
            pool.shutdown(wait=True)

    def run_device(self, device_points: list[MatrixPoint]) -> None:
        for point in device_points:
            if self.stop.is_set():
                return
            row = self.run_point(point)
            if self.stop.is_set() and row["status"] != "complete":
                row["reason"] = f"interrupted (Ctrl-C): {row['reason']}"
            if (row.get("reason") or "").startswith("interrupted"):
                self.stop.set()
            with self.lock:
                self.rows[point.key] = row
                self.save()
            self.task.advance(1)

    def run_point(self, point: MatrixPoint) -> dict:
        try:
            options, target = self.make_run(point)
        except BenchError as error:
            return _row(point, None, error=str(error))
        self.active[point.key] = target
        try:
            return _row(point, run_benchmark(options, target, self.progress))
        except BenchError as error:  # a failed preflight: this point only
            return _row(point, None, error=str(error))
        finally:
            self.active.pop(point.key, None)
            target.release()


def _row(point: MatrixPoint, result: RunResult | None, error: str | None = None) -> dict:
    summary = result.summary if result else {}
    meta = _run_meta(result) if point.depth or point.backend not in (None, "cpu") else {}
    return {
        "key": point.key, "device": point.device, "selector": point.selector or point.device, "model": point.model, "scenario": point.scenario,
        "threads": point.threads, "affinity": list(point.affinity) if point.affinity is not None else None,
        "depth": point.depth, "kv_cache_bytes_at_depth": (meta.get("kv_cache") or {}).get("bytes_at_depth") if point.depth else None,
        "parallel": point.parallel, "draft": point.draft,
        # the point a draft's speed-up is taken against: the same one without the draft
        "without_draft_key": replace(point, draft=NO_DRAFT).key if point.draft is not None else None,
        "backend": point.backend,
        # a GPU point's ratio is taken against the same point on the CPU backend
        "cpu_backend_key": replace(point, backend="cpu").key if point.backend not in (None, "cpu") else None,
        "gpu_device": _gpu_device(meta) if point.backend not in (None, "cpu") else None,
        "label": point.label, "run_dir": str(result.run_dir) if result else None,
        "status": result.status if result else "failed", "reason": result.reason if result else error,
        **{key: summary.get(key) for key in ("decode_tps_median", "decode_tps_iqr", "prefill_tps_median",
                                             "prefill_tps_iqr", "ttft_ms_median", "ttft_ms_iqr", "peak_rss_bytes",
                                             "aggregate_decode_tps_median", "aggregate_decode_tps_iqr",
                                             "draft_acceptance_median")},
    }


def _run_meta(result: RunResult | None) -> dict:
    """The point's run.json, for what the row takes from it beyond the summary ({} when none)."""
    if result is None:
        return {}
    try:
        return load_run_meta(result.run_dir)
    except BenchError:
        return {}


def _gpu_device(meta: dict) -> dict | None:
    """The GPU device llama.cpp loaded the model onto, as run.json's memory.offload names it."""
    used = ((meta.get("memory") or {}).get("offload") or {}).get("used") or []
    return {"name": used[0]["name"], "software": bool(used[0].get("software"))} if used else None


def backend_ratios(rows: list[dict]) -> dict[str, float]:
    """Each GPU point's decode over that of the same point on the CPU backend (both in llama-server;
    medians over repetitions): key -> ratio."""
    cpu = {row["key"]: row.get("decode_tps_median") for row in rows if row.get("backend") == "cpu"}
    return {row["key"]: row["decode_tps_median"] / cpu[row["cpu_backend_key"]] for row in rows
            if row.get("cpu_backend_key") and row.get("decode_tps_median") and cpu.get(row["cpu_backend_key"])}


def draft_speedups(rows: list[dict]) -> dict[str, float]:
    """Each draft point's decode over that of its point without a draft (same device, model,
    scenario, threads, CPUs, depth and parallel; medians over repetitions): key -> ratio."""
    alone = {row["key"]: row.get("decode_tps_median") for row in rows if row.get("draft") == NO_DRAFT}
    return {row["key"]: row["decode_tps_median"] / alone[row["without_draft_key"]] for row in rows
            if row.get("draft") not in (None, NO_DRAFT) and row.get("decode_tps_median")
            and alone.get(row.get("without_draft_key"))}


def markdown(title: str, rows: list[dict]) -> str:
    def number(value, digits=1) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    depths = any(row.get("depth") is not None for row in rows)
    parallels = any(row.get("parallel") is not None for row in rows)
    drafts = any(row.get("draft") is not None for row in rows)
    backends = any(row.get("backend") is not None for row in rows)
    speedups, ratios = draft_speedups(rows), backend_ratios(rows)
    lines = [f"# {title}", "",
             "One run per point; medians over repetitions, spread is the IQR. Decode: (generated - 1) / "
             "first-to-last token time; prefill: prompt tokens / prompt eval time, both tokens/s."
             + (" Depth: tokens in the KV cache before each request; KV MiB: f16 K and V at that depth, "
                "from the model's GGUF shapes (not measured)." if depths else "")
             + (" Parallel: concurrent sequences, each in a llama-server slot; decode is each sequence's own rate, "
                "aggregate the tokens all of them generated per second of the steps' decode (host clock)."
                if parallels else "")
             + (" Draft: the draft model of speculative decoding (llama-server, every point of the sweep, the one "
                "without a draft too); accepted: the share of drafted tokens the model accepted; speed-up: decode "
                "with the draft over decode without it, the point that differs only in its draft (a ratio of the "
                "two runs' medians: a change within their IQRs is noise)." if drafts else "")
             + (" Backend: the ggml backend that ran the model, every point in llama-server of that backend's build; "
                "device: the GPU llama.cpp loaded it onto (software: a Vulkan implementation on the CPU, such as "
                "lavapipe, whose speed is the CPU's, never a GPU's); vs CPU: decode over the same point's on the CPU "
                "backend (a ratio of the two runs' medians)." if backends else ""), "",
             "| device | model | scenario | threads | CPUs | " + ("depth | KV MiB | " if depths else "")
             + ("parallel | aggregate t/s | " if parallels else "")
             + ("draft | accepted | speed-up | " if drafts else "")
             + ("backend | device | vs CPU | " if backends else "")
             + "decode t/s | IQR | prefill t/s | IQR | TTFT ms | peak RSS MiB | status | run |",
             "|---|---|---|---:|---|" + ("---:|---:|" if depths else "") + ("---:|---:|" if parallels else "")
             + ("---|---:|---:|" if drafts else "") + ("---|---|---:|" if backends else "")
             + "---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        cpus = "default" if row["affinity"] is None else format_cpus(tuple(row["affinity"]))
        rss, kv = row.get("peak_rss_bytes"), row.get("kv_cache_bytes_at_depth")
        depth = (f"{row.get('depth') if row.get('depth') is not None else 'scenario'} | "
                 f"{number(kv / 2**20 if kv is not None else None)} | ") if depths else ""
        parallel = (f"{row.get('parallel') if row.get('parallel') is not None else 'scenario'} | "
                    f"{number(row.get('aggregate_decode_tps_median'))} | ") if parallels else ""
        acceptance, speedup = row.get("draft_acceptance_median"), speedups.get(row["key"])
        draft = (f"{row.get('draft') or 'scenario'} | {'n/a' if acceptance is None else f'{acceptance:.0%}'} | "
                 f"{'n/a' if speedup is None else f'{speedup:.2f}x'} | ") if drafts else ""
        gpu, ratio = row.get("gpu_device"), ratios.get(row["key"])
        device = "CPU" if row.get("backend") == "cpu" else (
            f"{gpu['name']}{' (software)' if gpu['software'] else ''}" if gpu else "n/a")
        backend = (f"{row.get('backend') or 'cpu'} | {device} | "
                   f"{'n/a' if ratio is None else f'{ratio:.2f}x'} | ") if backends else ""
        lines.append(f"| {row['device']} | {row['model']} | {row['scenario']} | {row['threads'] or 'default'} | {cpus} | "
                     f"{depth}{parallel}{draft}{backend}{number(row.get('decode_tps_median'))} | {number(row.get('decode_tps_iqr'))} | "
                     f"{number(row.get('prefill_tps_median'))} | {number(row.get('prefill_tps_iqr'))} | "
                     f"{number(row.get('ttft_ms_median'))} | {number(rss / 2**20 if rss else None)} | {row['status']} | "
                     f"{Path(row['run_dir']).name if row['run_dir'] else row['reason']} |")
    best = max((r for r in rows if r.get("decode_tps_median")), key=lambda r: r["decode_tps_median"], default=None)
    if best:
        software = (best.get("gpu_device") or {}).get("software")
        lines += ["", f"Fastest decode: **{best['label']}** at {best['decode_tps_median']:.1f} tokens/s"
                  + (" (a software Vulkan device: the CPU's speed, not a GPU's)." if software else ".")]
    failed = [r for r in rows if r["status"] != "complete"]
    if failed:
        lines += ["", "Points that did not complete:", ""] + [f"- {r['label']}: {r['status']}: {r['reason']}" for r in failed]
    return "\n".join(lines) + "\n"
