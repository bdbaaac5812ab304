"""A llama-server reached over HTTP (on a phone, through a stream the adb server opens to the
device's port, so a remote adb server works as a local one does): /completion streamed with tokens
timed on the host, prefill/decode from the server's own `timings`."""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from ..correctness import Position, Scores
from ..errors import RunFailed
from ..records import ModelInfo, Scenario
from .base import Completion, RuntimeFacts


# llama-server logs libllama's load lines (the buffers it allocates: weights, KV cache, compute) only
# from verbosity 4 ("trace": a few lines more a request, none a token)
LOG_LEVEL = "-lv 4"
LOG_HEAD_BYTES = 256 * 1024  # the load's lines come first, after at most a few hundred of metadata


def load_mode_args(load_mode: str) -> list[str]:
    """A scenario's load_mode for llama-server: "read" copies the weights into memory (-lm none);
    "mmap" is its default and needs nothing."""
    return ["-lm", "none"] if load_mode == "read" else []


def slot_args(parallel: int, n_ctx: int) -> list[str]:
    """llama-server's slots for `parallel` sequences, each with a context of n_ctx: the server
    splits its context evenly between its slots."""
    return ["-np", str(parallel), "-c", str(n_ctx * parallel)]


def draft_args(draft_path: str, draft_max: int) -> list[str]:
    """llama-server speculating with a draft model: -md alone loads it and drafts nothing (this
    llama.cpp needs the speculation type named)."""
    return ["-md", draft_path, "--spec-type", "draft-simple", "--spec-draft-n-max", str(draft_max)]


# The first device of each GPU backend, as llama.cpp names it (-dev, --list-devices)
GPU_DEVICES = {"vulkan": "Vulkan0", "opencl": "GPUOpenCL"}


def gpu_args(backend: str, gpu_layers: int | None) -> list[str]:
    """llama.cpp's device selection for a GPU backend: its first device and the layers to offload
    (None: all of them); the CPU backend passes nothing, as before GPU backends existed."""
    if backend == "cpu":
        return []
    return ["-dev", GPU_DEVICES[backend], "-ngl", "all" if gpu_layers is None else str(gpu_layers)]


def gpu_details(backend: str, gpu_layers: int | None, driver: str | None = None) -> dict:
    """What run.json's runtime says of the backend (memory.offload says what llama.cpp did with it);
    `driver`: the device's driver, where the build's device listing names it."""
    if backend == "cpu":
        return {"backend": "cpu"}
    return {"backend": backend, "gpu_device": GPU_DEVICES[backend], "gpu_layers": "all" if gpu_layers is None else gpu_layers,
            **({"gpu_driver": driver} if driver else {})}


def gpu_devices_problem(backend: str, listed: list[tuple[str, str]]) -> str | None:
    """Why a GPU backend has no device to run on, from `llama-server --list-devices` (None: it has)."""
    if any(device == GPU_DEVICES[backend] for device, _ in listed):
        return None
    seen = ", ".join(f"{device} ({name})" for device, name in listed) or "no GPU device"
    hint = ("; ggml-vulkan skips a CPU-type Vulkan device such as lavapipe unless GGML_VK_VISIBLE_DEVICES names it"
            if backend == "vulkan" else "")
    return f"llama.cpp's {backend} build lists {seen}, not {GPU_DEVICES[backend]}{hint}"


def list_host_devices(binary: Path, timeout_s: float = 60) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The GPU devices a host llama.cpp build sees (`llama-server --list-devices`), and the driver of
    each Vulkan one (ggml-vulkan names it only in its debug lines: "ggml_vulkan: 0 = NAME (DRIVER)")."""
    import subprocess

    from ..parse import parse_device_list, parse_llama_offload

    try:
        result = subprocess.run([str(binary), "-lv", "5", "--list-devices"], capture_output=True, text=True,
                                timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RunFailed(f"{binary} --list-devices did not answer: {error}") from None
    vulkan = parse_llama_offload(result.stdout + "\n" + result.stderr).devices
    return parse_device_list(result.stdout), {f"Vulkan{index}": driver for index, (_, driver) in enumerate(vulkan)}


def draft_details(model: ModelInfo, scenario: Scenario) -> dict:
    """What run.json's runtime says of speculative decoding: the draft and its tokens a step."""
    if model.draft is None:
        return {"draft": None} if scenario.drafts else {}
    return {"draft": model.draft.alias, "draft_max": scenario.draft_max, "speculative": "draft-simple"}


# what llama-server logs, and then serves on without speculating, when the draft does not fit
DRAFT_FAILED = "failed to initialize speculative decoding"


def _count(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ServerGone(RunFailed):
    """The connection to llama-server broke: it crashed, was killed, or the device went away."""


# Opens a connected socket to the server within a timeout; raises OSError when nothing answers.
SocketOpener = Callable[[float], socket.socket]


class _OpenedConnection(http.client.HTTPConnection):
    """HTTP over a socket someone else connects (an adb stream to the device's tcp:PORT)."""

    def __init__(self, opener: SocketOpener, timeout: float):
        super().__init__("127.0.0.1", timeout=timeout)  # the Host header llama-server sees
        self._opener = opener

    def connect(self) -> None:
        self.sock = self._opener(self.timeout)
        self.sock.settimeout(self.timeout)


# a UTF-8 character is at most 4 bytes, so at most 4 byte-fallback tokens: an event that delivers
# more was held back (buffered), and its tokens' arrival times are not theirs
TOKENS_PER_CHARACTER = 4


class LlamaServerRuntime:
    kind = "llama-server"

    def __init__(self, opener: SocketOpener, *, facts: RuntimeFacts, request_timeout_s: float = 600):
        self._opener, self._facts, self.timeout = opener, facts, request_timeout_s

    def _connection(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return _OpenedConnection(self._opener, timeout or self.timeout)

    def loaded(self, load_ms: float) -> None:
        self._facts = replace(self._facts, load_ms=load_ms)

    def _post(self, path: str, body: dict, timeout: float | None = None,
              connection: http.client.HTTPConnection | None = None) -> dict:
        """`connection`: one kept open across calls (HTTP keep-alive; it reconnects by itself when
        the server closed it), else one for this call."""
        own = connection is None
        connection = connection or self._connection(timeout)
        try:
            connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise ServerGone(f"llama-server did not answer {path}: {error}") from None
        finally:
            if own:
                connection.close()
        if response.status != 200:
            raise RunFailed(f"llama-server answered {path} with HTTP {response.status}: {payload[:200]!r}")
        return json.loads(payload)

    def health(self, timeout: float = 5) -> int | None:
        """HTTP status of /health (503 while loading, 200 when ready), None when nothing answers."""
        connection = self._connection(timeout)
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            return None
        finally:
            connection.close()

    def load(self) -> float:
        return float(self._facts.load_ms or 0.0)

    def facts(self) -> RuntimeFacts:
        return self._facts

    def peak_rss_bytes(self) -> float | None:
        return None  # on the device: the telemetry loop samples its VmHWM

    def tokenize(self, text: str) -> list[int]:
        return list(self._post("/tokenize", {"content": text, "add_special": True}, timeout=60)["tokens"])

    def complete(self, prompt: str | Sequence[int], *, n_predict: int, ignore_eos: bool, keep_cache: bool,
                 temperature: float, seed: int) -> Completion:
        body = {"prompt": prompt if isinstance(prompt, str) else list(prompt), "n_predict": n_predict, "seed": seed,
                "temperature": temperature, "ignore_eos": ignore_eos, "cache_prompt": keep_cache, "stream": True,
                "top_k": 40, "top_p": 0.95, "min_p": 0.05}
        connection = self._connection()
        token_ns: list[int] = []
        text_parts: list[str] = []
        final: dict = {}
        # Tokens that reached the host one character at a time: each event's tokens_predicted is the
        # server's running count, so its increase is how many tokens the event delivered (a token
        # whose text ends mid UTF-8 character gets no event and comes with the next one)
        streamed = delivered_before = 0
        sent_ns = time.perf_counter_ns()
        try:
            # The prompt travels as JSON in an HTTP body: it never meets a device shell.
            connection.request("POST", "/completion", body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200:
                raise RunFailed(f"llama-server answered /completion with HTTP {response.status}: {response.read()[:200]!r}")
            for raw in response:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                arrived_ns = time.perf_counter_ns()
                text_parts.append(event.get("content") or "")
                count = event.get("tokens_predicted")
                delivered = int(count) - delivered_before if count is not None else int(not event.get("stop"))
                delivered_before = int(count) if count is not None else delivered_before + delivered
                if delivered > 0:
                    token_ns.append(arrived_ns)  # one arrival per event: ITL is the wait for the next text
                    if delivered <= TOKENS_PER_CHARACTER:
                        streamed += delivered
                if event.get("stop"):
                    final = event
                    break
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise ServerGone(f"the stream from llama-server broke: {error}") from None
        finally:
            connection.close()
        done_ns = time.perf_counter_ns()
        timings = final.get("timings") or {}
        generated = int(final.get("tokens_predicted") or timings.get("predicted_n") or streamed)
        stop_type = final.get("stop_type") or ("eos" if final.get("stopped_eos") else "length")
        prompt_n = timings.get("prompt_n")
        cached = int(timings.get("cache_n") or 0)
        return Completion(
            prompt_tokens=int(final.get("tokens_evaluated") or ((prompt_n or 0) + cached)),
            cached_tokens=cached,
            gen_tokens=generated,
            sent_ns=sent_ns,
            token_ns=tuple(token_ns),
            done_ns=done_ns,
            prefill_ms=timings.get("prompt_ms"),
            prefill_n=prompt_n,
            decode_ms=timings.get("predicted_ms"),
            # predicted_per_second excludes the first token: (n - 1) / time, llama.cpp's convention
            decode_n=max(0, generated - 1) if timings.get("predicted_ms") else None,
            stop_reason={"limit": "length", "eos": "eos", "word": "stop_word"}.get(stop_type, str(stop_type)),
            text="".join(text_parts),
            streamed_tokens=streamed,
            # present only when the server speculated: it runs a draft model of a usable vocabulary
            draft_tokens=_count(timings.get("draft_n")),
            draft_accepted=_count(timings.get("draft_n_accepted")),
        )

    def score(self, tokens: Sequence[int]) -> Scores:
        """Teacher-forced through /completion, one request a position: the prefix as token ids (so
        no tokenizer stands between the runtime and the reference), one token generated and forced to
        the probe's next by a logit bias, which the sampler applies and the reported probabilities,
        taken from the model's own logits, do not see. The cached prefix makes each request one token
        of work."""
        positions = []
        connection = self._connection()  # one adb stream for all of them, not one a position
        try:
            for index in range(1, len(tokens)):
                target = int(tokens[index])
                answer = self._post("/completion", {
                    "prompt": [int(t) for t in tokens[:index]], "n_predict": 1, "n_probs": 2, "temperature": 0.0,
                    "logit_bias": [[target, 100.0]], "cache_prompt": True, "ignore_eos": True, "stream": False},
                    connection=connection)
                probabilities = (answer.get("completion_probabilities") or [{}])[0]
                top = probabilities.get("top_logprobs") or []
                logprob = probabilities.get("logprob") if probabilities.get("id") == target else None
                positions.append(Position(int(top[0]["id"]) if top else -1,
                                          float(logprob) if isinstance(logprob, (int, float)) else None))
        finally:
            connection.close()
        commit = self._facts.llama_cpp_commit
        return Scores(tuple(tokens), tuple(positions), 0, f"llama-server (llama.cpp {commit})" if commit else "llama-server")

    def close(self) -> None:
        pass  # the device side owns the process; AndroidTarget stops it


class LocalLlamaServer(LlamaServerRuntime):
    """llama-server of a host llama.cpp build, on 127.0.0.1 and a free port: what runs a host
    scenario's parallel sequences (one slot each, every slot with the scenario's n_ctx), and scores
    a host llama-bench run's model with the same build. Stopped by its PID, ours."""

    def __init__(self, binary: Path, model_path: str, *, threads: int, n_ctx: int, log_path: Path,
                 facts: RuntimeFacts, parallel: int = 1, extra_args: Sequence[str] = (), start_timeout_s: float = 120,
                 request_timeout_s: float = 600):
        from .process import LineProcess

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        started = time.monotonic()
        self._process = LineProcess([str(binary), "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
                                     *slot_args(parallel, n_ctx), "-t", str(threads), *LOG_LEVEL.split(), *extra_args],
                                    log_path)
        self.log_path = log_path
        super().__init__(lambda timeout: socket.create_connection(("127.0.0.1", port), timeout),
                         facts=replace(facts, pid=self._process.pid), request_timeout_s=request_timeout_s)
        deadline = time.monotonic() + start_timeout_s
        while self.health(timeout=5) != 200:
            if self._process.process.poll() is not None or time.monotonic() > deadline:
                failure = self._process.failure() if self._process.process.poll() is not None else "no answer in time"
                self.close()
                raise RunFailed(f"llama-server did not become healthy on the host: {failure}")
            time.sleep(0.2)
        self.loaded((time.monotonic() - started) * 1000)

    def interrupt(self) -> None:
        """A run guard tripped: the requests in flight end now."""
        self._process.kill()

    def close(self) -> None:
        self._process.kill()
        self._process.close()
