"""Scenario TOML -> Scenario records. Errors name the file, the key and its line."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, UsageError
from .records import NO_DRAFT, CooldownRule, PromptSpec, Scenario

SCENARIO_SCHEMA_VERSION = 1

_SCENARIO_KEYS = {
    "schema_version", "name", "description", "repetitions", "warmup", "seed", "temperature",
    "n_ctx", "n_batch", "threads", "n_predict", "ignore_eos", "prompts", "keep_history",
    "duration_s", "cooldown", "request_timeout_s", "kind", "pp", "tg", "idle_s", "depth", "parallel",
    "load_mode", "draft", "draft_max",
}
KINDS = ("generate", "llama-bench")
DEFAULT_DRAFT_MAX = 3  # llama-server's own default (--spec-draft-n-max)
MAX_DRAFT_MAX = 64
LOAD_MODES = ("mmap", "read")
# Keys added after scenarios were first hashed count in the hash only when set, so the runs of an
# unchanged scenario still match in `bench compare`.
_LATER_KEYS = {"kind": "generate", "pp": None, "tg": None, "load_mode": "mmap", "draft_max": DEFAULT_DRAFT_MAX}
_COOLDOWN_KEYS = {"mode", "max_wait_s", "idle_delta_c", "max_temp_c", "poll_s"}


def key_line(text: str, key: str, table: str | None = None) -> int | None:
    """Line (1-based) where `key = ...` is set, inside `[table]` when given; None if absent."""
    in_table = table is None
    for number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"\s*\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            in_table = table is not None and header.group(1) == table
            continue
        if in_table and re.match(rf"\s*{re.escape(key)}\s*=", line):
            return number
        if table is None and header:
            break
    return None


def load_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), f"cannot read: {error.strerror}") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as error:
        match = re.search(r"line (\d+)", str(error))
        line = int(match.group(1)) if match else (len(text.splitlines()) if "end of document" in str(error) else None)
        raise ConfigError(str(path), f"malformed TOML: {error}", line,
                          "fix the syntax at that line") from None


class _Checker:
    """Typed access to one TOML table that reports the offending key and line."""

    def __init__(self, path: Path, text: str, data: dict[str, Any], table: str | None, allowed: set[str]):
        self.path, self.text, self.data, self.table = path, text, data, table
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(allowed))}"
                self.fail(key, f"unknown key '{key}'", hint)

    def fail(self, key: str, message: str, hint: str | None = None):
        name = f"{self.table}.{key}" if self.table else key
        raise ConfigError(str(self.path), message.replace(f"'{key}'", f"'{name}'"),
                          key_line(self.text, key, self.table), hint)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False,
            minimum: float | None = None) -> Any:
        if key not in self.data:
            if required:
                raise ConfigError(str(self.path), f"missing key '{key}'", None,
                                  f"add `{key} = ...`" + (f" under [{self.table}]" if self.table else ""))
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a TOML `true` must not pass as a count.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(key, f"'{key}' must be {names}, got {type(value).__name__} {value!r}")
        if minimum is not None and value < minimum:
            self.fail(key, f"'{key}' must be >= {minimum}, got {value!r}")
        return value


def _prompts(check: _Checker, base_dir: Path) -> tuple[PromptSpec, ...]:
    raw = check.get("prompts", list, required=True)
    if not raw:
        check.fail("prompts", "'prompts' is empty", "give at least one prompt")
    prompts = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            prompts.append(PromptSpec(text=item))
            continue
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in {"text", "file", "synthetic_tokens"}:
            check.fail("prompts", f"'prompts' item {index} must be a string or one of "
                                  "{ text = \"...\" }, { file = \"path\" }, { synthetic_tokens = N }")
        kind, value = next(iter(item.items()))
        if kind == "synthetic_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                check.fail("prompts", f"'prompts' item {index}: synthetic_tokens must be an integer >= 1")
            prompts.append(PromptSpec(synthetic_tokens=value))
        elif kind == "file":
            prompt_path = (base_dir / str(value)).resolve()
            try:
                prompts.append(PromptSpec(text=prompt_path.read_text(encoding="utf-8")))
            except OSError:
                check.fail("prompts", f"'prompts' item {index}: prompt file {prompt_path} cannot be read",
                           "paths are relative to the scenario file")
        else:
            prompts.append(PromptSpec(text=str(value)))
    return tuple(prompts)


def parse_scenario(path: Path) -> Scenario:
    data, text = load_toml(path)
    check = _Checker(path, text, data, None, _SCENARIO_KEYS)
    version = check.get("schema_version", int, SCENARIO_SCHEMA_VERSION)
    if version > SCENARIO_SCHEMA_VERSION:
        check.fail("schema_version", f"'schema_version' {version} is newer than this bench understands "
                   f"({SCENARIO_SCHEMA_VERSION})", "upgrade bench")
    cooldown_data = check.get("cooldown", dict, {})
    cool = _Checker(path, text, cooldown_data, "cooldown", _COOLDOWN_KEYS)
    mode = cool.get("mode", str, "none")
    if mode not in {"none", "temperature"}:
        cool.fail("mode", f"'mode' must be 'none' or 'temperature', got {mode!r}")
    max_temp = cool.get("max_temp_c", (int, float))
    cooldown = CooldownRule(
        mode=mode,
        max_wait_s=float(cool.get("max_wait_s", (int, float), 120.0, minimum=0)),
        idle_delta_c=float(cool.get("idle_delta_c", (int, float), 3.0, minimum=0)),
        max_temp_c=None if max_temp is None else float(max_temp),
        poll_s=float(cool.get("poll_s", (int, float), 1.0, minimum=0.05)),
    )
    threads = check.get("threads", int, None, minimum=1)
    duration = check.get("duration_s", (int, float), None, minimum=0.001)
    kind = check.get("kind", str, "generate")
    if kind not in KINDS:
        check.fail("kind", f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    llama_bench = kind == "llama-bench"
    pp, tg = check.get("pp", int, None, minimum=1), check.get("tg", int, None, minimum=1)
    if not llama_bench and (pp is not None or tg is not None):
        check.fail("pp" if pp is not None else "tg", "'pp' and 'tg' are llama-bench shapes",
                   'add kind = "llama-bench", or use prompts and n_predict')
    if llama_bench and pp is None and tg is None:
        check.fail("kind", "a llama-bench scenario needs 'pp' or 'tg'", "e.g. pp = 512 and tg = 128")
    if llama_bench and duration is not None:
        check.fail("duration_s", "'duration_s' is not a llama-bench option", "use repetitions")
    depths = _sweep(check, "depth", data.get("depth", 0), depths_problem, "depth = 2048 or depth = [0, 512, 2048]")
    n_ctx, n_predict = check.get("n_ctx", int, 2048, minimum=16), check.get("n_predict", int, 64, minimum=1)
    problem = None if llama_bench else depth_room(max(depths), n_predict, n_ctx)
    if problem:
        check.fail("depth", *problem)
    if depths != (0,) and check.get("keep_history", bool, False):
        check.fail("depth", "'depth' and 'keep_history' both fill the KV cache before a request",
                   "use one: depth for a fixed context, keep_history for a chat")
    parallels = _sweep(check, "parallel", data["parallel"], parallels_problem,
                       "parallel = 4 or parallel = [1, 2, 4, 8]") if "parallel" in data else (None,)
    if parallels != (None,):
        problem = parallel_problem(kind, max(depths))
        if problem:
            check.fail("parallel", *problem)
    drafts = _drafts(check, data["draft"]) if "draft" in data else ()
    if drafts:
        problem = speculation_problem(kind, max(depths), None if parallels == (None,) else max(parallels))
        if problem:
            check.fail("draft", *problem)
    draft_max = check.get("draft_max", int, DEFAULT_DRAFT_MAX, minimum=1)
    if draft_max > MAX_DRAFT_MAX:
        check.fail("draft_max", f"'draft_max' must be from 1 to {MAX_DRAFT_MAX}, got {draft_max}",
                   f"llama-server drafts {DEFAULT_DRAFT_MAX} tokens a step by default")
    load_mode = check.get("load_mode", str, "mmap")
    if load_mode not in LOAD_MODES:
        check.fail("load_mode", f"'load_mode' must be one of {', '.join(LOAD_MODES)}, got {load_mode!r}",
                   'load_mode = "mmap" maps the file (the default), "read" copies it into memory')
    fields = dict(
        name=check.get("name", str, path.stem),
        path=str(path),
        description=check.get("description", str, ""),
        repetitions=check.get("repetitions", int, 3, minimum=1),
        warmup=check.get("warmup", int, 1, minimum=0),
        seed=check.get("seed", int, 42),
        temperature=float(check.get("temperature", (int, float), 0.0, minimum=0)),
        n_ctx=n_ctx,
        n_batch=check.get("n_batch", int, 512, minimum=1),
        threads=threads,
        n_predict=n_predict,
        ignore_eos=check.get("ignore_eos", bool, True),
        prompts=() if llama_bench and "prompts" not in data else _prompts(check, path.parent),
        keep_history=check.get("keep_history", bool, False),
        duration_s=None if duration is None else float(duration),
        cooldown=cooldown,
        request_timeout_s=float(check.get("request_timeout_s", (int, float), 600.0, minimum=0.1)),
        kind=kind, pp=pp, tg=tg,
        idle_s=float(check.get("idle_s", (int, float), 10.0, minimum=0)),
        depth=depths[0], depths=depths if len(depths) > 1 else (),
        parallel=parallels[0], parallels=parallels if len(parallels) > 1 else (),
        load_mode=load_mode,
        draft=None, drafts=drafts, draft_max=draft_max,
    )
    # The hash names the workload, so compare can match runs: paths, text and a patience limit are
    # not part of it, nor the depth, parallel sequences and draft model, which runs carry as match
    # keys of their own (as threads).
    canonical = json.dumps({k: v for k, v in fields.items() if k not in {"path", "description", "request_timeout_s", "idle_s",
                                                                       "depth", "depths", "parallel", "parallels",
                                                                       "draft", "drafts"}
                            and not (k in _LATER_KEYS and v == _LATER_KEYS[k])},
                           default=lambda o: o.__dict__, sort_keys=True)
    return Scenario(**fields, content_hash=hashlib.sha256(canonical.encode()).hexdigest())


def depth_room(depth: int, n_predict: int, n_ctx: int) -> tuple[str, str] | None:
    """(problem, fix) when a depth leaves a request no room in the context; None when it fits."""
    if depth + n_predict < n_ctx:
        return None
    return (f"depth {depth} + n_predict {n_predict} leave no room for a prompt in n_ctx {n_ctx}",
            f"raise n_ctx in the scenario above {depth + n_predict} plus the prompt's tokens")


def sweep_depths(scenario: Scenario, asked: Sequence[int | None] | None = None) -> list[int]:
    """The depths a run (or a sweep, one run each) measures: `asked` (--depth, a matrix file's
    depth), else the scenario's list, else its one depth. Each must leave a request room in n_ctx."""
    depths = [scenario.depth if depth is None else depth for depth in asked or ()] or list(scenario.depths) or [scenario.depth]
    for depth in depths:
        problem = None if scenario.kind == "llama-bench" else depth_room(depth, scenario.n_predict, scenario.n_ctx)
        if problem:
            raise UsageError(f"scenario '{scenario.name}': {problem[0]}", problem[1])
    return depths


def _counts_problem(values, what: str, minimum: int, maximum: int | None = None) -> str | None:
    """What is wrong with a sweep's list of whole numbers, or None: each within bounds, none twice."""
    bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= minimum and (maximum is None or v <= maximum)
            for v in values):
        return f"must be {what} {bounds} or a list of them"
    if len(set(values)) != len(values):
        return "repeats a value"
    return None


def depths_problem(values) -> str | None:
    """What is wrong with a list of depths (scenario, matrix file, --depth), or None."""
    return _counts_problem(values, "a number of tokens", 0)


# llama-server's slots each hold a KV cache of n_ctx; beyond this many a phone runs out of memory
# long before the figure means anything, and a typo (640 for 64) would allocate for minutes
MAX_PARALLEL = 64


def parallels_problem(values) -> str | None:
    """What is wrong with a list of concurrent-sequence counts (scenario, matrix file, --parallel)."""
    return _counts_problem(values, "a number of sequences", 1, MAX_PARALLEL)


def parallel_problem(kind: str, depth: int) -> tuple[str, str] | None:
    """(problem, fix) when a scenario cannot run concurrent sequences; None when it can."""
    if kind == "llama-bench":
        return ("'parallel' runs sequences in llama-server's slots; llama-bench has none",
                "drop parallel, or use a generate scenario (prompts and n_predict)")
    if depth:
        return ("'parallel' with 'depth' is not supported: each slot would need its own primed cache",
                "measure depth with one sequence, and parallel sequences at depth 0")
    return None


def sweep_parallels(scenario: Scenario, asked: Sequence[int | None] | None = None,
                    depths: Sequence[int] = ()) -> list[int | None]:
    """The concurrent-sequence counts a run (or a sweep) measures: `asked` (--parallel, a matrix
    file's parallel), else the scenario's list, else its one value (None: the scenario asks for
    none). `depths`: those the runs will use, none of which may be above 0 with parallel sequences."""
    values = [scenario.parallel if value is None else value for value in asked or ()] \
        or list(scenario.parallels) or [scenario.parallel]
    if values != [None]:
        problem = parallel_problem(scenario.kind, max(depths or (scenario.depth,)))
        if problem:
            raise UsageError(f"scenario '{scenario.name}': {problem[0]}", problem[1])
    return values


def drafts_problem(values) -> str | None:
    """What is wrong with a list of draft models (scenario, matrix file, --draft), or None."""
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        return "must be a catalog alias or .gguf path, or a list of them"
    if len(set(values)) != len(values):
        return "repeats a value"
    return None


def speculation_problem(kind: str, depth: int, parallel: int | None) -> tuple[str, str] | None:
    """(problem, fix) when a scenario cannot run a draft model; None when it can."""
    if kind == "llama-bench":
        return ("'draft' runs speculative decoding in llama-server; this llama-bench has no draft model",
                "drop draft, or use a generate scenario (prompts and n_predict)")
    if depth:
        return ("'draft' with 'depth' is not supported: the draft model's cache would need the same primed context",
                "measure speculative decoding at depth 0")
    if parallel is not None:
        return ("'draft' with 'parallel' is not supported: each slot would speculate on its own",
                "measure speculative decoding with one sequence")
    return None


def sweep_drafts(scenario: Scenario, asked: Sequence[str] | None = None, depths: Sequence[int] = (),
                 parallels: Sequence[int | None] = (None,)) -> list[str | None]:
    """The draft models a run (or a sweep) measures: NO_DRAFT first, then `asked` (--draft, a
    matrix file's draft) or the scenario's; [None] when none is asked for (one run, no speculative
    decoding). A draft is never measured without the model alone beside it, on the same device and
    runtime: the speed-up is the point."""
    named = [draft for draft in (asked or scenario.drafts) if draft != NO_DRAFT]
    if not named:
        return [None]
    problem = speculation_problem(scenario.kind, max(depths or (scenario.depth,)), max(
        (p for p in parallels if p is not None), default=scenario.parallel))
    if problem:
        raise UsageError(f"scenario '{scenario.name}': {problem[0]}", problem[1])
    return [NO_DRAFT, *named]


def _drafts(check: "_Checker", value) -> tuple[str, ...]:
    values = value if isinstance(value, list) else [value]
    problem = drafts_problem(values)
    if problem:
        check.fail("draft", f"'draft' {problem}: {value!r}", 'e.g. draft = "smollm2-135m"')
    return (NO_DRAFT, *(v for v in values if v != NO_DRAFT))


def _sweep(check: "_Checker", key: str, value, problem_of, example: str) -> tuple[int, ...]:
    """A scenario key that takes one number or a list of them (a sweep, one run each): `depth`
    (tokens in the KV cache before each request), `parallel` (concurrent sequences a step sends)."""
    values = value if isinstance(value, list) else [value]
    problem = problem_of(values)
    if problem:
        check.fail(key, f"'{key}' {problem}: {value!r}", f"e.g. {example}")
    return tuple(values)


def scenario_dirs() -> list[Path]:
    """Where scenario names are looked up: ./scenarios, then the one beside this package."""
    candidates = [Path.cwd() / "scenarios", Path(__file__).resolve().parent.parent / "scenarios"]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in [u.resolve() for u in unique]:
            unique.append(candidate)
    return unique


def known_scenarios() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for directory in scenario_dirs():
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
    return ", ".join(close or known[:8])


def resolve_scenario(name_or_path: str) -> Scenario:
    as_path = Path(name_or_path)
    if as_path.suffix == ".toml" or as_path.is_file():
        if not as_path.is_file():
            raise UsageError(f"scenario file {name_or_path} does not exist", "give a name from `bench scenarios` or an existing .toml path")
        return parse_scenario(as_path)
    known = known_scenarios()
    if name_or_path not in known:
        raise UsageError(f"unknown scenario '{name_or_path}'",
                         f"closest known: {closest(name_or_path, sorted(known))} (see `bench scenarios`)")
    return parse_scenario(known[name_or_path])
