"""One run per device: a lock on the device itself, so two hosts (or two terminals) sharing a
phone cannot kill each other's llama-server or mix their heat into each other's numbers.

The lock is a directory (mkdir is atomic) holding owner.json: host, pid, run, since, and a
holder: a tiny shell the owning run keeps open over adb, whose command line carries a random
token. adbd ends that shell when the owner's connection goes (bench killed, cable pulled, adb
server restarted, phone rebooted), so a lock whose holder no longer runs is stale, on any host,
and the next run takes it over: atomically (see `take_over`), and turning off the fixed performance
mode its owner record says the dead run left on."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BenchError
from .adb import AdbFailure, Device, ShellStream

LOCK_DIR = "/data/local/tmp/bench/lock"
HOLDER_SCRIPT = "/data/local/tmp/bench/run/lock-holder.sh"
# Reads stdin until the owner's adb stream closes; the token in its argv names the owner.
HOLDER_TEXT = "echo PID $$\nwhile read -r _; do :; done\n"
ACQUIRING_GRACE_S = 30  # a lock dir without owner.json is another run's acquire in progress


class DeviceBusy(BenchError):
    """Another run holds the device (exit 2: nothing was written)."""


@dataclass(frozen=True)
class LockOwner:
    host: str
    pid: int
    run: str
    since: float
    token: str
    holder_pid: int
    fixed_performance: bool = False  # the phone was left in fixed performance mode by this run

    @classmethod
    def from_json(cls, text: str) -> "LockOwner | None":
        try:
            data = json.loads(text)
            owner = cls(str(data["host"]), int(data["pid"]), str(data["run"]), float(data["since"]),
                        str(data["token"]), int(data["holder_pid"]), bool(data.get("fixed_performance", False)))
        except (ValueError, KeyError, TypeError):
            return None
        # These two reach a device shell: only hex and digits pass.
        return owner if re.fullmatch(r"[0-9a-f]{16,64}", owner.token) and owner.holder_pid > 0 else None

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"run '{self.run}' of pid {self.pid} on host {self.host}, since {started}"


class DeviceLock:
    def __init__(self, device: Device, run_label: str):
        self.device, self.run_label = device, run_label
        self.token = secrets.token_hex(16)
        self.since = time.time()
        self._holder: ShellStream | None = None
        self.holder_pid = 0
        self.held = False
        self._made = False  # this run's mkdir made the lock dir
        self.fixed_performance = False
        self.taken_over: LockOwner | None = None  # the stale owner whose lock this run removed

    def holder_alive(self, owner: LockOwner) -> bool:
        return self.device.process_runs(owner.holder_pid, owner.token)

    def owner(self) -> tuple[LockOwner | None, float | None]:
        """The lock's owner (None if it has no readable owner.json) and the lock dir's age in s."""
        out = self.device.shell(f"cat {LOCK_DIR}/owner.json 2>/dev/null; echo; echo AGE $(( $(date +%s) - $(stat -c %Y {LOCK_DIR} 2>/dev/null || date +%s) ))",
                                timeout=10).stdout
        body, _, age_line = out.rpartition("AGE ")
        try:
            age = float(age_line.strip())
        except ValueError:
            age = None
        return LockOwner.from_json(body.strip()), age

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale one was taken over (its owner record is then
        in `taken_over`). Raises DeviceBusy when a live run holds it. On any error nothing of ours
        is left: neither the holder shell nor a half-made lock."""
        try:
            return self._acquire()
        except BaseException:
            self._abandon()
            raise

    def _acquire(self) -> str | None:
        with tempfile.TemporaryDirectory() as scratch:
            script = Path(scratch) / "lock-holder.sh"
            script.write_text(HOLDER_TEXT)
            self.device.shell(f"mkdir -p {HOLDER_SCRIPT.rsplit('/', 1)[0]}", check=True, timeout=10)
            self.device.push(script, HOLDER_SCRIPT, timeout=30, mode=0o644)
        self._holder = self.device.open_shell_stream(f"exec sh {HOLDER_SCRIPT} {self.token}")
        first = (self._holder.read_stdout() or b"").decode(errors="replace").split()
        if first[:1] != ["PID"] or not first[1:2] or not first[1].isdigit():
            raise AdbFailure("the device lock's holder did not start", serial=self.device.serial)
        self.holder_pid = int(first[1])
        note = None
        for _ in range(5):
            taken = self.device.shell(f"mkdir {LOCK_DIR} 2>/dev/null && echo taken", timeout=10).stdout.strip()
            if taken == "taken":
                self._made = True
                self._write_owner()
                self.held = True
                return note
            owner, age = self.owner()
            if owner is None:
                if age is not None and age < ACQUIRING_GRACE_S:
                    time.sleep(1)  # another run is between its mkdir and its owner.json
                    continue
                note = "took over a device lock with no owner (left by an interrupted acquire)"
            elif self.holder_alive(owner):
                raise DeviceBusy(f"device {self.device.serial} is in use by {owner.describe()}",
                                 "wait for that run to finish (a lock whose run died is taken over automatically)")
            else:
                note = f"took over a stale device lock: {owner.describe()} (its adb session is gone)"
                if self.take_over(owner):
                    self.taken_over = owner
                continue
            self.take_over(None)
        raise DeviceBusy(f"could not take the device lock on {self.device.serial} after 5 tries",
                         "another run is starting on it; retry in a minute")

    def take_over(self, stale: LockOwner | None) -> bool:
        """Remove a stale lock, atomically against every other run that found it stale: the claim is
        a mkdir named after the stale owner's token (or, with no owner, the lock's mtime), so one run
        alone wins it, and the winner removes the lock only if it still names that owner: a run that
        lost the race never removes the fresh lock its winner made. True when this run removed it."""
        if stale is None:
            stamp = self.device.shell(f"stat -c %Y {LOCK_DIR} 2>/dev/null", timeout=10).stdout.strip()
            if not stamp.isdigit():
                return False
            claim, still = f"{LOCK_DIR}.takeover.none-{stamp}", f"[ ! -e {LOCK_DIR}/owner.json ] && [ \"$(stat -c %Y {LOCK_DIR})\" = {stamp} ]"
        else:
            claim, still = f"{LOCK_DIR}.takeover.{stale.token}", f"grep -q {stale.token} {LOCK_DIR}/owner.json 2>/dev/null"
        out = self.device.shell(f"mkdir {claim} 2>/dev/null || exit 0; "
                                f"if {still}; then rm -rf {LOCK_DIR} && echo removed; fi; rmdir {claim}", timeout=20).stdout
        return out.strip() == "removed"

    def _write_owner(self) -> None:
        owner = {"schema_version": 1, "host": socket.gethostname(), "pid": os.getpid(), "run": self.run_label,
                 "since": self.since, "token": self.token, "holder_pid": self.holder_pid,
                 "fixed_performance": self.fixed_performance}
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "owner.json"
            path.write_text(json.dumps(owner))
            # a temp name, then mv: a reader never sees half a record
            self.device.push(path, f"{LOCK_DIR}/owner.json.{self.token}", timeout=30, mode=0o644)
        self.device.shell(f"mv {LOCK_DIR}/owner.json.{self.token} {LOCK_DIR}/owner.json", check=True, timeout=10)

    def record_fixed_performance(self, enabled: bool) -> None:
        """The owner record says whether this run holds the phone in fixed performance mode, so a
        run that takes over after this one died turns it off (a dead run cannot)."""
        if self.held and enabled != self.fixed_performance:
            self.fixed_performance = enabled
            self._write_owner()

    def _abandon(self) -> None:
        try:
            if self._made and not self.held:
                self.device.shell(f"grep -q {self.token} {LOCK_DIR}/owner.json 2>/dev/null || "
                                  f"[ ! -e {LOCK_DIR}/owner.json ] && rm -rf {LOCK_DIR}; true", timeout=15)
        except AdbFailure:
            pass  # the device went away: the lock it holds is stale, and taken over later
        finally:
            self._close_holder()

    def release(self) -> None:
        """Remove the lock if it is still ours, then end the holder. Safe to call twice."""
        try:
            if self.held:
                self.device.shell(f"grep -q {self.token} {LOCK_DIR}/owner.json 2>/dev/null && rm -rf {LOCK_DIR}; true",
                                  timeout=15)
                self.held = False
        finally:
            self._close_holder()

    def leave_as_record(self) -> None:
        """End the holder but keep the lock and its owner record: a lock whose holder is gone is
        stale, and the run that takes it over undoes what the record says this run left on."""
        self.held = False
        self._close_holder()

    def _close_holder(self) -> None:
        if self._holder is not None:
            self._holder.close()
            self._holder = None


def live_lock(device: Device) -> LockOwner | None:
    """The owner of a live lock on the device, or None (no lock, or a stale one)."""
    probe = DeviceLock(device, "probe")
    owner, _ = probe.owner()
    return owner if owner is not None and probe.holder_alive(owner) else None
