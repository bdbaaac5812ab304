"""Parsers on every real capture in tests/data/android (copied from shared/fixtures/android)."""

import pytest
from pathlib import Path


from bench import parse

DATA = Path(__file__).resolve().parent / "data" / "android"


def read(name: str) -> str:
    return (DATA / name).read_text()


def test_every_capture_is_covered_by_a_parser():
    captures = {p.name for p in DATA.glob("*.txt")}
    assert len(captures) == 23
    for name in captures:
        text = read(name)
        if "dumpsys-battery" in name:
            assert parse.parse_dumpsys_battery(text).level_pct is not None
        elif "thermalservice" in name:
            assert parse.parse_thermalservice(text).sensors
        elif "uevent" in name:
            assert parse.parse_uevent(text)["CAPACITY"]
        elif "getprop" in name:
            assert parse.parse_getprop(text)["ro.product.device"] == "shiba"
        elif "proc-meminfo" in name:
            assert parse.parse_meminfo(text)["MemAvailable"] > 0
        elif "proc-self-status" in name:
            assert parse.parse_proc_status(text)["VmRSS"] == 476 * 1024
        elif "dumpsys-meminfo" in name:
            parse.parse_dumpsys_meminfo_total_kb(text)
        elif "cpufreq" in name:
            assert parse.parse_cpufreq_topology(text)
        elif "kgsl-gpu" in name:  # gpubusy, gpu_busy_percentage (their values: tests/test_gpu.py)
            assert parse.parse_gpu_busy(text) is not None
        elif "devfreq-grep" in name:
            assert parse.parse_devfreq_listing(text)["cur_freq"].isdigit()
        elif "devfreq" in name:  # cat outputs of devfreq files: the frequency table, the clocks
            assert parse.parse_frequencies_hz(text.splitlines()[-1])
        elif "cpuinfo" in name or name.startswith("excerpt_ps"):
            continue  # not parsed by the harness (ps/cpuinfo facts come from getprop and sysfs)
        else:
            raise AssertionError(f"no parser claims {name}")


def test_battery_pixel_c_charging_on_ac():
    report = parse.parse_dumpsys_battery(read("dumpsys-battery_pixel-c-dragon_android7_syzkaller-79.txt"))
    assert (report.level_pct, report.status, report.plugged) == (19.0, "charging", "ac")
    assert report.voltage_v == 3.764 and report.temperature_c == 27.5 and report.charge_counter_uah is None


def test_battery_samsung_extras_are_ignored():
    report = parse.parse_dumpsys_battery(read("dumpsys-battery_samsung-oneui_zebrunner-mcloud-device-150.txt"))
    assert (report.level_pct, report.status, report.plugged) == (100.0, "full", "usb")
    assert report.charge_counter_uah == 2967000 and report.current_ma_vendor == 0
    assert report.temperature_c == 30.9 and report.voltage_v == 4.312


def test_battery_android14_and_emulator():
    a14 = parse.parse_dumpsys_battery(read("dumpsys-battery_android14plus-capacity-level_clusterfuzz-pr4327.txt"))
    assert (a14.status, a14.plugged, a14.temperature_c) == ("not_charging", "ac", 18.0)
    emulator = parse.parse_dumpsys_battery(read("dumpsys-battery_likely-emulator_pre-android7_appium-adb-133.txt"))
    assert emulator.level_pct == 89 and emulator.voltage_v is None and emulator.temperature_c is None


def test_battery_mah_counter_is_scaled():
    text = "Current Battery Service state:\n  level: 50\n  scale: 100\n  Charge counter: 2400\n"
    assert parse.parse_dumpsys_battery(text).charge_counter_uah == 2_400_000


def test_thermal_pixel_reads_current_hal_only_and_drops_limits():
    report = parse.parse_thermalservice(read("dumpsys-thermalservice_pixel-tensor-gs101-class_thermalhal2_skia-buildbot.txt"))
    assert report.status == 0 and report.hal_connected is True
    names = {s.name: s for s in report.sensors}
    assert "soft_ocp_gpu" not in names and "vdroop1" not in names and "battery_cycle" not in names
    assert names["TPU"].celsius == 25.000002  # the current section, not the cached 37.0
    assert names["LITTLE"].type == "cpu" and names["battery"].type == "battery"
    assert all(s.celsius < 150 for s in report.sensors)


def test_thermal_samsung_eight_space_indent():
    report = parse.parse_thermalservice(read("dumpsys-thermalservice_samsung-galaxy-a52-5g_android12_android-stackexchange-246774.txt"))
    names = {s.name: s.celsius for s in report.sensors}
    assert names["AP"] == 25.6 and names["BAT"] == 23.8 and report.hal_connected


def test_thermal_aidl_banner_and_status():
    text = ("Thermal Status: 3\nHAL Ready: true\nHAL connection:\n\tThermalHAL AIDL 3  connected: yes\n"
            "Current temperatures from HAL:\n\tTemperature{mValue=71.5, mType=0, mName=BIG, mStatus=3}\n")
    report = parse.parse_thermalservice(text)
    assert report.status == 3 and report.hal_connected and report.sensors[0].celsius == 71.5


def test_uevent_variants():
    pixel = parse.parse_uevent(read("power-supply-battery_uevent_pixel8-shiba_custom-kernel_kerneltoast-zuma-4.txt"))
    assert pixel["CURRENT_NOW"] == "-268750" and pixel["STATUS"] == "Not charging"
    xiaomi = parse.parse_uevent(read("acc-info-battery-uevent_xiaomi-mi8_android9-miui10_charging-negative-current_AccA-27.txt"))
    assert xiaomi["STATUS"] == "Charging" and xiaomi["CURRENT_NOW"] == "-326171"


def test_current_normalisation():
    assert parse.current_unit_scale([-268750, -300000])[0] == 1e-6
    assert parse.current_unit_scale([-450, 300])[0] == 1e-3  # Samsung-style mA
    assert parse.current_unit_scale([5], pinned="uA")[0] == 1e-6
    # Xiaomi: negative while charging, so negative is not "discharging" there; the profile pins it
    assert parse.current_discharge_sign([-326171], discharging=False, pinned="positive_discharge")[0] == 1
    assert parse.current_discharge_sign([-268750, -250000], discharging=True)[0] == -1
    assert parse.current_discharge_sign([410000, 390000], discharging=True)[0] == 1
    assert parse.current_discharge_sign([], discharging=None)[1].startswith("assumed")


def test_thermal_zone_units_and_placeholders():
    assert parse.thermal_zone_celsius("cpu-0-0", "44000") == 44.0
    assert parse.thermal_zone_celsius("battery", "29") == 29.0
    assert parse.thermal_zone_celsius("xo-therm", "-40000") is None
    assert parse.thermal_zone_celsius("ocp_cpu1", "6900") is None
    assert parse.thermal_zone_celsius("soc", "19") is None


def test_meminfo_status_and_dumpsys_meminfo():
    meminfo = parse.parse_meminfo(read("proc-meminfo_device-unknown-arm64-3GB_aosp-libmeminfo-test.txt"))
    assert meminfo["MemTotal"] == 3019740 * 1024 and meminfo["MemAvailable"] == 2546560 * 1024
    status = parse.parse_proc_status(read("docexample_proc-self-status_linux-kernel-proc-rst.txt"))
    assert status["VmHWM"] == 476 * 1024 and status["VmSwap"] == 0
    native = parse.parse_dumpsys_meminfo_total_kb(read("excerpt_dumpsys-meminfo-pid_native-carwatchdogd_aaos-emulator.txt"))
    assert native == {"pss_kb": 3792, "rss_kb": 8580}
    assert parse.parse_dumpsys_meminfo_total_kb(read("dumpsys-meminfo-pid-not-found_aaos-emulator.txt")) is None
    java = parse.parse_dumpsys_meminfo_total_kb(read("excerpt_dumpsys-meminfo-pid_system-server-java_aaos-emulator.txt"))
    assert java and java["pss_kb"] > 0


def test_pixel8_cpufreq_clusters():
    clusters = parse.parse_cpufreq_topology(read("reconstructed-cpufreq-topology-sysfs_pixel8-shiba-tensor-g3_pytorch-cpuinfo-mock.txt"))
    assert [c.cpus for c in clusters] == [(0, 1, 2, 3), (4, 5, 6, 7), (8,)]
    assert [c.max_khz for c in clusters] == [1704000, 2367000, 2914000]


def test_getprop_pixel8():
    props = parse.parse_getprop(read("reconstructed-getprop_pixel8-shiba_android14-userdebug_pytorch-cpuinfo-mock.txt"))
    assert props["ro.product.device"] == "shiba" and props["ro.product.cpu.abi"] == "arm64-v8a"


def test_df():
    toybox = "Filesystem     1K-blocks    Used Available Use% Mounted on\n/dev/block/dm-8 115247656 4829832 110286752   5% /data\n"
    assert parse.parse_df_available_bytes(toybox) == 110286752 * 1024
    assert parse.parse_df_available_bytes("garbage") is None


def test_smaps_rollup_pss():
    from bench.parse import parse_smaps_rollup

    text = ("00400000-7ffd5b3fe000 ---p 00000000 00:00 0                  [rollup]\n"
            "Rss:              884516 kB\nPss:              462713 kB\nPss_Anon:          21988 kB\n"
            "Pss_File:         440725 kB\nShared_Clean:     843428 kB\nSwap:                  0 kB\n")
    values = parse_smaps_rollup(text)
    assert values["Pss"] == 462713 * 1024 and values["Rss"] == 884516 * 1024 and values["Pss_File"] == 440725 * 1024
    assert parse_smaps_rollup("") == {}


# The PowerStats HAL's dump, laid out with the HAL's own format strings (AOSP hardware/google/pixel
# powerstats/PowerStatsAidl.cpp: "  %32s   %14.2f mWs (%14.2f)"); note "Elapsed time" shares its line
# with the header.
POWER_STATS_DELTA = (
    "\n============= PowerStats HAL 2.0 energy meter ==============\n"
    "Elapsed time: 2003 ms" + "  %32s   %18s (%14s)\n" % ("Channel", "Cumulative Energy", "Delta   ")
    + "".join("  %32s   %14.2f mWs (%14.2f)\n" % row for row in (
        ("[S2M_VDD_CPUCL2]:CPU(BIG)", 5123456.25, 1500.5), ("[S3M_VDD_CPUCL1]:CPU(MID)", 2100000.0, 700.25),
        ("[S4M_VDD_CPUCL0]:CPU(LITTLE)", 900000.5, 120.0), ("[S1M_VDD_MIF]:MIF", 1800000.0, 410.0),
        ("[S8S_VDD_G3D_L2]:GPU", 400000.0, 3.0), ("[VSYS_PWR_DISPLAY]:Display", 7000000.0, 0.0)))
    + "========== End of PowerStats HAL 2.0 energy meter ==========\n"
    "\n============= PowerStats HAL 2.0 state residencies ==============\n"
    "  ignored   lines   1 ms\n")


def test_power_stats_energy_meter():
    from bench.parse import parse_power_stats, rail_group

    reading = parse_power_stats(POWER_STATS_DELTA)
    assert reading.elapsed_ms == 2003 and len(reading.channels) == 6
    assert reading.channels["[S2M_VDD_CPUCL2]:CPU(BIG)"] == pytest.approx(5123.45625)  # mWs -> J
    groups = {name: rail_group(name) for name in reading.channels}
    assert groups["[S2M_VDD_CPUCL2]:CPU(BIG)"] == "cpu_big" and groups["[S4M_VDD_CPUCL0]:CPU(LITTLE)"] == "cpu_little"
    assert groups["[S1M_VDD_MIF]:MIF"] == "memory" and groups["[S8S_VDD_G3D_L2]:GPU"] == "gpu"
    assert groups["[VSYS_PWR_DISPLAY]:Display"] is None
    assert parse_power_stats("Can't find service: android.hardware.power.stats.IPowerStats/default\n") is None
