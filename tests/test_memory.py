"""Issue 23.3: where the memory goes. llama.cpp's own buffers (weights, KV cache, compute, output)
read from its load log on the host and on phones, beside sampled RSS/PSS and MemAvailable's low
point, in run.json, the report and rss.png."""

import json
from pathlib import Path

import pytest

from bench.parse import MIB, parse_llama_buffers
from bench.store import load_run
from conftest import DATA, bench_cli

LOGS = DATA / "llama-logs"


def _log(name: str) -> str:
    return (LOGS / name).read_text()


def test_every_llama_log_capture_parses_to_its_buffers():
    # file -> (weights, KV cache, compute, output) in MiB as the log prints them; None: not in it
    known = {
        "host-x86-llama-server-lv4_smollm2-135m-q4_1_bench-build-0c1e57098.txt": (92.10, 11.25, 14.01, 0.19),
        # the model's load; its draft's follows (tests/test_speculative.py reads both)
        "host-x86-llama-server-lv4-draft_smollm2-135m-q4_1-drafting-itself_bench-build-0c1e57098.txt":
            (92.10, 11.25, 14.01, 0.19),
        "excerpt_android15-llama-cli-hexagon_deepseek-r1-1.5b-f16_llama.cpp-13179.txt": (0.16 + 3389.80, None, None, 0.58),
        "excerpt_split-model-four-mapped-buffers_mistral-large_koboldcpp-1528.txt":
            (22722.80 + 22813.64 + 22797.14 + 12113.72, None, None, None),
        "excerpt_old-form-llm-load-tensors_ik-llama.cpp-237.txt": (12698.93, None, None, None),
        # devices and offload only (tests/test_gpu_offload.py): no buffer line in them
        "excerpt_android-termux-vulkan-adreno732_lfm2-8b_llama.cpp-16881.txt": None,
        "reconstructed_freebsd-vulkan-rtx2060-no-layers-offloaded_llama.cpp-11367.txt": None,
        # a Vulkan load on lavapipe: the token embeddings in CPU_Mapped, the layers' weights on Vulkan0
        "host-x86-llama-server-lv4-vulkan-lavapipe_smollm2-135m-q4_1_vendored-0c1e57098.txt": (28.69 + 92.10, 11.25, 11.76 + 2.76, 0.75),
    }
    assert sorted(known) == sorted(p.name for p in LOGS.glob("*.txt")), "a capture without its known answer"
    for name, parts in known.items():
        buffers = parse_llama_buffers(_log(name))
        if parts is None:
            assert buffers is None, name
            continue
        for part, mib in zip(("weights", "kv_cache", "compute", "output"), parts):
            assert buffers.total(part) == (None if mib is None else pytest.approx(mib * MIB)), (name, part)
    phone = parse_llama_buffers(_log("excerpt_android15-llama-cli-hexagon_deepseek-r1-1.5b-f16_llama.cpp-13179.txt"))
    assert [b["buffer"] for b in phone.as_record()["buffers"]] == ["hexagon-ion-buffer", "CPU_Mapped", "CPU"]
    # SmolLM2-135M's KV cache at 512 tokens: 30 layers x 3 KV heads x (64 + 64) x 2 bytes a token
    host = parse_llama_buffers(_log("host-x86-llama-server-lv4_smollm2-135m-q4_1_bench-build-0c1e57098.txt"))
    assert host.total("kv_cache") == 512 * 30 * 3 * 128 * 2


def test_a_second_load_in_one_log_is_not_counted_and_a_log_without_buffers_is_none():
    once = _log("host-x86-llama-server-lv4_smollm2-135m-q4_1_bench-build-0c1e57098.txt")
    assert parse_llama_buffers(once + once) == parse_llama_buffers(once)
    assert parse_llama_buffers("llama-bench: 1 test\n| model | size |\n") is None
    # a size llama.cpp reports at teardown ("is", not "=") is no allocation of the load
    assert parse_llama_buffers("~llama_context:        CPU compute buffer size is  98.2520 MiB, matches expectation") is None


@pytest.mark.slow
def test_a_host_run_says_where_its_memory_goes(smollm2_path, tmp_path):
    result = bench_cli("run", "--repetitions", "1", "--out", str(tmp_path), "--json", "--no-correctness")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    run = load_run(run_dir).run
    memory = run["memory"]
    assert memory["reported"] and memory["kv_cache_bytes"] == run["kv_cache"]["bytes_at_n_ctx"]
    # the weights buffer is the model file's tensors, mapped: the file less its metadata (the
    # tokenizer's 49,152 tokens and merges are most of the 1.7 MiB)
    assert 0.97 * run["model"]["bytes"] < memory["weights_bytes"] < run["model"]["bytes"]
    assert memory["total_bytes"] == pytest.approx(sum(b["bytes"] for b in memory["buffers"]))
    summary = run["summary"]
    assert 0 < summary["mem_available_min_bytes"] <= summary["mem_available_first_bytes"]
    report = (run_dir / "report.md").read_text()
    assert "## Where the memory goes" in report and "| KV cache | 11.2 | CPU | llama.cpp at load;" in report
    assert (run_dir / "plots" / "rss.png").stat().st_size > 10_000
