"""Compaction: an element's parts merged into one, and a kill -9 at every step of the merge.

The tree is made by the real worker (tiny random Llama, 20 prompts, batch size 1: 20 parts, above the
worker's threshold of 16), stopped with `LMSWEEP_TEST_KILL_AT=compact:1` (lmsweep/core/kill_points.py) just after
it wrote the merged rows to a temporary file: the 20 parts and the debris of a merge. From there each
test kills the real `lmsweep results --compact` or the real `lmsweep worker` at one step of the merge
(1 merged bytes in a temp file, 2 manifest written, 3 merged file in place with the old parts, 4 half
the old parts deleted, 5 all deleted, manifest left) and checks that the tree reads every row exactly
once (lmsweep.load, and a bare read of the live files), that a resume skips every unit, and that the
next compaction (or worker run) finishes the merge.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmsweep
from helpers.cli import cli
from lmsweep.cli import main
from lmsweep.results.compact import WORKER_MIN_PARTS, compact_experiment
from lmsweep.results.integrity import check_part, live_parts, manifests
from lmsweep.results.load import done_unit_ids
from lmsweep.results.schema import schema_for
from lmsweep.runner import locks

PROMPTS = [f"Prompt number {i} says" for i in range(20)]
COLUMNS = ["unit_id", "sequence_index", "prompt_text", "text", "token_ids", "finish_reason"]
STEPS = [1, 2, 3, 4, 5]


def parts_dir(exp: Path) -> Path:
    return exp / "results" / "task=generate"


def parts(exp: Path) -> list[Path]:
    return sorted(parts_dir(exp).glob("part-*.parquet"))


def worker(exp: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LMSWEEP_TEST_KILL_AT": kill_at}
    return subprocess.run([sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"],
                          env=env, capture_output=True, text=True, timeout=600)


def rows(exp: Path) -> pd.DataFrame:
    return lmsweep.load(exp)[COLUMNS].sort_values(["unit_id", "sequence_index"], ignore_index=True)


def planned(exp: Path) -> set[str]:
    return set(pq.read_table(exp / "plan.parquet", columns=["unit_id"]).column("unit_id").to_pylist())


def assert_reads_once(exp: Path, baseline: pd.DataFrame) -> None:
    """Every row once, whoever reads: the loader, a bare read of the live files, and the resume's check."""
    live = pa.concat_tables([pq.read_table(p, columns=["unit_id", "sequence_index"])
                             for p in live_parts(parts_dir(exp))]).to_pandas()
    counts = live.groupby(["unit_id", "sequence_index"]).size()
    assert counts.max() == 1 and set(live["unit_id"]) == planned(exp), counts[counts > 1]
    pd.testing.assert_frame_equal(rows(exp), baseline)
    assert lmsweep.status(exp).complete
    assert done_unit_ids(exp, "generate") == planned(exp)     # what the worker's claim skips


def assert_one_part(exp: Path, baseline: pd.DataFrame) -> None:
    assert len(parts(exp)) == 1, [p.name for p in parts(exp)]
    assert not manifests(parts_dir(exp)) and not list(parts_dir(exp).glob(".*"))
    assert check_part(parts(exp)[0], schema_for("generate")) is None       # page checksums, recorded columns
    assert_reads_once(exp, baseline)


@pytest.fixture(scope="module")
def unmerged(tmp_path_factory, tiny_llama) -> tuple[Path, pd.DataFrame]:
    """20 parts of one finished element, and a merge killed at its first step."""
    tmp = tmp_path_factory.mktemp("compact")
    spec = tmp / "spec.yaml"
    spec.write_text(f"name: c\nmodels:\n  - {{alias: tiny, source: {tiny_llama}}}\n"
                    f"prompts:\n  - name: p\n    items: {PROMPTS!r}\n"
                    "task: generate\ndecoding:\n  max_new_tokens: 4\n"
                    "execution:\n  batch_size: 1\n  threads_per_rank: 1\n")
    assert main(["plan", str(spec), "--output-dir", str(tmp / "runs")]) == 0
    exp = tmp / "runs" / "c"
    proc = worker(exp, "compact:1")
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(parts(exp)) == len(PROMPTS) >= WORKER_MIN_PARTS
    assert len(list(parts_dir(exp).glob(".part-e00000-c*.tmp"))) == 1      # the killed merge's temp file
    return exp, rows(exp)


def copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("step", STEPS)
def test_results_compact_killed_at_each_step_reads_once_and_the_next_compaction_finishes(unmerged, tmp_path,
                                                                                        step):
    src, baseline = unmerged
    exp = copy(src, tmp_path / "c")
    proc = cli("results", str(exp), "--compact", env={"LMSWEEP_TEST_KILL_AT": f"compact:{step}"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    on_disk = parts(exp)
    if step >= 3:                                  # the merged file is in place, next to what it replaces
        assert len(manifests(parts_dir(exp))) == 1
        assert len(on_disk) == {3: len(PROMPTS) + 1, 4: len(PROMPTS) - len(PROMPTS) // 2, 5: 1}[step]
    else:
        assert len(on_disk) == len(PROMPTS)
    assert_reads_once(exp, baseline)

    proc = cli("results", str(exp), "--compact", check=True)
    # before step 3 the merge starts over; from step 3 on its merged file stands and recovery finishes it
    assert ("compacted 1 element(s)" in proc.stdout) == (step < 3), proc.stdout
    assert_one_part(exp, baseline)


@pytest.mark.slow
def test_worker_killed_mid_merge_resumes_without_rerunning_and_finishes_the_merge(unmerged, tmp_path):
    src, baseline = unmerged
    exp = copy(src, tmp_path / "c")
    proc = worker(exp, "compact:3")               # a resume: nothing to run, so straight to the merge
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert f"PROGRESS {len(PROMPTS)} {len(PROMPTS)}" in proc.stdout
    assert len(parts(exp)) == len(PROMPTS) + 1 and len(manifests(parts_dir(exp))) == 1
    assert_reads_once(exp, baseline)
    proc = worker(exp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"PROGRESS {len(PROMPTS)} {len(PROMPTS)}" in proc.stdout and "loaded model" not in proc.stderr
    assert_one_part(exp, baseline)


# ---- synthetic trees (benchmarks.results writes them with the real PartWriter) ---------------------------

@pytest.fixture()
def synthetic(tmp_path) -> Path:
    from benchmarks.results import synthetic_plan, write_parts
    from lmsweep.jobs.plan import write_plan

    plan = synthetic_plan(60, elements=3)
    exp = tmp_path / "bench"
    write_plan(plan, exp)
    write_parts(exp, plan, rows_per_file=4)
    return exp


def test_compaction_keeps_one_copy_of_a_unit_written_twice_and_merges_the_errors(synthetic):
    from lmsweep.results.writer import PartWriter

    first = parts(synthetic)[0]
    twice = pq.read_table(first).to_pylist()
    writer = PartWriter(synthetic, "generate", twice[0]["element"], 1)
    writer.write(twice)                            # a racing rerun wrote the same rows again
    writer.write_errors([{"unit_id": "not-planned", "element": twice[0]["element"], "rank": 1, "model": "m",
                          "error": "boom", "host": "h", "failed_at": twice[0]["finished_at"]}] * 2)
    writer.write_errors([{"unit_id": "other", "element": twice[0]["element"], "rank": 1, "model": "m",
                          "error": "bang", "host": "h", "failed_at": twice[0]["finished_at"]}])
    before = lmsweep.load(synthetic)
    errors_before = pq.read_table(synthetic / "errors").num_rows
    done, running = compact_experiment(synthetic)
    assert running == [] and {c.element for c in done} == {0, 1, 2}
    assert len(parts(synthetic)) == 3                   # one per element
    merged = pa.concat_tables([pq.read_table(p) for p in parts(synthetic)])
    assert merged.num_rows == len(before) == 60         # the second copy is gone from disk, not just hidden
    assert len(list((synthetic / "errors").glob("part-*.parquet"))) == 1
    assert pq.read_table(synthetic / "errors").num_rows == errors_before == 3   # error history kept as is
    pd.testing.assert_frame_equal(lmsweep.load(synthetic), before)


def test_results_compact_leaves_a_running_element_alone(synthetic):
    held = locks.acquire(synthetic, 1)                  # a worker is running element 1
    try:
        element1 = {p.name for p in parts(synthetic) if p.name.startswith("part-e00001-")}
        proc = cli("results", str(synthetic), "--compact", check=True)
        assert "compacted 2 element(s)" in proc.stdout and "left 1 running element(s) alone: 1" in proc.stdout
        assert {p.name for p in parts(synthetic) if p.name.startswith("part-e00001-")} == element1
        assert len([p for p in parts(synthetic) if not p.name.startswith("part-e00001-")]) == 2
    finally:
        held.release()
    assert lmsweep.status(synthetic).complete and len(lmsweep.load(synthetic)) == 60


def test_a_manifest_without_its_merged_file_changes_nothing(synthetic):
    """Killed between the manifest and the rename: the manifest names a file that does not exist yet."""
    d = parts_dir(synthetic)
    names = [p.name for p in parts(synthetic) if p.name.startswith("part-e00000-")]
    (d / "_compact-e00000-1-1.json").write_text(json.dumps({"merged": "part-e00000-c1-1.parquet",
                                                            "replaces": names}))
    assert len(lmsweep.load(synthetic)) == 60
    (d / "part-e00000-c1-1.parquet").write_bytes(parts(synthetic)[0].read_bytes())   # now it "exists"
    assert all(p.name not in names for p in live_parts(d))
