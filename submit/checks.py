"""Submit-time checks of where a job will run from: the worker's interpreter and the experiment directory.

Run before anything is written. A missing interpreter is bad input (exit 2): every element would fail
after its queue wait. A path under a node-local directory (`/tmp`, `/var/tmp`, `/dev/shm`, `$TMPDIR`)
is a warning, not a refusal: compute nodes cannot see it on Polaris or Aurora, but a site may mount
one of these shared, and a one-machine backend (`local`) runs where the path is. The compute-node side
of the interpreter check is `submit/preflight.py`, run by every job script whose profile names an MPI.
"""
from __future__ import annotations

import os
from pathlib import Path

from lmsweep.jobs.errors import SpecError
from lmsweep.submit.systems import SystemProfile

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")


def node_local_root(path: str | Path, tmpdir: str | None = None) -> str | None:
    """The node-local directory `path` lies under (as given or with symlinks resolved), or None."""
    roots = [*NODE_LOCAL, *([tmpdir] if tmpdir else [])]
    candidates = {os.path.abspath(path), os.path.realpath(path)}
    for root in roots:
        for r in {os.path.abspath(root), os.path.realpath(root)}:
            if r != "/" and any(c == r or c.startswith(r.rstrip("/") + "/") for c in candidates):
                return root
    return None


def python_source(flag: str | None, profile: SystemProfile) -> str:
    """Where the worker's interpreter came from, for the packing decision (the rule in options.py)."""
    if flag:
        return "--python"
    if profile.python:
        return f"system profile {profile.name}'s `python`"
    return "the interpreter running lmsweep; change with --python or the profile's `python`"


def check_python(python: str, flag: str | None, profile: SystemProfile) -> None:
    """A path must name an executable file here (login and compute nodes share it); a bare command name is
    looked up on the compute node after the profile's environment setup, so only the job can check it."""
    if "/" not in python:
        return
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        problem = (f"interpreter {python} does not exist or is not executable here; give an interpreter with "
                   f"lmsweep installed, on a filesystem the compute nodes see")
        if flag:
            raise SpecError(problem, field="--python")
        raise SpecError(problem + " (or pass --python)", file=str(profile.source or profile.name), field="python")


def _shared(profile: SystemProfile) -> str:
    if profile.filesystems:
        return f"the job requests filesystems={':'.join(profile.filesystems)}"
    return "use a shared filesystem"


def node_local_warnings(profile: SystemProfile, one_machine: bool, exp_dir: Path, python: str,
                        tmpdir: str | None) -> list[str]:
    """One line per path the compute nodes of `profile` would not see; none for a one-machine backend."""
    if one_machine:
        return []
    out = []
    if root := node_local_root(exp_dir, tmpdir):
        out.append(f"experiment directory {exp_dir} is under {root}, which is local to each node: {profile.name}'s "
                   f"compute nodes cannot see it ({_shared(profile)}); pass --output-dir on one of those")
    if "/" in python and (root := node_local_root(python, tmpdir)):
        out.append(f"interpreter {python} is under {root}, which is local to each node: {profile.name}'s compute "
                   f"nodes cannot run it ({_shared(profile)}); install lmsweep there and pass --python")
    return out


def under(path: str | Path, roots: tuple[str, ...]) -> bool:
    """Whether `path` (as given or with symlinks resolved) lies under one of `roots`."""
    candidates = {os.path.abspath(path), os.path.realpath(path)}
    return any(c == r.rstrip("/") or c.startswith(r.rstrip("/") + "/") for c in candidates for r in roots)


def shared_path_warnings(profile: SystemProfile, one_machine: bool, exp_dir: Path, python: str,
                         model_paths: dict[str, str], tmpdir: str | None = None) -> list[str]:
    """One line per path the job needs that lies under none of the profile's `shared_paths` (a directory the
    compute nodes may not see: the job would fail after its queue wait); none where the profile lists none,
    for a one-machine backend, or for a path already warned about as node-local."""
    roots = profile.shared_paths
    if one_machine or not roots:
        return []
    where = f"none of {profile.name}'s shared_paths ({', '.join(roots)})"
    needed = [("experiment directory", str(exp_dir), "pass --output-dir on one of them")]
    if "/" in python:
        needed.append(("interpreter", python, "install lmsweep there and pass --python"))
    needed += [(f"model {alias}'s path", path, "copy it there (or a shared HF_HOME there) and plan again")
               for alias, path in model_paths.items() if path]
    return [f"{what} {path} is under {where}: the compute nodes may not see it; {fix}"
            for what, path, fix in needed if not under(path, roots) and not node_local_root(path, tmpdir)]
