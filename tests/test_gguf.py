import time
from pathlib import Path

import pytest

from bench.errors import ModelError
from bench.gguf import kv_cache_bytes, read_gguf
from conftest import write_gguf

META = {"general.architecture": "llama", "general.name": "tiny", "general.file_type": 15,
        "llama.context_length": 4096, "llama.block_count": 2, "llama.embedding_length": 64,
        "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2}
TENSORS = [("a", [64, 32], 0), ("b", [10], 1), ("c", [3, 5, 7], 0)]


def test_synthetic_header(tmp_path: Path):
    info = read_gguf(write_gguf(tmp_path / "m.gguf", META, TENSORS, string_array=["a", "bb", "ccc"]))
    assert info.architecture == "llama" and info.name == "tiny"
    assert info.quantization == "Q4_K_M" and info.file_type == 15
    assert info.parameters == 64 * 32 + 10 + 3 * 5 * 7
    assert (info.context_length, info.block_count, info.head_count_kv) == (4096, 2, 2)
    # 2 layers x 2 kv heads x (16 + 16) head dims x 2 bytes x n_ctx
    assert kv_cache_bytes(info, 100) == 100 * 2 * 2 * 32 * 2


def test_large_vocabulary_is_skipped_quickly(tmp_path: Path):
    path = write_gguf(tmp_path / "v.gguf", META, TENSORS, string_array=[f"tok{i}" for i in range(262_144)])
    started = time.perf_counter()
    info = read_gguf(path)
    assert info.parameters == 64 * 32 + 10 + 105
    assert time.perf_counter() - started < 5  # a generous bound; decoding all strings took ~37 s in gguf-py


def test_truncated_tensor_data(tmp_path: Path):
    path = write_gguf(tmp_path / "t.gguf", META, TENSORS, data_bytes=100)
    with pytest.raises(ModelError, match="truncated"):
        read_gguf(path)


def test_truncated_header(tmp_path: Path):
    full = write_gguf(tmp_path / "f.gguf", META, TENSORS, string_array=["x"] * 100)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:200])
    with pytest.raises(ModelError, match="truncated"):
        read_gguf(cut)


def test_not_gguf(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ModelError, match="not a GGUF"):
        read_gguf(path)
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(b"GG")
    with pytest.raises(ModelError, match="not a GGUF"):
        read_gguf(tiny)


def test_real_smollm2_header(smollm2_path):
    info = read_gguf(smollm2_path)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert 130e6 < info.parameters < 140e6  # "135M"
    assert info.block_count == 30 and info.file_bytes == smollm2_path.stat().st_size


def test_tensor_data_offsets_point_at_each_tensor_s_data(tmp_path):
    from bench.gguf import tensor_data_offsets

    path = write_gguf(tmp_path / "t.gguf", {"general.architecture": "llama"}, [("a", [8], 0), ("b", [4, 2], 1)])
    offsets = tensor_data_offsets(path)
    header = path.stat().st_size - (32 + 16)  # a: 8 x f32 = 32 bytes; b: 8 x f16 = 16, after a's 32-byte aligned slot
    assert offsets == {"a": (0, header), "b": (1, header + 32)}
