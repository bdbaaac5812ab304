"""Argument types and the flag groups several commands share: bad input is one line and exit 2."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default prints usage too)
        raise UsageError(f"{self.prog}: {message}", f"see `{self.prog} --help`")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def thread_counts(text: str) -> list[int]:
    counts = [positive_int(part.strip()) for part in text.split(",")]
    if len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"'{text}' repeats a thread count")
    return counts


def _counts(text: str, what: str, problem_of) -> list[int]:
    counts = []
    for part in text.split(","):
        try:
            counts.append(int(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{part.strip()}' is not a number of {what}") from None
    problem = problem_of(counts)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}' {problem}")
    return counts


def token_counts(text: str) -> list[int]:
    from ..config import depths_problem

    return _counts(text, "tokens", depths_problem)


def sequence_counts(text: str) -> list[int]:
    from ..config import parallels_problem

    return _counts(text, "sequences", parallels_problem)


def draft_models(text: str) -> list[str]:
    from ..config import drafts_problem

    drafts = [part.strip() for part in text.split(",")]
    problem = drafts_problem(drafts)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}' {problem}")
    return drafts


def backend_names(text: str) -> list[str]:
    """--backend: one ggml backend, or several (cpu,vulkan) for a sweep on the same device."""
    from ..runtimes.build import backends_problem

    names = [part.strip() for part in text.split(",")]
    problem = backends_problem(names)
    if problem:
        raise argparse.ArgumentTypeError(f"'{text}': {problem}")
    return names


def gpu_layer_count(text: str) -> int | None:
    """--gpu-layers: a number of layers (1 or more) or "all" (None)."""
    if text.strip() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of layers or 'all'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or 'all', got {value} (0 layers on the GPU is --backend cpu)")
    return value


def cpu_list(text: str) -> tuple[int, ...]:
    from ..cpu import parse_cpus

    try:
        return parse_cpus(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def shard_slice(text: str):
    from ..matrix import parse_shard

    try:
        return parse_shard(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def server_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adb-server", action="append", metavar="HOST:PORT",
                        help="an adb server to find devices on (repeatable; default: ADB_SERVER_SOCKET, or "
                             "ANDROID_ADB_SERVER_ADDRESS and ANDROID_ADB_SERVER_PORT, or 127.0.0.1:5037)")
    parser.add_argument("--connect", action="append", metavar="HOST:PORT",
                        help="`adb connect` this network device first (Wi-Fi adb, a device farm's endpoint)")


def run_flags(parser: argparse.ArgumentParser) -> None:
    """What `bench run` and `bench matrix` share: devices, preflight, runtime and guards."""
    server_flags(parser)
    parser.add_argument("--allow", action="append", default=[], metavar="CHECK",
                        help="turn a failed preflight check into a warning")
    parser.add_argument("--runtime", type=Path, metavar="DIR",
                        help="prebuilt llama.cpp runtime for a phone (from `bench runtime build` or an extracted release)")
    parser.add_argument("--backend", type=backend_names, default=["cpu"], metavar="BACKEND[,BACKEND...]",
                        help="the ggml backend that runs the model: cpu (default), vulkan (host or phone GPU), opencl "
                             "(Adreno); a GPU backend runs in llama-server, from a `bench runtime build --backend` build, "
                             "and a run that llama.cpp did not offload fails. Several (cpu,vulkan) run a sweep on the "
                             "same device, every point in llama-server")
    parser.add_argument("--gpu-layers", type=gpu_layer_count, metavar="N|all",
                        help="layers to offload to the GPU backend (llama.cpp's -ngl; default all)")
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto",
                        help="llama.cpp weight repacking: auto (off only on an x86 build with AMX, llama.cpp issue 20824)")
    parser.add_argument("--declare-unplugged", action="store_true",
                        help="the phone runs on its battery although a supply reports online (rooted input suspend, "
                             "a data-only cable): energy figures count as valid; recorded in run.json")
    parser.add_argument("--fixed-performance", action="store_true",
                        help="phones (Android 11+): hold clocks with `cmd power set-fixed-performance-mode-enabled` "
                             "for the run, always turned off after; recorded in run.json")
    parser.add_argument("--max-temp", type=positive_float, metavar="C",
                        help="abort the run (partial) when the hottest CPU sensor passes C degrees")
    parser.add_argument("--no-correctness", action="store_true",
                        help="skip the correctness probe after the measured requests (recorded in run.json)")
    parser.add_argument("--load-times", action="store_true",
                        help="time a cold first load (the model dropped from the page cache: always on the host, with "
                             "root on a phone) and, after the measured requests, a warm reload, each with its first token")


def verdict_flags(parser) -> None:
    """What `bench compare` and `bench ab` share: threshold, output, and the gate's exit code."""
    parser.add_argument("--threshold", type=positive_float, default=5.0, help="smallest change that counts, in %% (default 5)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the comparison plot here")
    parser.add_argument("--fail-on-regression", nargs="?", const=-1.0, type=positive_float, metavar="PCT",
                        help="exit 1 when any metric regressed (PCT, if given, sets the threshold)")
    parser.add_argument("--strict", action="store_true",
                        help="with --fail-on-regression: a suspected regression (within run-to-run noise) fails too")
    parser.add_argument("--gate", metavar="METRICS",
                        help="the metrics whose regression fails --fail-on-regression: a comma list or 'all' (default: "
                             "prefill_tps,decode_tps,ttft_ms; the rest are reported)")


def adb_servers_of(args, also: tuple[str, ...] = ()) -> list:
    from ..targets import adb_servers

    return adb_servers([*also, *(getattr(args, "adb_server", None) or [])])
