"""GGUF header reader: metadata and tensor shapes without materialising the vocabulary.

Arrays (the tokenizer's 50k-260k strings) are skipped by walking their length prefixes over a
memory map instead of decoding them, which keeps a 262k-vocabulary header under a second; their
length (the vocabulary's size) is kept.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

from .errors import ModelError
from .records import GGUFInfo, ModelInfo, Scenario, slots_text

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types -> struct format (fixed-size ones).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _ArrayLength(int):
    """An array's element count: the arrays themselves (the vocabulary) are skipped, not read."""

# llama.cpp's enum llama_ftype (general.file_type).
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
    18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
    25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
    32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4_MOE",
}

# ggml tensor types -> (elements per block, bytes per block), for the truncation check.
_TENSOR_BLOCKS = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2),
}


class _Cursor:
    def __init__(self, buffer, path: Path):
        self.buffer, self.offset, self.path = buffer, 0, path
        self.size = len(buffer)

    def take(self, fmt: str):
        width = struct.calcsize(fmt)
        if self.offset + width > self.size:
            raise ModelError(f"{self.path} is truncated: the GGUF header ends at byte {self.size}",
                             "download the model again (`bench models pull ALIAS`)")
        (value,) = struct.unpack_from(fmt, self.buffer, self.offset)
        self.offset += width
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.offset + length > self.size:
            raise ModelError(f"{self.path} is truncated inside a GGUF string", "download the model again")
        raw = bytes(self.buffer[self.offset:self.offset + length])
        self.offset += length
        return raw.decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALAR:
            return self.take(_SCALAR[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.take("<I"), self.take("<Q")
            if item_kind in _SCALAR:
                self.offset += struct.calcsize(_SCALAR[item_kind]) * count
            elif item_kind == _STRING:
                for _ in range(count):
                    self.offset += 8 + struct.unpack_from("<Q", self.buffer, self.offset)[0]
            else:
                for _ in range(count):
                    self.value(item_kind)
            if self.offset > self.size:
                raise ModelError(f"{self.path} is truncated inside a GGUF array", "download the model again")
            return _ArrayLength(count)  # its items are skipped: only the vocabulary's size is reported
        raise ModelError(f"{self.path}: unknown GGUF value type {kind} at byte {self.offset}",
                         "the file is corrupt or from a newer GGUF version")


def read_gguf(path: str | Path) -> GGUFInfo:
    return _read(Path(path), _parse)


def tensor_data_offsets(path: str | Path) -> dict[str, tuple[int, int]]:
    """Each tensor's (GGML type, byte offset of its data in the file), from the header alone."""
    def offsets(buffer, path: Path, file_bytes: int) -> dict[str, tuple[int, int]]:
        _, _, tensors, data_start = _header(buffer, path)
        return {name: (tensor_type, data_start + offset) for name, _, tensor_type, offset in tensors}

    return _read(Path(path), offsets)


def _read(path: Path, parse):
    try:
        handle = path.open("rb")
    except OSError as error:
        raise ModelError(f"cannot open model file {path}: {error.strerror}") from None
    with handle:
        file_bytes = path.stat().st_size
        if file_bytes < 24:
            raise ModelError(f"{path} is not a GGUF model ({file_bytes} bytes)", "give a .gguf file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            try:
                return parse(buffer, path, file_bytes)
            except struct.error:
                raise ModelError(f"{path} is truncated inside its GGUF header",
                                 "download the model again (`bench models pull ALIAS`)") from None


def _header(buffer, path: Path) -> tuple[int, dict[str, object], list[tuple[str, list[int], int, int]], int]:
    """(version, metadata, tensors as (name, dims, type, offset from the data start), data start)."""
    if buffer[:4] != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model (magic {bytes(buffer[:4])!r})",
                         "give a .gguf file (convert other formats with llama.cpp's convert scripts)")
    cursor = _Cursor(buffer, path)
    cursor.offset = 4
    version = cursor.take("<I")
    if version not in (2, 3):
        raise ModelError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    tensor_count, kv_count = cursor.take("<Q"), cursor.take("<Q")
    metadata: dict[str, object] = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.take("<I"))
    tensors = []
    for _ in range(tensor_count):
        name = cursor.string()
        dims = [cursor.take("<Q") for _ in range(cursor.take("<I"))]
        tensor_type, offset = cursor.take("<I"), cursor.take("<Q")
        tensors.append((name, dims, tensor_type, offset))
    alignment = int(metadata.get("general.alignment") or 32)
    return version, metadata, tensors, (cursor.offset + alignment - 1) // alignment * alignment


def _parse(buffer, path: Path, file_bytes: int) -> GGUFInfo:
    version, metadata, tensors, data_start = _header(buffer, path)
    tensor_count = len(tensors)
    architecture = metadata.get("general.architecture")
    prefix = f"{architecture}." if architecture else ""

    parameters = 0
    data_end = data_start
    for _, dims, tensor_type, offset in tensors:
        elements = 1
        for dim in dims:
            elements *= dim
        parameters += elements
        block = _TENSOR_BLOCKS.get(tensor_type)
        tensor_bytes = elements // block[0] * block[1] if block else 0
        data_end = max(data_end, data_start + offset + tensor_bytes)
    if data_end > file_bytes:
        raise ModelError(f"{path} is truncated: tensor data needs {data_end} bytes, the file has {file_bytes}",
                         "download the model again (`bench models pull ALIAS`)")

    def meta_int(key: str, prefix: str = prefix) -> int | None:
        value = metadata.get(prefix + key)
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, (bool, _ArrayLength)) else None

    def meta_bool(key: str) -> bool | None:
        value = metadata.get(key)
        return value if isinstance(value, bool) else None

    tokens = metadata.get("tokenizer.ggml.tokens")

    file_type = metadata.get("general.file_type")
    return GGUFInfo(
        version=version,
        architecture=str(architecture) if architecture else None,
        name=str(metadata["general.name"]) if "general.name" in metadata else None,
        file_type=int(file_type) if isinstance(file_type, int) else None,
        quantization=FILE_TYPES.get(file_type) if isinstance(file_type, int) else None,
        parameters=parameters,
        tensor_count=tensor_count,
        context_length=meta_int("context_length"),
        block_count=meta_int("block_count"),
        embedding_length=meta_int("embedding_length"),
        head_count=meta_int("attention.head_count"),
        head_count_kv=meta_int("attention.head_count_kv"),
        key_length=meta_int("attention.key_length"),
        value_length=meta_int("attention.value_length"),
        file_bytes=file_bytes,
        vocab_type=str(metadata["tokenizer.ggml.model"]) if "tokenizer.ggml.model" in metadata else None,
        vocab_size=int(tokens) if isinstance(tokens, _ArrayLength) else None,
        bos_token_id=meta_int("tokenizer.ggml.bos_token_id", ""),
        eos_token_id=meta_int("tokenizer.ggml.eos_token_id", ""),
        add_bos=meta_bool("tokenizer.ggml.add_bos_token"),
        add_eos=meta_bool("tokenizer.ggml.add_eos_token"),
    )


def kv_cache_bytes(info: GGUFInfo, n_ctx: int, bytes_per_element: int = 2) -> int | None:
    """f16 K and V for every layer at n_ctx; None when the header lacks the shapes."""
    if not (info.block_count and info.embedding_length and info.head_count):
        return None
    head_dim_k = info.key_length or info.embedding_length // info.head_count
    head_dim_v = info.value_length or info.embedding_length // info.head_count
    heads_kv = info.head_count_kv or info.head_count
    return n_ctx * info.block_count * heads_kv * (head_dim_k + head_dim_v) * bytes_per_element


# llama.cpp's common_speculative_are_compatible: the draft's vocabulary may be this many tokens
# larger or smaller than the target's (beyond that it refuses the pair)
DRAFT_VOCAB_MAX_DIFFERENCE = 128


def draft_vocabulary_problem(target: GGUFInfo, draft: GGUFInfo) -> str | None:
    """Why llama.cpp would refuse `draft` as the draft model of `target` (its vocabulary checks, as
    far as the headers tell: tokenizer type, BOS/EOS, vocabulary size), or None. The per-token text
    comparison llama.cpp adds is seen at load: the run then fails with llama-server's own line."""
    if target.vocab_type and draft.vocab_type and target.vocab_type != draft.vocab_type:
        return f"its tokenizer is {draft.vocab_type!r} and the model's is {target.vocab_type!r}"
    for name, ours, theirs in (("BOS", (target.add_bos, target.bos_token_id), (draft.add_bos, draft.bos_token_id)),
                               ("EOS", (target.add_eos, target.eos_token_id), (draft.add_eos, draft.eos_token_id))):
        if ours[0] is not None and theirs[0] is not None and ours[0] != theirs[0]:
            return f"the model {'adds' if ours[0] else 'does not add'} a {name} token and the draft " \
                   f"{'does' if theirs[0] else 'does not'}"
        if ours[0] and ours[1] is not None and theirs[1] is not None and ours[1] != theirs[1]:
            return f"its {name} token is {theirs[1]} and the model's is {ours[1]}"
    if target.vocab_size and draft.vocab_size and abs(target.vocab_size - draft.vocab_size) > DRAFT_VOCAB_MAX_DIFFERENCE:
        return (f"its vocabulary has {draft.vocab_size:,} tokens and the model's {target.vocab_size:,} (llama.cpp "
                f"allows {DRAFT_VOCAB_MAX_DIFFERENCE} apart)")
    return None


def memory_needed(model: ModelInfo, scenario: Scenario, overhead_bytes: int) -> tuple[int, str]:
    """(bytes, how they add up) a run's runtime needs: the model, its f16 KV cache at n_ctx in
    every slot, a draft model and its own KV cache, and the runtime's overhead."""
    kv = kv_cache_bytes(model.gguf, scenario.n_ctx * scenario.sequences)
    needed = model.bytes + (kv or 0) + overhead_bytes
    parts = [f"model {model.bytes / 2**20:.0f} MiB",
             f"KV {kv / 2**20:.0f} MiB at n_ctx {scenario.n_ctx}{slots_text(scenario)}" if kv is not None
             else "KV size unknown"]
    if model.draft is not None:
        draft_kv = kv_cache_bytes(model.draft.gguf, scenario.n_ctx * scenario.sequences)
        needed += model.draft.bytes + (draft_kv or 0)
        parts.append(f"draft {model.draft.bytes / 2**20:.0f} MiB + its KV "
                     + (f"{draft_kv / 2**20:.0f} MiB" if draft_kv is not None else "size unknown"))
    return needed, " + ".join(parts + [f"{overhead_bytes >> 20} MiB overhead"])
