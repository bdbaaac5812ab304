"""Compare plus report on 2 x 100 stored runs holding 1,000,000 samples in all (goal: under 2 s).
Writes the synthetic runs once into a temp folder, then times `bench compare` (load, statistics,
Markdown) in-process and as the CLI.

    .venv/bin/python benchmarks/compare_speed.py [--runs 100] [--samples 1000000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from synth import noisy, write_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100, help="runs per side")
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples over both sides")
    parser.add_argument("--repetitions", type=int, default=5)
    args = parser.parse_args()
    per_rep = max(2, args.samples // (2 * args.runs * args.repetitions * 2))  # rss + power rows per sample time
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        for index in range(args.runs):
            write_run(root / "base", noisy(50, args.repetitions, 0.03, index), power_w=3.0, samples_per_rep=per_rep, name=f"b{index}")
            write_run(root / "head", noisy(47, args.repetitions, 0.03, 10_000 + index), power_w=3.1, samples_per_rep=per_rep, name=f"h{index}")
        rows = sum(len(p.read_text().splitlines()) - 2 for p in root.rglob("samples.csv"))
        print(f"wrote 2 x {args.runs} runs, {rows:,} samples, in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "bench.cli", "compare", str(root / "base"), str(root / "head")],
                                cwd=ROOT, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(result.stderr)
        print(result.stdout.splitlines()[0])
        print(f"bench compare (CLI, including interpreter start): {elapsed:.2f} s; goal < 2 s; ratio to goal {elapsed / 2:.2f}")


if __name__ == "__main__":
    main()
