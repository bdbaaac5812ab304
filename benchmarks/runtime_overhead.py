"""Runtime overhead: bench's host decode t/s (llama-cpp-python in bench's worker process) vs a bare
llama-cpp-python generate loop in this process, on the same model, threads, prompt and n_predict,
interleaved. Both rates use bench's one definition, (generated - 1) / first-to-last token time, so
the ratio shows what bench's worker, loop and records cost (sampler off).

    .venv/bin/python benchmarks/runtime_overhead.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import llama_cpp

from _common import bench_decode_tps, interleaved, model_info, resolve_scenario


def bare_decode_tps(llm: llama_cpp.Llama, prompt: str, n_predict: int) -> float:
    tokens = llm.tokenize(prompt.encode(), add_bos=True)
    llm.reset()
    stamps = []
    for _ in llm.generate(tokens, temp=0.0):
        stamps.append(time.perf_counter())
        if len(stamps) >= n_predict:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()
    scenario = resolve_scenario("quick")
    threads = len(os.sched_getaffinity(0))
    model = model_info(args.model)
    llm = llama_cpp.Llama(model_path=model.path, n_ctx=scenario.n_ctx, n_batch=scenario.n_batch, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    bare_decode_tps(llm, scenario.prompts[0].text, scenario.n_predict)  # warmup, as bench does
    bare, ours = [], []
    def measure_bare() -> None:
        bare.append(statistics.median(bare_decode_tps(llm, scenario.prompts[0].text, scenario.n_predict)
                                      for _ in range(args.repetitions)))

    def measure_bench() -> None:
        ours.append(bench_decode_tps(args.model, "quick", telemetry_hz=None, repetitions=args.repetitions, threads=threads))

    interleaved(args.rounds, measure_bare, measure_bench,
                lambda index: print(f"round {index + 1}: bare loop {bare[-1]:.2f} t/s, bench {ours[-1]:.2f} t/s"))
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"threads {threads}; median decode t/s: bench {statistics.median(ours):.2f}, bare {statistics.median(bare):.2f}")
    print(f"ratio bench/bare = {ratio:.3f}")


if __name__ == "__main__":
    main()
