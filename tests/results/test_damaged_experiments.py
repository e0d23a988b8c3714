"""Damaged experiment directories (issue 20): every verb that reads an experiment meets each damage with
one line `error: <file>: ...` and exit 2, or skips what it cannot read and says so; never a traceback.

One small real experiment (tiny random Llama, 2 elements, a recorded local submission) is built once; each
case copies it, damages the copy and runs every verb on its own fresh copy, in this process (`main` returns
the exit code), except `worker`, which installs signal handlers and so runs as a real subprocess.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import lmsweep

SPEC = """
name: dmg
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Shakespeare was a", "Once upon a time", "No"]
task: generate
decoding:
  max_new_tokens: 3
execution:
  batch_size: 2
  max_units_per_element: 2
"""
TASK_DIR = "results/task=generate"


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llama) -> Path:
    """tmp/spec.yaml and tmp/runs/dmg: complete (3 units in 2 elements), with one recorded local submission
    whose tasks both ended with exit 0."""
    from helpers.task_runs import run_spec
    from lmsweep.jobs.plan import read_plan
    from lmsweep.submit.base import scheduler_for
    from lmsweep.submit.cli import load_profile
    from lmsweep.submit.jobs_dir import ArrayRecord, Submission, create
    from lmsweep.submit.options import Flags, resolve_options

    root = tmp_path_factory.mktemp("damaged")
    exp = run_spec(root, SPEC.format(model=tiny_llama))
    plan = read_plan(exp)
    sched = scheduler_for(load_profile("local", "system"))
    opts = resolve_options(sched, Flags(), execution=plan.execution)
    directory = create(exp, "sub-0001")
    sub = Submission(name="sub-0001", directory=directory, kind="submit", system="local", scheduler="local",
                     plan_created=plan.meta["created"], options=opts.record(), packing=["by hand"],
                     arrays=[ArrayRecord(0, "array-00.sh", [0, 1], job_id="local-999999999", submitted_at=1.0)])
    sub.save()
    (directory / "state").mkdir()
    for task in (0, 1):
        (directory / "state" / f"{task}.exit").write_text("0\n")
    return root


# ---- the damages: each takes a fresh copy of the experiment and returns (experiment, the file to name) ---

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("not a directory\n")


def plan_json_truncated(exp):
    truncate(exp / "plan.json")
    return exp, "plan.json"


def plan_json_a_list(exp):
    (exp / "plan.json").write_text("[]\n")
    return exp, "plan.json"


def plan_json_wrong_shape(exp):
    meta = json.loads((exp / "plan.json").read_text())
    meta["spec"] = []                                     # was: 'list' object has no attribute 'get'
    (exp / "plan.json").write_text(json.dumps(meta))
    return exp, "plan.json"


def plan_json_element_wrong_shape(exp):
    meta = json.loads((exp / "plan.json").read_text())
    meta["elements"][0] = {"index": "zero"}
    (exp / "plan.json").write_text(json.dumps(meta))
    return exp, "plan.json"


def plan_json_missing(exp):
    (exp / "plan.json").unlink()
    return exp, "plan.json"


def plan_json_a_directory(exp):
    (exp / "plan.json").unlink()
    (exp / "plan.json").mkdir()
    return exp, "plan.json"


def plan_parquet_missing(exp):
    (exp / "plan.parquet").unlink()
    return exp, "plan.parquet"


def plan_parquet_truncated(exp):
    truncate(exp / "plan.parquet")
    return exp, "plan.parquet"


def plan_parquet_wrong_table(exp):
    shutil.copy(exp / "prompts.parquet", exp / "plan.parquet")
    return exp, "plan.parquet"


def prompts_parquet_missing(exp):
    (exp / "prompts.parquet").unlink()
    return exp, "prompts.parquet"


def prompts_parquet_truncated(exp):
    truncate(exp / "prompts.parquet")
    return exp, "prompts.parquet"


def submission_truncated(exp):
    truncate(exp / "jobs/sub-0001/submission.json")
    return exp, "submission.json"


def submission_wrong_shape(exp):
    path = exp / "jobs/sub-0001/submission.json"
    data = json.loads(path.read_text())
    data["arrays"] = {"0": data["arrays"][0]}
    path.write_text(json.dumps(data))
    return exp, "submission.json"


def manifest_empty(exp):
    (exp / TASK_DIR / "_compact-e00000-1.json").write_text("{}")
    return exp, "_compact-e00000-1.json"


def results_a_file(exp):
    replace_with_file(exp / "results")
    return exp, "results"


def task_dir_a_file(exp):
    replace_with_file(exp / TASK_DIR)
    return exp, "task=generate"


def errors_a_file(exp):
    shutil.rmtree(exp / "errors", ignore_errors=True)
    (exp / "errors").write_text("not a directory\n")
    return exp, "errors"


def meta_a_file(exp):
    replace_with_file(exp / "meta")
    return exp, "meta"


def part_a_directory(exp):
    part = next((exp / TASK_DIR).glob("part-e00000-*.parquet"))
    part.unlink()
    part.mkdir()
    return exp, part.name


MOUNTS: list[Path] = []


def _tmpfs(exp: Path, options: str) -> Path:
    """A copy of `exp` on its own tmpfs (root only), for a read-only or full filesystem."""
    mnt = exp.parent / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); needs root")
    MOUNTS.append(mnt)
    shutil.copytree(exp, mnt / exp.name, symlinks=True)
    return mnt / exp.name


def read_only(exp):
    new = _tmpfs(exp, "size=8m")
    subprocess.run(["mount", "-o", "remount,ro", str(new.parent)], check=True)
    return new, str(new)


def disk_full(exp):
    new = _tmpfs(exp, "size=2m")
    fd = os.open(new.parent / "filler", os.O_WRONLY | os.O_CREAT)     # fill it to the last byte
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return new, str(new)


@pytest.fixture(scope="module", autouse=True)
def _unmount():
    yield
    for mnt in reversed(MOUNTS):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---- the verbs -------------------------------------------------------------------------------------------

def verbs(root: Path, exp: Path, work: Path) -> dict[str, list[str]]:
    e, pristine = str(exp), str(root / "runs" / "dmg")
    return {
        "status": ["status", e],
        "results": ["results", e],
        "results --sql": ["results", e, "--sql", "SELECT count(*) AS n FROM results"],
        "results --compact": ["results", e, "--compact"],
        "report": ["report", e],
        "worker": ["worker", "--plan", e, "--element", "0"],          # run by `worker_runs`
        "cancel": ["cancel", e],
        "resubmit": ["resubmit", e, "--dry-run"],
        "plot": ["plot", "hidden_states", e],
        "compare": ["compare", pristine, e, "--report-dir", str(work / "reports")],
        "compare current": ["compare", e, pristine, "--report-dir", str(work / "reports")],
        "regress": ["regress", str(root / "spec.yaml"), "--baseline", e, "--output-dir", str(work / "regress"),
                    "--quiet"],
    }


ERROR = "error"          # exit 2, exactly one `error:` line, naming the damaged file
USAGE = "usage"          # exit 2, one `error:` line: a usage error that comes first (plot hidden_states on generate)
OK = "ok"                # exit 0 or 1, no `error:` line (the verb does not read the damaged file)
SKIP = "skip"            # exit 0 or 1, and a `skipped` / `warning` line naming the file
NA = "n/a"               # not run: the verb does not read what is damaged (regress would only run the spec)


@dataclass
class Case:
    damage: Callable
    expect: dict[str, str] = field(default_factory=dict)     # verb → ERROR/USAGE/OK/SKIP; ERROR if absent
    default: str = ERROR
    names: dict[str, str] = field(default_factory=dict)      # verb → what its line names, if not the damage's

    def wants(self, verb: str) -> str:
        return self.expect.get(verb, self.default)


def PLAN(damage):
    """Damage to the plan: every verb reads it first and stops there, except `cancel`, which needs only the
    submission records (cancelling the jobs of a broken experiment must still work)."""
    return Case(damage, {"cancel": OK})


def LAYOUT(damage):
    """A directory of the experiment is a file: refused by every verb that reads the plan (read_plan checks
    the layout), so no verb takes `results` being a file for "no results yet"."""
    return Case(damage, {"cancel": OK})


# Damage outside the plan: the verbs that never read that file run normally.
NOT_JOBS = {**{v: OK for v in ("results", "results --sql", "results --compact", "report", "worker", "compare",
                               "compare current")}, "plot": USAGE, "regress": NA}
# Damage in the results tree that a reader can step around: it does, and says what it skipped.
STEP_AROUND = {"cancel": OK, "plot": USAGE, "regress": NA}
READERS_OK = {v: OK for v in ("status", "results", "results --sql", "cancel", "resubmit", "compare",
                              "compare current")}
CASES = {
    "plan.json truncated": PLAN(plan_json_truncated),
    "plan.json a list": PLAN(plan_json_a_list),
    "plan.json spec a list": PLAN(plan_json_wrong_shape),
    "plan.json element wrong": PLAN(plan_json_element_wrong_shape),
    "plan.json missing": PLAN(plan_json_missing),
    "plan.json a directory": PLAN(plan_json_a_directory),
    "plan.parquet missing": PLAN(plan_parquet_missing),
    "plan.parquet truncated": PLAN(plan_parquet_truncated),
    "plan.parquet another table": PLAN(plan_parquet_wrong_table),
    "prompts.parquet missing": PLAN(prompts_parquet_missing),
    "prompts.parquet truncated": PLAN(prompts_parquet_truncated),
    "submission.json truncated": Case(submission_truncated, NOT_JOBS),
    "submission.json wrong shape": Case(submission_wrong_shape, NOT_JOBS),
    "compaction manifest {}": Case(manifest_empty, STEP_AROUND, default=SKIP),
    "a part a directory": Case(part_a_directory, STEP_AROUND, default=SKIP),
    "results/ a file": LAYOUT(results_a_file),
    "results/task=generate a file": LAYOUT(task_dir_a_file),
    "errors/ a file": LAYOUT(errors_a_file),
    "meta/ a file": LAYOUT(meta_a_file),
    # read-only or full: readers work; a verb that must write there says where it cannot (report writes
    # EXP/report.html, compaction and the worker EXP/locks and results)
    "read-only filesystem": Case(read_only, {**READERS_OK, "plot": USAGE, "regress": NA},
                                 names={"report": "dmg/report.html: Read-only file system"}),
    "disk full": Case(disk_full, {**READERS_OK, "plot": USAGE, "regress": NA,      # element 0 is done and has
                                  "results --compact": OK, "worker": OK}),      # one part: nothing to write
}


def run_in_process(argv: list[str], capsys) -> tuple[int | str, str]:
    from lmsweep.cli import main

    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException:                  # what a user would see as a traceback
        rc = "traceback"
        print(traceback.format_exc(), file=sys.stderr)
    out, err = capsys.readouterr()
    return rc, out + err


# `lmsweep worker` installs signal handlers (never in a test process), so the worker runs in a real subprocess:
# one for every case at once (a fresh interpreter per case would cost seconds each), each call its own `main`.
WORKER_DRIVER = """
import contextlib, io, json, sys, traceback
from lmsweep.cli import main
out = {}
for case, exp in json.loads(sys.argv[1]).items():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            rc = main(["worker", "--plan", exp, "--element", "0"])
        except SystemExit as e:
            rc = e.code
        except BaseException:
            traceback.print_exc()
            rc = "traceback"
    out[case] = [rc, buf.getvalue()]
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def worker_runs(base, tmp_path_factory) -> dict[str, tuple]:
    """case → (exit code, output, the file to name) of `lmsweep worker --element 0` on its damaged copy."""
    root = tmp_path_factory.mktemp("worker")
    exps, named = {}, {}
    for i, (case, spec) in enumerate(CASES.items()):
        copy = shutil.copytree(base / "runs" / "dmg", root / f"case{i}" / "runs" / "dmg", symlinks=True)
        try:
            exps[case], named[case] = (str(x) for x in spec.damage(copy))
        except pytest.skip.Exception:
            continue
    result = root / "result.json"
    proc = subprocess.run([sys.executable, "-c", WORKER_DRIVER, json.dumps(exps), str(result)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "LMSWEEP_PREEMPT_GRACE": "1"})
    assert proc.returncode == 0 and result.is_file(), proc.stdout + proc.stderr
    return {case: (rc, text, named[case]) for case, (rc, text) in json.loads(result.read_text()).items()}


def check(verb: str, want: str, named: str, rc, text: str) -> str | None:
    """Why (rc, text) is not what `want` allows; None when it is."""
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    if "Traceback" in text or rc == "traceback":
        return f"traceback:\n{text[-3000:]}"
    if want in (ERROR, USAGE):
        if rc != 2 or len(errors) != 1:
            return f"expected exit 2 and one error line, got exit {rc}:\n{text[-2000:]}"
        if want == ERROR and named not in errors[0]:
            return f"the error line does not name {named!r}: {errors[0]}"
        return None
    if rc not in (0, 1) or errors:
        return f"expected exit 0/1 and no error line, got exit {rc}:\n{text[-2000:]}"
    if want == SKIP and not any(named in line and ("skip" in line or "warning" in line)
                                for line in text.splitlines()):
        return f"expected a line saying it skipped {named!r}:\n{text[-2000:]}"
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_every_verb_meets_a_damaged_experiment_with_one_line_and_exit_2(case, base, worker_runs, tmp_path, capsys):
    spec = CASES[case]
    if case not in worker_runs:
        pytest.skip("cannot mount a tmpfs here; needs root")
    failures = {}
    for verb in verbs(base, base, tmp_path):
        if spec.wants(verb) == NA:
            continue
        if verb == "worker":
            rc, text, named = worker_runs[case]
        else:
            work = tmp_path / verb.replace(" ", "_").replace("-", "")
            copy = shutil.copytree(base / "runs" / "dmg", work / "runs" / "dmg", symlinks=True)
            exp, named = spec.damage(copy)
            rc, text = run_in_process(verbs(base, exp, work)[verb], capsys)
        problem = check(verb, spec.wants(verb), spec.names.get(verb, named), rc, text)
        if problem:
            failures[verb] = problem
    if spec.wants("status") == ERROR:    # and in Python: the notebook API raises the same one error
        from lmsweep.errors import ExperimentError
        from lmsweep.submit.jobs_dir import load_submissions

        api = lmsweep.status if "submission" not in case else load_submissions
        exp, named = spec.damage(shutil.copytree(base / "runs" / "dmg", tmp_path / "api" / "dmg", symlinks=True))
        with pytest.raises(ExperimentError) as e:
            api(exp)
        assert named in e.value.file and str(e.value).startswith(e.value.file), str(e.value)
    assert not failures, f"{case}: " + "\n\n".join(f"[{v}] {p}" for v, p in failures.items())


def test_status_and_the_run_summary_show_an_element_crash_record_and_skip_a_damaged_one(base, tmp_path, capsys):
    """A worker whose element failed as a whole leaves EXP/errors/element-NNNNN.json (runner/worker.py): status
    and the run's summary line say so instead of "0 failed"; a stale record of a finished element is not shown,
    a damaged one is skipped and named."""
    from lmsweep.results.cli import report

    exp = shutil.copytree(base / "runs" / "dmg", tmp_path / "dmg", symlinks=True)
    for part in (exp / TASK_DIR).glob("part-e00000-*"):          # element 0 never wrote a row
        part.unlink()
    record = {"element": 0, "error": "RuntimeError: CUDA error: an illegal memory access was encountered",
              "exit_code": 1, "host": "node07", "time": "2026-12-07T04:00:00+00:00"}
    (exp / "errors").mkdir(exist_ok=True)
    (exp / "errors" / "element-00000.json").write_text(json.dumps(record))
    (exp / "errors" / "element-00001.json").write_text(json.dumps({**record, "element": 1}))   # stale: 1 is done

    st = lmsweep.status(exp)
    assert (st.done, st.failed, st.missing) == (1, 0, 2)
    assert list(st.crashed) == [0] and "illegal memory access" in st.crashed[0] and "node07" in st.crashed[0]
    rc, text = run_in_process(["status", str(exp)], capsys)
    assert rc == 1, text
    line = next(x for x in text.splitlines() if x.startswith("1/3 done"))
    assert line.startswith("1/3 done, 0 failed, 2 missing; element 0 crashed: RuntimeError: CUDA error: an "
                           "illegal memory access was encountered (exit 1"), line
    assert "element 1" not in text and "quarantine" not in text and not (exp / "quarantine").exists()
    capsys.readouterr()
    assert report(exp, quiet=True) == 1
    out = capsys.readouterr().out
    assert "1/3 units done, 0 failed, 2 missing; element 0 crashed: RuntimeError" in out.replace("\n", " ")

    rc, text = run_in_process(["results", str(exp), "--csv"], capsys)
    assert rc == 0 and "note: element 0 crashed: RuntimeError: CUDA error" in text and "element 1" not in text, text

    (exp / "errors" / "element-00000.json").write_text('{"element": 0, "err')          # cut short
    rc, text = run_in_process(["status", str(exp)], capsys)
    assert rc == 1 and "Traceback" not in text and "crashed" not in text.replace("crash record", ""), text
    assert any(x.startswith("warning: skipped damaged crash record") and "element-00000.json" in x
               for x in text.splitlines()), text
    assert lmsweep.status(exp).skipped and not lmsweep.status(exp).crashed
