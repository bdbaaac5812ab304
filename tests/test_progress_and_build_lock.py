"""Issue 20.10: a phone runtime built inside `bench ab` or a matrix opened a progress bar inside a
live one (rich raised LiveError); two matrix devices could build the same variant at once."""

import io
import threading
import time
from pathlib import Path

from rich.console import Console

from bench.cli import BarProgress
from bench.runtimes.build import build_lock


def test_a_progress_opened_inside_a_live_one_adds_its_bars_to_it():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with BarProgress(console) as outer:
        first = outer.task("A/B: 8 pairs", 8)
        with BarProgress(console) as inner:  # as a phone runtime's build inside `bench ab` once did
            compile_task = inner.task("compile llama.cpp", 100, "%")
            compile_task.update(completed=50)
            compile_task.done()
        first.advance(1)
        assert [task.description for task in outer.bar.tasks] == ["A/B: 8 pairs", "compile llama.cpp"]
    with BarProgress(console) as again:  # the console is free once the outer one closed
        again.task("next").done()
        assert [task.description for task in again.bar.tasks] == ["next"]


def test_one_build_of_a_variant_at_a_time(tmp_path: Path):
    install_dir = tmp_path / "runtimes" / "0c1e57098-linux-arm64-i8mm"
    held: list[tuple[str, float, float]] = []

    def builder(name: str) -> None:
        with build_lock(install_dir):
            started = time.monotonic()
            time.sleep(0.3)
            held.append((name, started, time.monotonic()))

    threads = [threading.Thread(target=builder, args=(f"device{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    (_, _, first_end), (_, second_start, _) = sorted(held, key=lambda item: item[1])
    assert len(held) == 2 and second_start >= first_end  # the second waited for the first to finish
