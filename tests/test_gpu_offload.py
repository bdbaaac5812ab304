"""Issue 22.1, what a run must verify before it calls a figure a GPU's: the GPU devices llama.cpp
found and used, the layers it offloaded, and how much of the weights the devices really hold, read
from its load log (real captures: a phone's Vulkan Adreno, a Vulkan GPU with nothing offloaded, a
Hexagon load that counts every layer offloaded and keeps the weights in CPU memory)."""

import pytest

from bench import parse
from conftest import DATA

LOGS = DATA / "llama-logs"
MIB = 2**20


def _offload(name: str) -> tuple[parse.LlamaOffload, dict]:
    log = (LOGS / name).read_text()
    offload = parse.parse_llama_offload(log)
    return offload, offload.as_record(parse.parse_llama_buffers(log))


def test_a_phone_s_vulkan_device_and_the_device_its_model_used():
    offload, record = _offload("excerpt_android-termux-vulkan-adreno732_lfm2-8b_llama.cpp-16881.txt")
    assert offload.devices == (("Adreno (TM) 732", "Qualcomm Technologies Inc. Adreno Vulkan Driver"),)
    assert offload.used == (("Vulkan0", "Adreno (TM) 732"),)  # a name with parentheses of its own
    assert (offload.layers_offloaded, record["weights_on_device_bytes"]) == (None, None)  # the excerpt ends before


def test_a_vulkan_device_found_and_no_layer_offloaded_is_told():
    offload, record = _offload("reconstructed_freebsd-vulkan-rtx2060-no-layers-offloaded_llama.cpp-11367.txt")
    assert offload.devices == (("NVIDIA GeForce RTX 2060", "NVIDIA"),)
    assert (offload.used, offload.layers_offloaded, offload.layers_total) == ((), 0, 36)
    assert record["layers_offloaded"] == 0


def test_layers_counted_as_offloaded_can_keep_their_weights_in_cpu_memory():
    offload, record = _offload("excerpt_android15-llama-cli-hexagon_deepseek-r1-1.5b-f16_llama.cpp-13179.txt")
    assert (offload.layers_offloaded, offload.layers_total) == (29, 29)
    assert record["weights_on_device_bytes"] == pytest.approx(0.16 * MIB)  # hexagon-ion-buffer
    assert record["weights_bytes"] == pytest.approx((0.16 + 3389.80) * MIB)


def test_a_vulkan_load_that_really_offloads_on_lavapipe():
    offload, record = _offload("host-x86-llama-server-lv4-vulkan-lavapipe_smollm2-135m-q4_1_vendored-0c1e57098.txt")
    assert offload.used == (("Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)"),)
    assert (offload.layers_offloaded, offload.layers_total) == (31, 31)
    # the token embeddings stay in host memory; every layer's weights are on the device
    assert record["weights_on_device_bytes"] == pytest.approx(92.10 * MIB)
    assert record["weights_bytes"] == pytest.approx((92.10 + 28.69) * MIB)


def test_a_cpu_build_logs_no_device_and_no_offload():
    offload = parse.parse_llama_offload(
        (LOGS / "host-x86-llama-server-lv4_smollm2-135m-q4_1_bench-build-0c1e57098.txt").read_text())
    assert offload == parse.LlamaOffload((), (), None, None)
