"""Fixed performance mode (`cmd power set-fixed-performance-mode-enabled`, Android 11+): clocks
held at a level the phone can sustain, so runs compare without boost and throttling noise. Recorded
in the device lock before it is turned on and always turned off again, also by the run that takes
over the lock of one that died with it on."""

from __future__ import annotations

from typing import Callable

from ..errors import RunFailed
from .adb import Device
from .lock import DeviceLock


class FixedPerformance:
    def __init__(self, device: Device, lock: DeviceLock, event: Callable[..., None]):
        self.device, self.lock, self.event = device, lock, event
        self.enabled = False  # as far as this run knows: what it turned on, or a dead run's record said

    def set(self, enabled: bool) -> None:
        word = "true" if enabled else "false"
        if enabled:  # recorded before it is turned on: a run killed in between leaves a record, not a phone stuck fast
            self.lock.record_fixed_performance(True)
        result = self.device.shell(f"cmd power set-fixed-performance-mode-enabled {word}", timeout=15)
        if result.returncode != 0:
            if enabled:
                self.lock.record_fixed_performance(False)
            raise RunFailed(f"fixed performance mode could not be {'enabled' if enabled else 'disabled'} on "
                            f"{self.device.serial}: {(result.stdout + result.stderr).strip()[:200] or f'exit {result.returncode}'}",
                            hint="it needs Android 11+; run without --fixed-performance")
        self.enabled = enabled
        if not enabled:
            self.lock.record_fixed_performance(False)
        self.event("phase", f"fixed performance mode {'on' if enabled else 'off'}")

    def restore(self) -> None:
        if self.enabled:
            self.set(False)

    def force_off(self) -> None:
        """Off whether or not any record says it is on (`bench devices --reset`)."""
        self.enabled = True
        self.set(False)

    def restore_stale(self) -> bool:
        """A run that died holding the phone in fixed performance mode could not turn it off; its
        owner record says so, and the run that took its lock over does it. True when it did."""
        stale = self.lock.taken_over
        if stale is None or not stale.fixed_performance:
            return False
        self.enabled = True  # as the dead run left it: set(False) turns it off
        try:
            self.set(False)
        except RunFailed:
            self.enabled = False  # it was never on (the dead run's command failed after its record)
            return False
        return True
