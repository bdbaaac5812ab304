"""The docs cannot drift from the CLI: every `console runnable` block in README.md and docs/ is run
as written (each `$ ` line, in order, in a scratch folder, against the host or the emulated phone
behind a private adb server), and every command must succeed. Relative links must resolve."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BLOCK = re.compile(r"^```console runnable\n(.*?)^```", re.S | re.M)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def runnable_blocks() -> list[tuple[str, list[str]]]:
    found = []
    for page in PAGES:
        for index, match in enumerate(BLOCK.finditer(page.read_text())):
            commands = [line[2:] for line in match.group(1).splitlines() if line.startswith("$ ")]
            found.append((f"{page.relative_to(REPO)}#{index}", commands))
    return found


def test_there_are_runnable_blocks_in_the_readme_and_the_docs():
    pages = {name.split("#")[0] for name, _ in runnable_blocks()}
    assert "README.md" in pages and any(name.startswith("docs/") for name in pages)


@pytest.mark.slow
@pytest.mark.parametrize("name, commands", runnable_blocks(), ids=[name for name, _ in runnable_blocks()])
def test_runnable_block(name, commands, adb_server, host_runtime, smollm2_path, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for command in commands:
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, f"{name}: `{command}` exited {result.returncode}: {result.stderr[-2000:]}"


def test_relative_links_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to missing {target}"


def test_the_metrics_page_lists_every_metric_of_the_catalogue():
    from bench.metrics import CATALOGUE

    page = (REPO / "docs" / "results-and-metrics.md").read_text()
    missing = [metric.name for metric in CATALOGUE if f"| `{metric.name}` |" not in page]
    assert not missing, f"docs/results-and-metrics.md lacks: {missing}"
