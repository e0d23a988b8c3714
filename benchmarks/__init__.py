"""Benchmarks, outside the product package: run from the checkout as `python -m benchmarks.<name>`.

    generate   lmsweep against the seed loop, the expert notebook and this CPU's GEMM roofline
    backends   hf against DeepSpeed inference (TP=1, TP=2) on the quickstart workload
    planning   planning a million units: time and peak memory
    results    loading and status over many part files
    workload   the shared prompts and settings (imported by generate and the tests)

Figures and the commands that reproduce them: docs/performance.md.
"""
