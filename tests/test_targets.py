"""Issue 24: what a run runs on is decided in bench.targets, callable without argparse: the host,
phones found through adb servers, and the build each one runs."""

import pytest

from bench.errors import UsageError
from bench.targets import HOST, TargetChoice, adb_servers, device_ids, open_target


def test_the_host_is_a_target_without_adb(tmp_path):
    assert device_ids([HOST], adb_servers()) == {HOST: None}
    label, target = open_target(TargetChoice(model="smollm2-135m", scenario="quick"))
    assert label == HOST and target.__class__.__name__ == "HostTarget"
    with pytest.raises(UsageError, match="--fixed-performance needs a phone"):
        open_target(TargetChoice(model="smollm2-135m", scenario="quick", fixed_performance=True))


def test_phones_on_two_servers_get_the_build_their_cpu_runs(start_sim, arm64_runtime, dotprod_runtime, adb_server):
    """An x86_64 phone gets the host build, an arm64 phone without i8mm the dotprod build; two
    servers named (the same one twice here) make ids server/serial."""
    x86 = start_sim()
    arm = start_sim(profile="arm64", settings=("emulation.qemu_cpu=cortex-a76",))
    servers = adb_servers([f"127.0.0.1:{adb_server}"])
    found = device_ids([x86.serial, arm.serial, HOST], servers)
    assert list(found) == [HOST, x86.serial, arm.serial]
    choice = TargetChoice(model="smollm2-135m", scenario="quick")
    for serial, abi, arch in ((x86.serial, "x86_64", None), (arm.serial, "arm64-v8a", "armv8.2-a+dotprod")):
        label, target = open_target(choice, found[serial])
        try:
            assert target.runtime.meta["abi"] == abi and target.runtime.meta.get("arm_arch") == arch, target.runtime.meta
            assert label == target.profile.id
        finally:
            target.release()
    named_twice = device_ids([x86.serial], servers * 2)
    assert list(named_twice) == [f"{servers[0].label}/{x86.serial}"]
