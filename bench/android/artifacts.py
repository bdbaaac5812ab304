"""The artifact cache under /data/local/tmp/bench: the model and the runtime's binary, each pushed
once per content (device names come from hashes, never from file names, so nothing a user named
reaches a device shell), checked on the device before it is used, and kept for later runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..catalog import cached_sha256
from ..errors import RunFailed
from ..progress import Progress
from ..records import ModelInfo
from .adb import AdbFailure, Device


@dataclass(frozen=True)
class Artifact:
    kind: str  # model | draft | runtime
    local: Path
    sha256: str
    remote: str


def artifacts(root: str, model: ModelInfo, binary: Path | None) -> list[Artifact]:
    """The model, its draft model if any, and (when there is one) the runtime's binary, each with
    its path on the device (models by content, so a draft that is the model itself is one file)."""
    items = [Artifact("model", Path(model.path), model.sha256, f"{root}/models/{model.sha256[:32]}.gguf")]
    if model.draft is not None:  # the same file as the model's is one push, kept under both names
        items.append(Artifact("draft", Path(model.draft.path), model.draft.sha256,
                              f"{root}/models/{model.draft.sha256[:32]}.gguf"))
    if binary is not None:
        digest = cached_sha256(binary)
        items.append(Artifact("runtime", binary, digest, f"{root}/bin/{digest[:16]}/{binary.name}"))
    return items


class ArtifactCache:
    """What a device already holds (a sha256 sidecar beside each file) and the pushes it lacks."""

    def __init__(self, device: Device, event: Callable[..., None]):
        self.device, self.event = device, event

    def remote_digest(self, remote: str) -> tuple[str | None, int | None]:
        result = self.device.shell(f"cat {remote}.sha256 2>/dev/null; stat -c %s {remote} 2>/dev/null", timeout=20)
        lines = result.stdout.split()
        digest = lines[0] if lines and len(lines[0]) == 64 else None
        size = int(lines[-1]) if lines and lines[-1].isdigit() else None
        return digest, size

    def _cached(self, item: Artifact) -> bool:
        return self.remote_digest(item.remote) == (item.sha256, item.local.stat().st_size)

    def bytes_to_push(self, items: list[Artifact]) -> int:
        unique = {item.remote: item for item in items}.values()
        return sum(item.local.stat().st_size for item in unique if not self._cached(item))

    def push(self, items: list[Artifact], progress: Progress) -> dict[str, dict]:
        """Push what the device lacks: temp name, sha256 checked on the device, rename, sidecar.
        Returns a record per kind: path, sha256, bytes pushed, cached or not, speed."""
        pushed: dict[str, dict] = {}
        for item in items:
            size = item.local.stat().st_size
            if self._cached(item):
                pushed[item.kind] = {"bytes_pushed": 0, "cached": True, "path": item.remote, "sha256": item.sha256}
                continue
            pushed[item.kind] = self._push_one(item, size, progress)
        return pushed

    def _push_one(self, item: Artifact, size: int, progress: Progress) -> dict:
        serial, folder, partial = self.device.serial, item.remote.rsplit("/", 1)[0], f"{item.remote}.partial"
        self.device.shell(f"mkdir -p {folder} && rm -f {partial}", check=True)
        task = progress.task(f"push {item.kind} {item.local.name}", size, "B")
        started = time.monotonic()
        try:
            self.device.push(item.local, partial, on_bytes=task.advance, timeout=max(120, size / 5e6))
        except AdbFailure as error:
            task.done()
            try:
                self.device.shell(f"rm -f {partial}", timeout=20)  # no half file left behind
            except AdbFailure:
                pass
            raise RunFailed(f"pushing the {item.kind} ({size / 2**20:.0f} MiB) to {serial} failed: {error}",
                            hint="check free space in /data/local/tmp (`bench devices`) and the cable") from None
        task.done()
        seconds = time.monotonic() - started
        check = self.device.shell(f"sha256sum {partial}", timeout=max(60, size / 50e6)).stdout.split()
        if not check or check[0] != item.sha256:
            self.device.shell(f"rm -f {partial}")
            raise RunFailed(f"{item.kind} arrived corrupt on {serial} (sha256 mismatch after push)", hint="retry the run")
        self.device.shell(f"chmod 755 {partial} && mv {partial} {item.remote} && echo {item.sha256} > {item.remote}.sha256",
                          check=True)
        record = {"bytes_pushed": size, "cached": False, "path": item.remote, "sha256": item.sha256,
                  "seconds": round(seconds, 3), "mb_per_s": round(size / 1e6 / seconds, 1) if seconds else None}
        self.event("push", f"pushed {item.kind} {size / 1e6:.1f} MB at {size / 1e6 / seconds:.1f} MB/s", **record)
        return record
