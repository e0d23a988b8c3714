"""The metadata a worker leaves beside its rows: one JSON file per rank, one per element.

`meta/element-NNNNN-rank-RRRR.json` says where and with what a rank ran (host, packages (lmsweep's and the
engines' declared `packages`, runner/engines), device, threads, backend, timers, the weights' quantisation);
it is rewritten when an element is resumed, so `meta/history/` keeps every run's copy and rows an earlier run
wrote stay traceable.
`meta/element-NNNNN.json` is rank 0's summary of them all.
Files are written under a temporary name and renamed, like the result parts.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import time
from pathlib import Path
from typing import Any


def write_rank_sidecar(exp_dir: Path, element: int, rank: int, world: int, alias: str, loaded: Any, threads: int,
                       n_units: int, n_failed: int, backend: str, extra: dict | None = None,
                       model_quantization: str | None = None) -> dict:
    """Write this rank's sidecar (and its history copy); return what it holds. `loaded` is the rank's
    runner.loading.LoadedModel, None when it loaded nothing. `model_quantization`: how the weights it computed
    with are quantised (jobs.model_sources.model_quantization; None: not quantised, or no weights loaded)."""
    import importlib.metadata as md

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    import torch

    from lmsweep.core.engine import recorded_packages

    meta = {
        "element": element, "rank": rank, "world_size": world, "model": alias,
        "model_path": loaded.path if loaded else None, "load_seconds": loaded.load_seconds if loaded else None,
        "model_quantization": model_quantization if loaded and loaded.model is not None else None,
        "host": socket.gethostname(), "python": platform.python_version(),
        "packages": {n: version(n) for n in ("lmsweep", *recorded_packages(), "mpi4py", "pandas", "pyarrow")},
        "torch_threads": torch.get_num_threads(), "threads_requested": threads,
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu", "backend": backend,
        "cuda": torch.version.cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [], "lmsweep_commit": source_commit(),
        "units_run": n_units, "units_failed": n_failed, "finished_at": time.time(),
        **(extra or {}),
    }
    _write_json(exp_dir / "meta", f"element-{element:05d}-rank-{rank:04d}.json", meta)
    # The file above is rewritten when an element is resumed; each run also keeps its own copy, so rows
    # an earlier run wrote stay traceable (same element and rank, finished_at before this one's).
    _write_json(exp_dir / "meta" / "history", f"element-{element:05d}-rank-{rank:04d}-{time.time_ns()}.json", meta)
    return meta


def source_commit() -> str | None:
    """The git commit of the lmsweep source this rank runs, when it runs from a checkout."""
    import subprocess

    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_element_sidecar(exp_dir: Path, element: int, ranks: list[dict]) -> None:
    """One file per element with what holds for all its ranks, and a line per rank (host, device, group)."""
    first = ranks[0]
    summary = {k: first.get(k) for k in ("element", "model", "model_quantization", "backend", "accelerator", "python",
                                         "packages", "mpi_library", "backend_config", "world_size")}
    summary |= {
        "tensor_parallel": {k: first["tensor_parallel"][k] for k in ("tp", "groups")} if "tensor_parallel" in first
        else None,
        "hosts": sorted({m["host"] for m in ranks}),
        "load_seconds_max": max((m["load_seconds"] or 0.0) for m in ranks),
        "units_run": sum(m["units_run"] for m in ranks if m.get("tensor_parallel", {}).get("leader", True)),
        "units_failed": sum(m["units_failed"] for m in ranks if m.get("tensor_parallel", {}).get("leader", True)),
        "ranks": [{"rank": m["rank"], "host": m["host"], "local_rank": m.get("world", {}).get("local_rank"),
                   "device": m.get("binding", {}).get("label"), "group": m.get("tensor_parallel", {}).get("group"),
                   "threads": m["torch_threads"], "load_seconds": m["load_seconds"], "units_run": m["units_run"]}
                  for m in ranks],
        "finished_at": time.time(),
    }
    _write_json(exp_dir / "meta", f"element-{element:05d}.json", summary)


def _write_json(directory: Path, name: str, data: dict) -> None:
    directory.mkdir(exist_ok=True)
    tmp = directory / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, directory / name)
