"""Checks only a real phone can answer. Run with BENCH_DEVICE_SERIAL=<serial> pytest -m device;
skipped otherwise (CI has no phone; the emulated phone covers the code path)."""

import json
import os

import pytest

from conftest import bench_cli

SERIAL = os.environ.get("BENCH_DEVICE_SERIAL")
pytestmark = [pytest.mark.device, pytest.mark.skipif(not SERIAL, reason="no real phone (set BENCH_DEVICE_SERIAL)")]


def test_devices_lists_the_phone_with_battery_and_thermal():
    entries = json.loads(bench_cli("devices", "--json").stdout)["devices"]
    phone = next(d for d in entries if d["serial"] == SERIAL)
    assert phone["state"] == "device" and phone["abi"] == "arm64-v8a"
    assert 0 <= phone["battery"]["level_pct"] <= 100 and phone["thermal"]["sensors"]


def test_quick_run_on_the_phone(tmp_path):
    result = bench_cli("run", "--device", SERIAL, "--out", str(tmp_path), "--json", "--allow", "thermal",
                       timeout=3600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)["summary"]
    assert summary["decode_tps_median"] > 0 and summary["peak_rss_bytes"] > 0
