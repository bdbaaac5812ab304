"""`bench compare`, `bench history` and `bench report`: stored runs read back, judged and shown."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from .flags import verdict_flags
from .output import err, out, print_json


def add_compare(commands) -> None:
    """`bench compare`: run sets against a base."""
    compare = commands.add_parser("compare", help="compare run sets: did head get slower, hotter, hungrier?")
    compare.add_argument("paths", nargs="+", type=Path, metavar="RUNS",
                         help="BASE HEAD [MORE...]: run directories or folders of runs (only heads with --baseline)")
    compare.add_argument("--baseline", metavar="NAME", help="use RESULTS/baselines/NAME as the base")
    compare.add_argument("--results", type=Path, default=Path("results"),
                         help="results root for --baseline and for the run-to-run noise of earlier runs (default results/)")
    compare.add_argument("--ignore", action="append", default=[], choices=("device", "model", "scenario", "runtime", "threads", "affinity", "fixed_performance", "repack"),
                         help="compare even though this match key differs (e.g. two models on purpose)")
    verdict_flags(compare)


def add_history(commands) -> None:
    """`bench history`."""
    history = commands.add_parser("history", help="each metric across runs (by date or commit) with its noise band")
    history.add_argument("path", type=Path, help="a folder of runs (results/)")
    history.add_argument("--by", choices=("date", "commit"), default="date")
    history.add_argument("--out", type=Path, help="where history.html and its PNGs go (default PATH/history)")


def add_report(commands) -> None:
    """`bench report`."""
    report = commands.add_parser("report", help="regenerate report.md and plots from a stored run")
    report.add_argument("run_dir", type=Path)


# -- commands ---------------------------------------------------------------------------------


def stored_comparisons(args, paths: list[Path], threshold: float):
    from ..comparisons import compare_stored, gate_metrics

    return compare_stored(paths, threshold=threshold, ignore=args.ignore, gate=gate_metrics(getattr(args, "gate", None)),
                          results=getattr(args, "results", Path("results")))


def report_comparisons(args, comparisons) -> int:
    """Print (and plot) comparisons; the exit code of the gate."""
    if not any(c.comparable for c in comparisons):
        raise UsageError(f"runs are not comparable: {comparisons[0].mismatches[0]}",
                         "compare runs of the same device, model, scenario, runtime, threads, CPU set, clocks and repacking, or pass --ignore KEY")
    from ..compare import markdown, to_json

    if args.plot:
        from ..plots import write_compare_plot

        write_compare_plot(args.plot, comparisons)
    if args.format == "json":
        print_json(to_json(comparisons))
    else:
        sys.stdout.write(markdown(comparisons))
    failed = any(c.regressed or (args.strict and c.suspected) for c in comparisons)
    return 1 if args.fail_on_regression is not None and failed else 0


def check_verdict_flags(args) -> None:
    if args.strict and args.fail_on_regression is None:
        raise UsageError("--strict only changes what fails --fail-on-regression, which is not given",
                         "add --fail-on-regression, or drop --strict")
    from ..comparisons import gate_metrics

    gate_metrics(getattr(args, "gate", None))


def threshold_of(args) -> float:
    return (args.fail_on_regression if args.fail_on_regression and args.fail_on_regression > 0 else args.threshold) / 100


def cmd_compare(args) -> int:
    check_verdict_flags(args)
    if args.baseline:
        base_path = args.results / "baselines" / args.baseline
        if not base_path.exists():
            raise UsageError(f"no baseline '{args.baseline}' at {base_path}",
                             f"save one with `mkdir -p {base_path.parent} && cp -r RUN_DIR {base_path}`")
        paths = [base_path, *args.paths]
    else:
        paths = list(args.paths)
    return report_comparisons(args, stored_comparisons(args, paths, threshold_of(args)))


def cmd_history(args) -> int:
    from ..history import write_history

    page = write_history(args.path, args.out or args.path / "history", args.by)
    out.print(f"History: {page}")
    return 0


def cmd_report(args) -> int:
    from ..render import write_report
    from ..store import persist_settled_status

    if persist_settled_status(args.run_dir):
        err.print(f"bench: {args.run_dir} was left 'running' by a bench process that is gone: marked failed",
                  markup=False, soft_wrap=True)
    path = write_report(args.run_dir)
    out.print(f"Report: {path}")
    return 0
