"""kill -9 at random points, then a rerun: every unit exactly once, outputs identical to an uninterrupted run.

The harness: a forkserver process imports torch, transformers and lmsweep once; each run is a fresh
child forked from it that calls the real `lmsweep worker` entry point (argument parsing, signal set-up,
lock, plan, model load, batches, atomic part files). Forking instead of exec'ing saves ~10 s of imports
per run, which is what makes two dozen kill runs cheap. Kills come two ways: the worker's test hook
`LMSWEEP_TEST_KILL_AT=<point>[:N]` (lmsweep/core/kill_points.py) SIGKILLs the child at an exact point (before the
model load, after batch N is computed but before it is written, after part N's bytes are written but
before the rename), and the harness SIGKILLs it after a random wall-clock delay. All choices come from
a seeded RNG. Some trials also damage the results tree after the kill (a torn part, an empty or
garbage file, a flipped bit in a data page or in a column name of the footer): the rerun must
quarantine the damage and redo exactly those units.
`test_kill_in_a_real_cli_process` repeats one kill with an exec'd `python -m lmsweep worker`.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmsweep
from lmsweep.cli import main

PROMPTS = ["Shakespeare was a", "My dog really wanted", "I skip across the", "Once upon a time",
           "The capital of France is", "No", "The animal didn't cross", "This game is great",
           "Search your feelings", "The park every morning", "A small cat", "Paris and Rome"]
BATCHES = 4                 # 12 prompts, batch_size 3
SEED = 8
# What the forkserver imports once (shared by every test module that forks workers from it).
PRELOAD = ["torch", "transformers", "pyarrow.dataset", "pandas", "lmsweep.cli", "lmsweep.runner.worker",
           "lmsweep.runner.loading", "lmsweep.runner.tasks", "lmsweep.jobs.model_cache", "lmsweep.results.load",
           "lmsweep.results.writer",
           "transformers.models.llama.modeling_llama", "transformers.models.auto.modeling_auto",
           "transformers.models.auto.tokenization_auto"]
COLUMNS = ["unit_id", "sequence_index", "prompt_text", "text", "token_ids", "finish_reason"]


def write_spec(path: Path, model: Path, prompts=PROMPTS, batch: int = 3, max_new_tokens: int = 8,
               name: str = "kill") -> Path:
    path.write_text(f"name: {name}\nmodels:\n  - {{alias: tiny, source: {model}}}\n"
                    f"prompts:\n  - name: p\n    items: {list(prompts)!r}\n"
                    f"task: generate\ndecoding:\n  max_new_tokens: {max_new_tokens}\n"
                    f"execution:\n  batch_size: {batch}\n  threads_per_rank: 1\n")
    return path


def plan_experiment(tmp: Path, model: Path, **kw) -> Path:
    """Plan a tiny spec (in-process) and return the experiment directory."""
    spec = write_spec(tmp / "spec.yaml", model, **kw)
    assert main(["plan", str(spec), "--output-dir", str(tmp / "runs")]) == 0
    return tmp / "runs" / kw.get("name", "kill")


def copy_plan(template: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("plan.json", "plan.parquet", "prompts.parquet"):
        shutil.copy(template / name, dest / name)
    return dest


def raw_rows(exp: Path) -> pd.DataFrame:
    """Every row of every non-temporary part file, read file by file: no dedupe, no quarantine."""
    parts = sorted((exp / "results" / "task=generate").glob("part-*.parquet"))
    tables = [pq.read_table(p, columns=["unit_id", "sequence_index"]) for p in parts]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=["unit_id", "sequence_index"])


def planned_ids(exp: Path) -> set[str]:
    return set(pq.read_table(exp / "plan.parquet", columns=["unit_id"]).column("unit_id").to_pylist())


def assert_exactly_once_and_identical(exp: Path, baseline: pd.DataFrame) -> None:
    raw = raw_rows(exp)
    counts = raw.groupby(["unit_id", "sequence_index"]).size()
    assert counts.max() == 1, f"units written twice: {counts[counts > 1].index.tolist()}"
    assert set(raw["unit_id"]) == planned_ids(exp)
    df = lmsweep.load(exp)[COLUMNS].sort_values(["unit_id", "sequence_index"], ignore_index=True)
    base = baseline[COLUMNS].sort_values(["unit_id", "sequence_index"], ignore_index=True)
    assert df["text"].tolist() == base["text"].tolist()           # byte-identical strings
    assert [list(t) for t in df["token_ids"]] == [list(t) for t in base["token_ids"]]
    pd.testing.assert_frame_equal(df, base)
    assert lmsweep.status(exp).complete
    leftovers = [p.name for p in (exp / "results").rglob(".*.tmp")]
    assert not leftovers, f"temporary files left after a completed rerun: {leftovers}"


# ---- the harness ---------------------------------------------------------------------------------------

def _child(exp: str, env: dict, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    from lmsweep.cli import main as cli

    rc = cli(["worker", "--plan", exp, "--element", "0"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


class Zygote:
    """Runs `lmsweep worker` in children forked from one pre-imported forkserver."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)
        self.runs = 0

    def start(self, exp: Path, kill_at: str | None = None, env: dict | None = None):
        """Start one worker run; returns (process, its log file)."""
        self.runs += 1
        log = exp / f"worker-{self.runs}.log"
        env = {"LMSWEEP_TEST_KILL_AT": kill_at or "", "OMP_NUM_THREADS": "1", **(env or {})}
        proc = self.ctx.Process(target=_child, args=(str(exp), env, str(log)))
        proc.start()
        return proc, log

    def run(self, exp: Path, kill_at: str | None = None, kill_after: float | None = None,
            timeout: float = 300, env: dict | None = None) -> tuple[int, float, str]:
        """(exit code, seconds, log) of one worker run; exit code -9 means SIGKILL."""
        start = time.monotonic()
        proc, log = self.start(exp, kill_at, env)
        proc.join(kill_after if kill_after is not None else timeout)
        if proc.is_alive() and kill_after is not None:
            proc.kill()
            proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            raise AssertionError(f"worker hung; log:\n{log.read_text()[-3000:]}")
        return proc.exitcode, time.monotonic() - start, log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def zygote():
    return Zygote()


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_llama) -> Path:
    return plan_experiment(tmp_path_factory.mktemp("kill-plan"), tiny_llama)


@pytest.fixture(scope="module")
def baseline(template, zygote, tmp_path_factory) -> tuple[pd.DataFrame, float]:
    exp = copy_plan(template, tmp_path_factory.mktemp("kill-base") / "kill")
    zygote.run(exp)                    # the first child pays for the forkserver's imports
    shutil.rmtree(exp)
    exp = copy_plan(template, exp)
    rc, seconds, log = zygote.run(exp)
    assert rc == 0, log
    df = lmsweep.load(exp)
    assert len(df) == len(PROMPTS) and len(list((exp / "results" / "task=generate").glob("part-*"))) == BATCHES
    return df, seconds


# ---- damage a killed run's results tree, the ways a real filesystem or a user can -----------------------

def _parts(exp: Path) -> list[Path]:
    return sorted((exp / "results" / "task=generate").glob("part-*.parquet"))


def damage(exp: Path, kind: str, rng: random.Random) -> set[str]:
    """Damage the tree; return the unit ids whose rows the damage destroyed (to be rerun)."""
    parts_dir = exp / "results" / "task=generate"
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = _parts(exp)
    if kind == "empty":
        (parts_dir / "part-e00000-r0000-empty.parquet").write_bytes(b"")
        return set()
    if kind == "garbage":
        (parts_dir / "part-e00000-r0000-garbage.parquet").write_bytes(rng.randbytes(3000))
        return set()
    victim = rng.choice(parts)
    lost = set(pq.read_table(victim, columns=["unit_id"]).column("unit_id").to_pylist())
    data = bytearray(victim.read_bytes())
    if kind == "torn":                 # what a copy cut short or a crash without ordered writes leaves
        victim.write_bytes(data[: len(data) // 2])
    elif kind == "schema":             # one flipped bit in a column name in the footer: the column would read
        footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")     # as all nulls, silently
        data[data.index(b"token_ids", footer) + 2] ^= 0x01
        victim.write_bytes(data)
    elif kind == "bitflip":            # one flipped bit inside the text column's data: page CRC catches it
        meta = pq.ParquetFile(victim).metadata.row_group(0)
        col = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema == "text")
        data[col.data_page_offset - 1] ^= 0x10
        victim.write_bytes(data)
    else:
        raise ValueError(kind)
    return lost


def schedule(rng: random.Random, baseline_seconds: float) -> list[tuple[str | None, float | None, str | None]]:
    """(kill point, wall-clock delay, damage) per trial: every hookable point once, then random ones."""
    points = ["load"] + [f"batch:{n}" for n in range(1, BATCHES + 1)] + [f"write:{n}" for n in range(1, BATCHES + 1)]
    trials: list[tuple[str | None, float | None, str | None]] = [(p, None, None) for p in points]
    trials += [(rng.choice(points), None, None) for _ in range(3)]
    trials += [(None, rng.uniform(0.05, 1.2 * baseline_seconds), None) for _ in range(6)]
    later = [p for p in points if p != "load" and int(p.split(":")[1]) >= 2]     # at least one part exists
    for kind in ("torn", "bitflip", "schema", "empty", "garbage"):
        trials.append((rng.choice(later), None, kind))
    return trials


def test_kill_9_at_random_points_then_rerun_gives_every_unit_once_and_identical(template, zygote, baseline,
                                                                                  tmp_path):
    base_df, base_seconds = baseline
    rng = random.Random(SEED)
    trials = schedule(rng, base_seconds)
    assert len(trials) >= 20
    seen_partial = 0
    for i, (point, delay, kind) in enumerate(trials):
        exp = copy_plan(template, tmp_path / f"trial-{i:02d}")
        what = f"trial {i}: kill at {point or f'{delay:.2f}s'}" + (f", then {kind}" if kind else "")
        rc, secs, log = zygote.run(exp, kill_at=point, kill_after=delay)
        print(f"{what}: exit {rc} after {secs:.1f}s")
        if point is not None:
            assert rc == -9, f"{what}: exit {rc}\n{log[-2000:]}"
        else:
            assert rc in (-9, 0), f"{what}: exit {rc}\n{log[-2000:]}"
        if point is not None and point.startswith(("batch:", "write:")):
            n = int(point.split(":")[1])
            assert len(_parts(exp)) == n - 1, what          # the killed batch's rows are not there
            if point.startswith("write:"):                   # ... its bytes sit in a temp file, never read
                assert len(list((exp / "results" / "task=generate").glob(".part-*.tmp"))) == 1, what
        done_after_kill = set(raw_rows(exp)["unit_id"])
        seen_partial += 0 < len(done_after_kill) < len(PROMPTS)
        lost = damage(exp, kind, rng) if kind else set()

        rc, secs, log = zygote.run(exp)
        print(f"  rerun: exit {rc} after {secs:.1f}s")
        assert rc == 0, f"{what}: rerun exit {rc}\n{log[-2000:]}"
        assert_exactly_once_and_identical(exp, base_df)
        # the rerun redid exactly what was missing: nothing finished before the kill ran again
        assert f"PROGRESS {len(done_after_kill - lost)} {len(PROMPTS)}" in log, what
        if kind:
            quarantined = [p for p in (exp / "quarantine").rglob("part-*") if not p.name.endswith(".reason")]
            assert len(quarantined) == 1, (what, quarantined)
            assert "quarantined unreadable part" in log, what
    assert seen_partial >= 10          # most kills really did land mid-element


def test_damaged_part_is_quarantined_by_results_load_and_status(template, zygote, baseline, tmp_path):
    """A reader (not only the worker) never takes a torn part for results: its units show as missing."""
    exp = copy_plan(template, tmp_path / "kill")
    rc, _, log = zygote.run(exp)
    assert rc == 0, log
    lost = damage(exp, "torn", random.Random(1))
    st = lmsweep.status(exp)
    assert (st.done, st.missing) == (len(PROMPTS) - len(lost), len(lost))
    assert len(lmsweep.load(exp)) == len(PROMPTS) - len(lost)
    moved = list((exp / "quarantine" / "results" / "task=generate").glob("part-*.parquet"))
    assert len(moved) == 1 and "magic bytes" in moved[0].with_name(moved[0].name + ".reason").read_text()


@pytest.mark.slow
def test_kill_in_a_real_cli_process(template, baseline, tmp_path):
    """The same guarantee when the worker is the exec'd `python -m lmsweep worker`, as schedulers run it."""
    exp = copy_plan(template, tmp_path / "kill")
    cmd = [sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env={**env, "LMSWEEP_TEST_KILL_AT": "write:3"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(_parts(exp)) == 2
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"PROGRESS 6 {len(PROMPTS)}" in proc.stdout
    assert_exactly_once_and_identical(exp, baseline[0])
