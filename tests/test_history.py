"""`bench history`: every metric across runs with its noise band, as PNGs and a static page that a
real headless browser (Debian's Chromium) renders with all its images."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import bench_cli
from synth import noisy, write_run


def _runs(root: Path) -> list[Path]:
    dirs = []
    for index, median in enumerate([60.0, 61.0, 59.5, 45.0]):  # the last one regressed
        run_dir = write_run(root, noisy(median, 5, 0.02, seed=index), power_w=2.0, name=f"r{index}")
        meta = json.loads((run_dir / "run.json").read_text())
        meta["started_at"] = f"2026-11-0{index + 1}T10:00:00+00:00"
        meta["harness"]["git_commit"] = f"{index}" * 40
        (run_dir / "run.json").write_text(json.dumps(meta))
        dirs.append(run_dir)
    return dirs


def test_history_series_bands_and_files(tmp_path: Path):
    _runs(tmp_path / "results")
    result = bench_cli("history", str(tmp_path / "results"), "--by", "commit")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results" / "history"
    stored = json.loads((out / "history.json").read_text())
    assert stored["schema_version"] == 1 and stored["by"] == "commit" and len(stored["series"]) == 1
    points = next(iter(stored["series"].values()))
    assert [p["commit"] for p in points] == [f"{i}" * 9 for i in range(4)]
    medians = [p["decode_tps"][1] for p in points]
    low, high = points[2]["decode_tps"][0], points[2]["decode_tps"][2]
    assert low < medians[2] < high and medians[3] < low  # the regression leaves the band, the noise does not
    for metric in ("decode_tps", "prefill_tps", "ttft_ms", "peak_rss_bytes", "j_per_token"):
        assert (out / f"history_{metric}.png").stat().st_size > 1000, metric
    missing = bench_cli("history", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (./dev.sh test installs it)")
def test_history_page_renders_in_headless_chromium(tmp_path: Path):
    _runs(tmp_path / "results")
    assert bench_cli("history", str(tmp_path / "results")).returncode == 0
    page = (tmp_path / "results" / "history" / "history.html").resolve()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="5"' in dom and 'data-images-loaded="5"' in dom  # every plot loaded and decoded
    assert dom.count('class="run"') == 4 and "Energy per token" in dom
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
