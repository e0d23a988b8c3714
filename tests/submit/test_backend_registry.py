"""A new scheduler backend is one class: registered, it is a profile's `scheduler:`, a spec's `execution.<name>`
block (validated with the spec's line numbers) and the backend `submit` renders, submits and records with,
with no other file changed (docs/adding-a-scheduler.md)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import field_validator

from lmsweep.submit import backends
from lmsweep.submit.backends import register
from lmsweep.submit.base import ArrayJob, RecordedJob, Scheduler, TaskState
from lmsweep.submit.options import SchedulerBlock, scheduler_name
from lmsweep.submit.render import body


class EchoBlock(SchedulerBlock):
    """`execution.echo`: its own names for two common options."""

    project: str | None = None
    lane: str | None = None
    renamed = {"project": "account", "lane": "queue"}

    @field_validator("project", "lane")
    @classmethod
    def _names(cls, v: str | None, info) -> str | None:
        return v if v is None else scheduler_name(v, info.field_name)   # it goes into a directive


class EchoScheduler(Scheduler):
    """Submits by echoing a job id; every task it was given is finished."""

    name = "echo"
    script_suffix = ".echo"
    block = EchoBlock
    account_directive = "#ECHO -P"

    def render(self, job: ArrayJob) -> str:
        head = [f"#ECHO -P {job.account}", f"#ECHO -L {job.queue}", f"#ECHO -N {job.n_tasks}"]
        return "\n".join(["#!/bin/bash", *head, *body(job, self.profile, "${ECHO_INDEX:-0}", "echo")]) + "\n"

    def submit_command(self, script: Path) -> list[str]:
        return ["/bin/echo", "echo-42"]

    def parse_job_id(self, stdout: str) -> str:
        return stdout.strip()

    def query(self, jobs: list[RecordedJob]) -> dict[tuple[str, int], TaskState]:
        return {(j.job_id, i): TaskState(j.job_id, i, "finished", "DONE", f"{j.job_id}.{i}")
                for j in jobs for i in range(j.n_tasks)}

    def cancel_command(self, job_ids: list[str]) -> list[str]:
        return ["/bin/true", *job_ids]


PROFILE = """\
name: echo-site
scheduler: echo
gpus_per_node: 0
cpus_per_node: 2
ranks_per_node: 1
default_queue: slow
queues:
  slow: {min_nodes: 1, max_nodes: 2, max_walltime: "02:00:00", max_queued: 100, max_running: null,
         max_concurrent_subjobs: null, preemptable: false}
  fast: {min_nodes: 1, max_nodes: 1, max_walltime: "01:00:00", max_queued: 10, max_running: null,
         max_concurrent_subjobs: null, preemptable: false}
filesystems: []
launcher: mpiexec -n {nranks}
gpu_bind: ""
env_setup: []
max_array_size: null
"""

SPEC = """\
name: echoed
output_dir: {out}
models:
  - {{alias: tiny, source: {model}}}
prompts: ["Once upon a time", "The capital of France is"]
task: generate
decoding: {{max_new_tokens: 4}}
execution:
  walltime: "00:30:00"
  echo:
    project: {project}
    lane: fast
"""


@pytest.fixture
def echo_backend():
    backends.backends()                       # the shipped ones first, as a real run would have them
    register(EchoScheduler)
    yield EchoScheduler
    backends.unregister("echo")


def files(tmp_path: Path, model: Path, project: str = "MYPROJ") -> tuple[Path, Path]:
    profile = tmp_path / "echo-site.yaml"
    profile.write_text(PROFILE)
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(out=json.dumps(str(tmp_path / "runs")), model=json.dumps(str(model)),
                                project=project))
    return profile, spec


def test_a_registered_backend_renders_submits_and_records(tmp_path, tiny_llama, echo_backend, capsys):
    from lmsweep.cli import main

    profile, spec = files(tmp_path, tiny_llama)
    assert main(["submit", str(spec), "--system", str(profile), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # the block's own names arrive as the common options: project -> account, lane -> queue
    assert "#ECHO -P MYPROJ" in out and "#ECHO -L fast" in out and "array-00.echo" in out
    assert main(["submit", str(spec), "--system", str(profile), "--account", "OTHER"]) == 0
    (record,) = (tmp_path / "runs" / "echoed" / "jobs").glob("sub-*/submission.json")
    sub = json.loads(record.read_text())
    assert sub["scheduler"] == "echo" and [a["job_id"] for a in sub["arrays"]] == ["echo-42"]
    assert (sub["options"]["account"], sub["options"]["queue"], sub["options"]["walltime"]) == (
        "OTHER", "fast", "00:30:00")                                       # the flag wins over the block
    assert "#ECHO -P OTHER" in (record.parent / "array-00.echo").read_text()


def test_its_block_is_checked_with_the_spec_line(tmp_path, tiny_llama, echo_backend, capsys):
    from lmsweep.cli import main

    _, spec = files(tmp_path, tiny_llama, project='"a;id"')
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"spec\.yaml:11: execution\.echo\.project: project 'a;id' must be", err), err


def test_an_unknown_block_key_and_an_unknown_scheduler_block_are_refused(tmp_path, tiny_llama, echo_backend,
                                                                         capsys):
    from lmsweep.cli import main

    _, spec = files(tmp_path, tiny_llama)
    spec.write_text(spec.read_text().replace("lane: fast", "lanes: fast"))
    assert main(["validate", str(spec)]) == 2
    assert "spec.yaml:12: execution.echo.lanes: unknown key" in capsys.readouterr().err
    spec.write_text(spec.read_text().replace("  echo:", "  lsf:"))
    assert main(["validate", str(spec)]) == 2
    assert "spec.yaml:10: execution.lsf: unknown key" in capsys.readouterr().err


def test_the_account_it_requires_is_asked_for(tmp_path, tiny_llama, echo_backend, capsys):
    from lmsweep.cli import main

    profile, spec = files(tmp_path, tiny_llama)
    spec.write_text(spec.read_text().replace("    project: MYPROJ\n", ""))
    assert main(["submit", str(spec), "--system", str(profile), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "execution.echo.project" in err and "`#ECHO -P`" in err and "--account" in err


def test_a_second_backend_of_the_same_name_is_refused(echo_backend):
    class Other(EchoScheduler):
        pass

    with pytest.raises(ValueError, match="registered twice"):
        register(Other)
    with pytest.raises(TypeError, match="Scheduler subclass"):
        register(EchoBlock)


def test_shared_code_names_no_scheduler():
    """Only the backend modules (and profiles) may name a scheduler; shared code asks the registry."""
    submit = Path(backends.__file__).parents[1]
    shared = [submit / name for name in ("cli.py", "options.py", "packing.py", "render.py", "tracking.py",
                                         "jobs_dir.py", "systems.py", "base.py", "status.py", "watch.py")]
    for path in [*shared, submit.parent / "lmsweep" / "regress.py"]:
        assert not re.search(r"""["'](pbs|slurm|local)["']""", path.read_text()), path
