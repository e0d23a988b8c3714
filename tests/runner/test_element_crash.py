"""An element that fails as a whole (not one of its units): one line on `lmsweep run`'s stderr, a record in
EXP/errors/element-NNNNN.json for `lmsweep status`, a non-zero exit; problems that can be seen before the
model loads (results or errors directory not a directory, no space) are refused before it loads.

And `lmsweep worker`'s own arguments: an element the plan does not have, a batch size below 1.

Every test runs the real `lmsweep` command in a subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmsweep

PROMPTS = ["Shakespeare was a", "My dog really wanted", "I skip across the"]
RECORD_KEYS = {"element", "error", "exit_code", "host", "time"}


def write_spec(tmp: Path, model: Path, name: str = "crash") -> Path:
    spec = tmp / "spec.yaml"
    spec.write_text(f"name: {name}\nmodels:\n  - {{alias: tiny, source: {model}}}\n"
                    f"prompts:\n  - name: p\n    items: {PROMPTS!r}\n"
                    "task: generate\ndecoding:\n  max_new_tokens: 4\n"
                    "execution:\n  batch_size: 3\n  threads_per_rank: 1\n")
    return spec


def lmsweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmsweep", *args]


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def error_lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if "error" in x.lower()]


def record(exp: Path, element: int = 0) -> dict:
    path = exp / "errors" / f"element-{element:05d}.json"
    assert path.is_file(), sorted(p.name for p in (exp / "errors").iterdir()) if (exp / "errors").is_dir() else exp
    rec = json.loads(path.read_text())
    assert set(rec) == RECORD_KEYS and rec["element"] == element, rec
    assert isinstance(rec["host"], str) and rec["host"] and "T" in rec["time"], rec
    assert "\n" not in rec["error"], rec
    return rec


def element_log(exp: Path) -> str:
    return (exp / "logs" / "element-00000.log").read_text()


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str, run_may_refuse: bool = False) -> str:
    """One `element 0: error: ...` line on stderr (or, with `run_may_refuse`, the run's own `error: ...`
    when it refuses the experiment before starting any worker), naming `needles`; no traceback."""
    lines = error_lines(proc.stderr)
    starts = ("element 0: error: ", "error: ") if run_may_refuse else ("element 0: error: ",)
    assert len(lines) == 1 and lines[0].startswith(starts), proc.stdout + proc.stderr
    assert all(n in lines[0] for n in needles), lines
    assert "Traceback" not in proc.stdout + proc.stderr
    return lines[0]


def test_results_path_that_is_a_file_is_refused_before_the_model_loads_and_a_fixed_rerun_clears_the_record(
        tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama)
    exp = tmp_path / "runs" / "crash"
    exp.mkdir(parents=True)
    (exp / "results").write_text("not a directory")
    cmd = lmsweep_cmd("run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet")
    first = run(cmd)
    assert first.returncode == 2, first.stdout + first.stderr
    line = assert_one_error_line(first, str(exp / "results"), "is not a directory", run_may_refuse=True)
    if line.startswith("element 0: "):                  # refused by the worker, not by the run's own checks
        assert "loaded model" not in element_log(exp)
        rec = record(exp)
        assert rec["exit_code"] == 2 and "is not a directory" in rec["error"]

    (exp / "results").unlink()
    second = run(cmd)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not (exp / "errors" / "element-00000.json").exists()       # the element completed cleanly
    assert lmsweep.status(exp).complete


def test_errors_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama)
    exp = tmp_path / "runs" / "crash"
    exp.mkdir(parents=True)
    (exp / "errors").write_text("not a directory")
    proc = run(lmsweep_cmd("run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = assert_one_error_line(proc, str(exp / "errors"), "is not a directory", run_may_refuse=True)
    if line.startswith("element 0: "):
        assert "loaded model" not in element_log(exp)


FULL_FS = 'mount -t tmpfs -o size=1m lmsweep-full "$1" && shift && exec "$@"'
READ_ONLY = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _in_a_mount_namespace(tmp_path: Path, script: str) -> list[str]:
    """A command prefix that runs `script` (which mounts something on "$1", then execs the rest) in a
    private mount namespace: what it mounts is seen by that command alone and is gone when it ends."""
    ns = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else \
        ["unshare", "--user", "--map-root-user", "--mount"]
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("unshare") is None or subprocess.run(ns + ["sh", "-c", script, "sh", str(probe), "true"],
                                                         capture_output=True).returncode != 0:
        pytest.skip("cannot mount in a private mount namespace here (no unshare, or not allowed)")
    return ns + ["sh", "-c", script, "sh"]


def test_a_read_only_results_directory_is_refused_before_the_model_loads(tmp_path, tiny_llama):
    prefix = _in_a_mount_namespace(tmp_path, READ_ONLY)
    spec = write_spec(tmp_path, tiny_llama)
    exp = tmp_path / "runs" / "crash"
    (exp / "results").mkdir(parents=True)
    proc = run(prefix + [str(exp / "results"),
                         *lmsweep_cmd("run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet")])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_error_line(proc, str(exp / "results"), "Read-only file system")
    assert "loaded model" not in element_log(exp)
    assert record(exp)["exit_code"] == 2


def test_no_space_left_is_refused_before_the_model_loads(tmp_path, tiny_llama):
    prefix = _in_a_mount_namespace(tmp_path, FULL_FS)
    spec = write_spec(tmp_path, tiny_llama)
    out = tmp_path / "runs"
    out.mkdir()
    # the experiment lives on a 1 MiB filesystem (inside the namespace only): the plan fits, results would not;
    # a copy of it is kept outside for the checks below
    exp = tmp_path / "copy"
    script = 'src=$1; dst=$2; shift 2; "$@"; rc=$?; cp -r "$src" "$dst"; exit $rc'
    proc = run(prefix + [str(out), "sh", "-c", script, "sh", str(out / "crash"), str(exp),
                         *lmsweep_cmd("run", str(spec), "--output-dir", str(out), "--quiet")])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert_one_error_line(proc, "no space to write results", "MiB free")
    assert "loaded model" not in element_log(exp)
    assert record(exp)["exit_code"] == 2


@pytest.mark.slow
def test_an_unexpected_exception_in_the_worker_is_one_line_a_record_and_exit_1(tmp_path, tiny_llama):
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    good = (model / "tokenizer.json").read_bytes()
    (model / "tokenizer.json").write_text('{"version": "1.0", "cut sho')      # planning does not read it
    spec = write_spec(tmp_path, model)
    exp = tmp_path / "runs" / "crash"
    cmd = lmsweep_cmd("run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet")
    first = run(cmd)
    assert first.returncode == 1, first.stdout + first.stderr
    line = assert_one_error_line(first, "JSONDecodeError")
    assert "element 0 crashed" in first.stdout, first.stdout          # the summary says why nothing was done
    log = element_log(exp)
    assert "Traceback (most recent call last)" in log and "error: element 0 crashed: JSONDecodeError" in log
    rec = record(exp)
    assert rec["exit_code"] == 1 and rec["error"] in line

    (model / "tokenizer.json").write_bytes(good)
    second = run(cmd)
    assert second.returncode == 0, second.stdout + second.stderr
    assert not (exp / "errors" / "element-00000.json").exists()


def test_a_worker_killed_before_it_could_say_why_is_reported_and_recorded_by_the_run(tmp_path, tiny_llama):
    spec = write_spec(tmp_path, tiny_llama)
    exp = tmp_path / "runs" / "crash"
    proc = run(lmsweep_cmd("run", str(spec), "--output-dir", str(tmp_path / "runs"), "--quiet"),
               env={"LMSWEEP_TEST_KILL_AT": "load@KILL"})             # as the out-of-memory killer would
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_one_error_line(proc, "killed by SIGKILL")
    assert "element 0 crashed" in proc.stdout, proc.stdout
    assert record(exp)["exit_code"] == -9


@pytest.fixture(scope="module")
def planned(tmp_path_factory, tiny_llama) -> Path:
    tmp = tmp_path_factory.mktemp("worker-args")
    spec = write_spec(tmp, tiny_llama)
    proc = run(lmsweep_cmd("plan", str(spec), "--output-dir", str(tmp / "runs")))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "runs" / "crash"


@pytest.mark.parametrize("element", ["1", "-1", "123456789012345678901234567890"])
def test_worker_element_past_the_plan_is_a_usage_error(planned, element):
    proc = run(lmsweep_cmd("worker", "--plan", str(planned), "--element", element))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert lines == [lines[0]] and lines[0].startswith("error: --element: ") and "has 1 element(s)" in lines[0], \
        proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (planned / "errors").exists() and not (planned / "results").exists()


@pytest.mark.parametrize("size", ["0", "-3"])
def test_worker_batch_size_below_1_is_a_usage_error(planned, size):
    proc = run(lmsweep_cmd("worker", "--plan", str(planned), "--element", "0", "--batch-size", size))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "--batch-size" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (planned / "results").exists()
