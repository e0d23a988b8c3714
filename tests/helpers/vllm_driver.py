"""Run several experiments in ONE process, so one vLLM engine serves them all (engine start is 60-140 s here).

Each run is what `lmsweep run` does for a local experiment: plan the spec into the output directory, then
every element through the worker's `run_element`, with an optional batch size (a chunk, for vllm). The
engine is started once (runner/engines/vllm.py keeps it for the process) and reused by each run.
tests/runner/test_vllm.py runs this with .venv-vllm's python:

    python tests/helpers/vllm_driver.py [--stale N] --run SPEC OUT_DIR BATCH_SIZE [--run ...]

Prints one JSON line: per run, the experiment directory, the exit codes and the seconds it took.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def run(spec_path: Path, out: Path, batch_size: int | None) -> dict:
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec
    from lmsweep.runner.worker import run_element

    spec = load_spec(spec_path)
    plan = plan_spec(spec)
    exp = out / spec.name
    write_plan(plan, exp)
    start = time.perf_counter()
    codes = [run_element(exp, e.index, batch_size) for e in plan.elements]
    return {"exp": str(exp), "exit_codes": codes, "seconds": time.perf_counter() - start}


def leave_stale_requests(n: int) -> None:
    """What a `LLM.generate` call that raised leaves behind: `n` unfinished requests in every started engine,
    which no later call asked for (runner/engines/vllm.py `engine_call` must keep them out of its rows)."""
    from vllm import SamplingParams

    from lmsweep.runner.engines.vllm import _STARTED

    for loaded, _ in _STARTED.values():
        for i in range(n):
            loaded.llm.llm_engine.add_request(f"stale-{time.monotonic_ns()}-{i}", {"prompt_token_ids": [1, 2, 3]},
                                              SamplingParams(max_tokens=4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", nargs=3, action="append", metavar=("SPEC", "OUT_DIR", "BATCH_SIZE"), required=True)
    parser.add_argument("--stale", type=int, default=0, help="unfinished requests to leave in the engine between runs")
    args = parser.parse_args(argv)
    results = []
    for spec, out, batch in args.run:
        leave_stale_requests(args.stale)
        results.append(run(Path(spec), Path(out), int(batch) if batch.isdigit() else None))
    print(json.dumps(results), flush=True)
    return 0 if all(code == 0 for r in results for code in r["exit_codes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
