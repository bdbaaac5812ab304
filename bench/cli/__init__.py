"""The `bench` command. The only package that prints or exits: it catches the BenchError tree and
prints one line; tracebacks only with --debug. One module per group of commands (as asv keeps one
per command), each parsing its arguments, calling the library and printing: run (run, ab,
matrix), compare (compare, history, report), devices (devices, sim, capture), assets (models,
scenarios, runtime); flags and output hold what they share."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Sequence

from .. import __version__
from ..errors import BenchError
from . import assets, compare, devices, run
from .flags import Parser
from .output import BarProgress, err

__all__ = ["BarProgress", "build_parser", "main"]

# (add its parser, handle it), in the order `bench --help` lists them
COMMANDS = {
    "run": (run.add_run, run.cmd_run), "ab": (run.add_ab, run.cmd_ab), "matrix": (run.add_matrix, run.cmd_matrix),
    "devices": (devices.add_devices, devices.cmd_devices), "models": (assets.add_models, assets.cmd_models),
    "scenarios": (assets.add_scenarios, assets.cmd_scenarios), "compare": (compare.add_compare, compare.cmd_compare),
    "sim": (devices.add_sim, devices.cmd_sim), "capture": (devices.add_capture, devices.cmd_capture),
    "runtime": (assets.add_runtime, assets.cmd_runtime), "history": (compare.add_history, compare.cmd_history),
    "report": (compare.add_report, compare.cmd_report),
}


def build_parser():
    parser = Parser(prog="bench", description="Benchmark and profile LLMs on Android phones and on the host.")
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_command, _ in COMMANDS.values():
        add_command(commands)
    return parser


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
        return COMMANDS[args.command][1](args)
    except BenchError as error:
        if debug:
            raise
        err.print(f"bench: {error}", markup=False, soft_wrap=True)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("bench: interrupted", markup=False)
        return 130
