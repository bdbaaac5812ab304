"""The correctness reference: the probe scored by the same model file on the host's CPU
(llama-cpp-python, in its worker process), cached per model file, probe and llama-cpp-python
version, so a phone's runs pay for it once."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path

from ..correctness import SCHEMA_VERSION, Scores, probe_sha256, probe_text
from ..cpu import usable_cpus
from ..files import atomic_write_json
from ..progress import Progress
from ..records import ModelInfo
from .llama_cpp import LlamaCppRuntime

PROBE_N_CTX = 512


def _cache_path(cache_root: Path, model: ModelInfo) -> tuple[Path, dict]:
    key = {"model_sha256": model.sha256, "probe_sha256": probe_sha256(),
           "llama_cpp_python": importlib.metadata.version("llama-cpp-python")}
    name = f"{model.sha256[:16]}-{key['probe_sha256'][:12]}-{key['llama_cpp_python']}.json"
    return cache_root / "references" / name, key


def reference_scores(model: ModelInfo, cache_root: Path, progress: Progress,
                     loaded: LlamaCppRuntime | None = None) -> tuple[Scores, bool]:
    """(the reference's scores, whether they came from the cache). `loaded`: a host run's own
    worker, which is the reference's engine: it scores instead of a second copy of the model."""
    path, key = _cache_path(cache_root, model)
    try:
        stored = json.loads(path.read_text())
        if stored.get("schema_version") == SCHEMA_VERSION and stored.get("key") == key:
            return Scores.from_record(stored["scores"]), True
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: computed again
    task = progress.task(f"correctness reference: {model.alias} on the host's CPU")
    if loaded is not None:
        scores = loaded.score(loaded.tokenize(probe_text()))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-reference-") as scratch:
            runtime = LlamaCppRuntime(model, n_ctx=PROBE_N_CTX, n_batch=8, threads=usable_cpus(), seed=0,
                                      log_path=Path(scratch) / "reference.log")
            try:
                runtime.load()
                scores = runtime.score(runtime.tokenize(probe_text()))
            finally:
                runtime.close()
    task.done()
    atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "key": key, "scores": scores.as_record()})
    return scores, False
