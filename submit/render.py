"""The script body every backend shares: pure text from an ArrayJob (the backend adds its directives).

Safety rule: the only values written into a script unquoted are integers, names validated to a
plain charset (experiment, queue, account) and the system profile's own lines (launcher, GPU
binding, environment setup), which are configuration like code. Every path and every other
string goes through `shlex.quote`; prompts and model names never reach a script at all (the
worker reads them from the plan).
"""
from __future__ import annotations

from shlex import quote

from lmsweep.submit.base import ArrayJob
from lmsweep.submit.preflight import EXIT_PREFLIGHT  # the interpreter cannot run lmsweep with the site's MPI
from lmsweep.submit.systems import SystemProfile

EXIT_BAD_INDEX = 2          # bad input; 3 is the worker's "preempted"


def element_lookup(job: ArrayJob, index_expr: str) -> list[str]:
    """Lines that set `index` and `element` from the scheduler's array index variable."""
    n = job.n_tasks
    lines = [f"index={index_expr}",
             f'case "$index" in (""|*[!0-9]*) echo "lmsweep: bad array index \'$index\'" >&2; '
             f"exit {EXIT_BAD_INDEX};; esac",
             f"if (( index >= {n} )); then echo \"lmsweep: array index $index out of range 0-{n - 1}\" >&2; "
             f"exit {EXIT_BAD_INDEX}; fi"]
    els = job.elements
    if list(els) == list(range(els[0], els[0] + n)):
        lines.append(f"element=$(( {els[0]} + index ))")
    else:
        # a resubmit of scattered elements: task index -> element, 16 per line
        rows = [" ".join(str(e) for e in els[i:i + 16]) for i in range(0, n, 16)]
        lines.append("ELEMENTS=(" + "\n          ".join(rows) + ")")
        lines.append('element=${ELEMENTS[$index]}')
    return lines


def launch_line(job: ArrayJob, profile: SystemProfile, launcher_for_one_rank: bool = True) -> str:
    """The profile's launcher around the worker; the GPU binding runs inside each rank.
    `launcher_for_one_rank=False` (a backend running on this machine): one rank runs the worker bare."""
    launcher = profile.launcher.format(nranks=job.ranks, ppn=job.ranks_per_node, depth=job.cpus_per_rank,
                                       nnodes=job.nodes)
    worker = '"$PYTHON" -m lmsweep worker --plan "$EXP" --element "$element"'
    if not launcher_for_one_rank and job.ranks == 1:
        return worker
    if profile.gpu_bind.strip():
        # per rank: bind this rank to its GPU, then become the worker (argv passes through untouched)
        per_rank = profile.gpu_bind.strip() + '; exec "$@"'
        worker = f"/bin/bash -c {quote(per_rank)} lmsweep-rank {worker}"
    return f"{launcher} {worker}"


def preflight(profile: SystemProfile) -> list[str]:
    """Before the launcher: the interpreter exists on this node, imports lmsweep and mpi4py, and its MPI is
    the profile's `mpi_library`; otherwise the element stops here with EXIT_PREFLIGHT. Nothing without one."""
    if not profile.mpi_library:
        return []
    return [
        f"# preflight (system profile {profile.name}): python runs lmsweep and mpi4py on this node's MPI",
        "preflight_failed() { echo \"lmsweep: preflight failed on $(hostname): element $element not started "
        f"(exit {EXIT_PREFLIGHT}; docs/cluster.md#which-python-runs-the-worker)\" >&2; exit {EXIT_PREFLIGHT}; }}",
        'command -v "$PYTHON" >/dev/null || { echo "lmsweep: preflight: interpreter $PYTHON not found on '
        '$(hostname)" >&2; preflight_failed; }',
        f'"$PYTHON" -m lmsweep.submit.preflight --mpi-library {quote(profile.mpi_library)} || preflight_failed',
    ]


def body(job: ArrayJob, profile: SystemProfile, index_expr: str, job_id_expr: str, *,
         setup: tuple[str, ...] = (), launcher_for_one_rank: bool = True) -> list[str]:
    """Environment setup, index → element, launch, and an exit status the scheduler can record.
    `setup`: the backend's own lines after EXP and PYTHON are set."""
    first, last = job.elements[0], job.elements[-1]
    what = f"element {first}" if job.n_tasks == 1 else f"{job.n_tasks} elements ({first}..{last})"
    lines = [
        f"# lmsweep: experiment {job.experiment}, {job.submission} part {job.part}: {what}, "
        f"{job.nodes} node(s) x {job.ranks_per_node} rank(s) each",
        "set -o pipefail",
    ]
    if profile.env_setup:
        lines.append("# environment (system profile " + profile.name + ")")
        lines += list(profile.env_setup)
    lines += [
        f"EXP={quote(job.exp_dir)}",
        f"PYTHON={quote(job.python)}",
        *setup,
        *element_lookup(job, index_expr),
        f"export OMP_NUM_THREADS={job.cpus_per_rank}",
        "export PYTHONUNBUFFERED=1",
        f'echo "lmsweep: job {job_id_expr} index $index -> element $element on $(hostname) at $(date -Is)"',
        *preflight(profile),
        'cd "$EXP" || exit 1',
        "# On preemption the launcher and workers get the signal themselves; workers finish their batch",
        "# and exit 3. The script survives a signal aimed at it and still reports the workers' status.",
        "trap ':' TERM INT",
        launch_line(job, profile, launcher_for_one_rank) + " &",
        "child=$!",
        'while kill -0 "$child" 2>/dev/null; do wait "$child"; done',
        'wait "$child"',
        "status=$?",
        'echo "lmsweep: element $element exited $status at $(date -Is)"',
        'exit "$status"',
    ]
    return lines
