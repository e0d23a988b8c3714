"""`lmsweep run` stopped from outside by SIGTERM or SIGINT: it forwards the stop to its worker, waits for
it (the worker finishes its batch and exits 3), says so and exits 3; a rerun finishes the rest, every
unit exactly once.

Each test starts a real `lmsweep run` in a session of its own (so that its process group can be
signalled as a whole, like a terminal's foreground job), waits until the first part file is written
(mid-run: 12 units of 120 new tokens at batch size 1 on the tiny model take seconds after that) and
then signals it: the run process alone, its whole process group, or SIGINT to the group as a
terminal's Ctrl-C does.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lmsweep

PROMPTS = ["Shakespeare was a", "My dog really wanted", "I skip across the", "Once upon a time",
           "The capital of France is", "No", "The animal didn't cross", "This game is great",
           "Search your feelings", "The park every morning", "A small cat", "Paris and Rome"]
PREEMPTED = "preempted; rerun the same command to continue where it stopped"

pytestmark = pytest.mark.slow


def write_spec(path: Path, model: Path, max_new_tokens: int = 120, ranks: int = 1, batch: int = 1) -> Path:
    path.write_text(f"name: sig\nmodels:\n  - {{alias: tiny, source: {model}}}\n"
                    f"prompts:\n  - name: p\n    items: {PROMPTS!r}\n"
                    f"task: generate\ndecoding:\n  max_new_tokens: {max_new_tokens}\n"
                    f"execution:\n  batch_size: {batch}\n  threads_per_rank: 1\n  ranks_per_element: {ranks}\n")
    return path


def first_part_written(exp: Path) -> bool:
    return bool(list((exp / "results").rglob("part-*.parquet")))


def run_command(spec: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lmsweep", "run", str(spec), "--output-dir", str(out), "--quiet"]


def _foreground_job() -> None:
    # A shell running a script in the background ignores SIGINT for its children; a terminal's
    # foreground job has the default disposition, which is what these tests stand for.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def raw_unit_ids(exp: Path) -> list[str]:
    """unit_id of every row of every part file, read file by file (no de-duplication)."""
    parts = sorted((exp / "results" / "task=generate").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p, columns=["unit_id"]) for p in parts]).column("unit_id").to_pylist() \
        if parts else []


def stop_run_mid_way(tmp_path: Path, model: Path, send, ready=first_part_written, **spec
                     ) -> tuple[Path, list[str], subprocess.CompletedProcess]:
    """Start `lmsweep run`, wait until `ready(exp)` (its first part file), call `send(pid, exp)`; return the
    experiment, the run's command and its result."""
    spec = write_spec(tmp_path / "spec.yaml", model, **spec)
    cmd = run_command(spec, tmp_path / "runs")
    exp = tmp_path / "runs" / "sig"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            preexec_fn=_foreground_job)
    try:
        deadline = time.monotonic() + 300
        while not ready(exp):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"not {ready.__name__} after 300 s"
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be signalled"
        sent = time.monotonic()
        send(proc.pid, exp)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        try:                                   # whatever is left of it (the old code left its worker running)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    print(f"exit {proc.returncode} {took:.1f}s after the signal")
    return exp, cmd, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def element_log(exp: Path) -> str:
    logs = sorted((exp / "logs").glob("element-*.log"))
    assert logs
    return "".join(p.read_text() for p in logs)


def assert_preempted_then_rerun_completes(exp: Path, cmd: list[str], first: subprocess.CompletedProcess,
                                         received: str, ranks: int = 1) -> None:
    text = first.stdout + first.stderr
    assert first.returncode == 3, text
    assert PREEMPTED in first.stdout, text
    assert f"{received} received: stopping 1 worker(s) after their current batch" in first.stderr, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    log = element_log(exp)
    assert "BrokenPipeError" not in log and "Traceback" not in log, log
    # each rank was told once (by the run: SIGTERM), finished its batch and exited 3 before the run returned
    assert log.count("received: finishing the current batch") == ranks, log
    assert log.count("SIGTERM received: finishing the current batch") == ranks, log
    for rank in range(ranks):
        assert f"preempted: element 0 rank {rank} stopped after" in log, log
    assert_rerun_completes(exp, cmd)


def assert_rerun_completes(exp: Path, cmd: list[str], at_least: int = 1) -> None:
    done = lmsweep.status(exp).done
    assert at_least <= done < len(PROMPTS), f"{done} units done: the signal did not land mid-run"
    assert len(raw_unit_ids(exp)) == done                       # the batch in flight was written once
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"running {len(PROMPTS) - done} unit(s)" in second.stdout, second.stdout
    df = lmsweep.load(exp)
    assert len(df) == len(PROMPTS) and df["unit_id"].is_unique
    raw = raw_unit_ids(exp)
    assert len(raw) == len(PROMPTS) and len(set(raw)) == len(PROMPTS)
    assert lmsweep.status(exp).complete


def test_sigterm_to_the_run_process_alone_is_forwarded_to_its_worker_and_exits_3(tmp_path, tiny_llama):
    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, lambda pid, _: os.kill(pid, signal.SIGTERM))
    assert_preempted_then_rerun_completes(exp, cmd, first, "SIGTERM")


def test_sigterm_to_the_whole_process_group_of_the_run_exits_3(tmp_path, tiny_llama):
    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, lambda pid, _: os.killpg(pid, signal.SIGTERM))
    assert_preempted_then_rerun_completes(exp, cmd, first, "SIGTERM")


def test_ctrl_c_sigint_to_the_foreground_process_group_exits_3(tmp_path, tiny_llama):
    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, lambda pid, _: os.killpg(pid, signal.SIGINT))
    assert_preempted_then_rerun_completes(exp, cmd, first, "SIGINT")


def test_sigterm_to_a_run_of_two_mpi_ranks_reaches_each_rank_once(tmp_path, tiny_llama):
    if not Path(sys.executable).with_name("mpiexec").exists():
        pytest.skip("no mpiexec next to this Python (pip install mpich)")
    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, lambda pid, _: os.kill(pid, signal.SIGTERM), ranks=2)
    assert_preempted_then_rerun_completes(exp, cmd, first, "SIGTERM", ranks=2)


def test_kill_9_of_the_run_leaves_a_worker_that_stops_after_its_batch_instead_of_a_broken_pipe(tmp_path,
                                                                                                tiny_llama):
    """The run dies at once (nothing can catch SIGKILL); its worker, in a process group of its own, notices
    that nobody reads its output, finishes its batch and exits 3 instead of dying of BrokenPipeError."""
    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, lambda pid, _: os.kill(pid, signal.SIGKILL))
    assert first.returncode == -signal.SIGKILL
    lock = os.open(exp / "locks" / "element-00000.lock", os.O_RDWR)
    try:                                      # the worker holds the element's lock until it exits
        deadline = time.monotonic() + 120
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, element_log(exp)
                time.sleep(0.1)
    finally:
        os.close(lock)
    log = element_log(exp)
    assert "BrokenPipeError" not in log and "Traceback" not in log, log
    assert "the reader of this worker's output is gone" in log and "preempted: element 0 rank 0" in log, log
    assert_rerun_completes(exp, cmd)


def test_a_second_sigterm_kills_the_worker_at_once_and_still_exits_3(tmp_path, tiny_llama):
    """Batches of 4 × 200 tokens (seconds each): the first TERM lands inside the first batch, the second
    one as soon as the worker has acknowledged the first; the run kills its worker then and exits 3."""
    def model_loaded(exp: Path) -> bool:       # the logs folder is made before the element's log file
        return any((exp / "logs").glob("element-*.log")) and "loaded model" in element_log(exp)

    def twice(pid: int, exp: Path) -> None:
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "SIGTERM received: finishing the current batch" not in element_log(exp):
            assert time.monotonic() < deadline, element_log(exp)
            time.sleep(0.01)
        os.kill(pid, signal.SIGTERM)

    exp, cmd, first = stop_run_mid_way(tmp_path, tiny_llama, twice, ready=model_loaded, max_new_tokens=200,
                                       batch=4)
    text = first.stdout + first.stderr
    assert first.returncode == 3 and PREEMPTED in first.stdout, text
    assert "SIGTERM received again: killing 1 worker(s) now" in first.stderr, text
    log = element_log(exp)
    assert "Traceback" not in text and "BrokenPipeError" not in log and "preempted: element 0" not in log, log
    assert_rerun_completes(exp, cmd, at_least=0)
