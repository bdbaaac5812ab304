"""`bench models`, `bench scenarios` and `bench runtime`: what bench can run with."""

from __future__ import annotations

from rich.table import Table

from ..runtimes.build import BACKENDS
from .flags import Parser, positive_int
from .output import BarProgress, err, out, print_json


def add_models(commands) -> None:
    """`bench models [pull]`."""
    models = commands.add_parser("models", help="list catalog models, or pull one")
    models.add_argument("--json", action="store_true")
    models_sub = models.add_subparsers(dest="models_command", parser_class=Parser)
    pull = models_sub.add_parser("pull", help="download a model into the cache and verify it")
    pull.add_argument("alias")
    pull.add_argument("--force", action="store_true", help="download again even if cached")


def add_scenarios(commands) -> None:
    """`bench scenarios`."""
    scenarios = commands.add_parser("scenarios", help="list scenarios")
    scenarios.add_argument("--json", action="store_true")


def add_runtime(commands) -> None:
    """`bench runtime build|list`."""
    runtime = commands.add_parser("runtime", help="build or list llama.cpp runtimes")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", required=True, parser_class=Parser)
    runtime_build = runtime_sub.add_parser("build", help="build llama-server, llama-bench and llama-completion")
    runtime_build.add_argument("--target", required=True, choices=("host", "android-arm64", "linux-arm64"),
                               help="host; android-arm64 (NDK); linux-arm64 (static aarch64, for `bench sim --profile arm64`)")
    runtime_build.add_argument("--backend", default="cpu", choices=BACKENDS,
                               help="the GPU backend beside the CPU's: vulkan (host, android-arm64), opencl (android-arm64, Adreno)")
    runtime_build.add_argument("--ndk", help="Android NDK root (default $ANDROID_NDK_HOME)")
    runtime_build.add_argument("--src", help="a llama.cpp source tree (default: the one vendored in llama-cpp-python's sdist)")
    runtime_build.add_argument("--jobs", type=positive_int)
    runtime_build.add_argument("--arm-arch", default=None, help="GGML_CPU_ARM_ARCH for android-arm64 and linux-arm64")
    runtime_build.add_argument("--print-plan", action="store_true", help="print the cmake configuration and stop")
    runtime_sub.add_parser("list", help="list cached runtimes")


def cmd_models(args) -> int:
    from ..catalog import is_downloaded, load_catalog, lookup, model_info, model_path

    if args.models_command == "pull":
        entry = lookup(args.alias)
        with BarProgress(err) as progress:
            from ..catalog import pull

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
        print_json({"schema_version": 1, "models": rows})
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
    from ..config import known_scenarios, parse_scenario
    from ..records import to_dict

    scenarios = [parse_scenario(path) for path in known_scenarios().values()]
    if args.json:
        print_json({"schema_version": 1, "scenarios": [to_dict(s) for s in scenarios]})
        return 0
    table = Table(title="Scenarios (bench run --scenario NAME)")
    for column in ("name", "reps", "warmup", "n_predict", "prompts", "duration", "description"):
        table.add_column(column)
    for s in scenarios:
        table.add_row(s.name, str(s.repetitions), str(s.warmup), str(s.n_predict), str(len(s.prompts)),
                      f"{s.duration_s:.0f} s" if s.duration_s else "", s.description)
    out.print(table)
    return 0


def cmd_runtime(args) -> int:
    from ..catalog import cache_root
    from ..runtimes import build as builder

    cache = cache_root()
    if args.runtime_command == "list":
        found = builder.list_runtimes(cache)
        if not found:
            out.print("no runtime built yet (bench runtime build --target host)")
        for item in found:
            out.print(f"{item['target']}\t{item.get('backend') or 'cpu'}\tllama.cpp {item['llama_cpp_commit']}\t{item['path']}")
        return 0
    with BarProgress(err) as progress:
        plan = builder.plan_build(args.target, cache, src=args.src, ndk=args.ndk, jobs=args.jobs,
                                  arm_arch=args.arm_arch or builder.DEFAULT_ARM_ARCH, progress=progress,
                                  backend=args.backend)
        if args.print_plan:
            print_json({"target": plan.target, "backend": plan.backend, "source": str(plan.source), "commit": plan.commit,
                         "cmake_flags": list(plan.configure), "install_dir": str(plan.install_dir),
                         "compiler_cache": str(plan.compiler_cache) if plan.compiler_cache else None})
            return 0
        cached = builder.installed(plan)
        path = builder.build(plan, progress)
    out.print(f"{'cached' if cached else 'built'}: {path}")
    return 0
