"""Run the `lmsweep` command as a user would, and write spec files.

`cli(...)` runs the real command-line entry point (`lmsweep.cli.main`, argument parsing, exit codes, what it
prints on stdout and stderr) inside the test process: a new `python -m lmsweep` costs ~3 s of imports (torch,
transformers, pandas) before it does anything, and the suite calls the CLI over a hundred times. What the
command starts itself (`run`'s workers, `submit`'s scheduler commands) are real processes either way.

A real subprocess is used where the process is the point: `worker` (it installs signal handlers and a
watchdog that ends its process), the kill-at test hook, a terminal width (read once at import), or
`process=True`. An uncaught exception prints its traceback on stderr and exits 1, as a process would.
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"

# what only a fresh process sees: read at import, or a hook that signals the process it runs in
PROCESS_ENV = ("COLUMNS", "LMSWEEP_TEST_KILL_AT")
PROCESS_COMMANDS = ("worker",)


def cli(*args: str, cwd: Path | None = None, check: bool = False, timeout: int = 900,
        env: dict | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run `lmsweep ARGS` with `env` added to the environment, in `cwd`; its exit code, stdout and stderr."""
    env = {k: str(v) for k, v in (env or {}).items()}
    if process or (args and args[0] in PROCESS_COMMANDS) or any(k in env for k in PROCESS_ENV):
        proc = subprocess.run([sys.executable, "-m", "lmsweep", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **env}, stdin=subprocess.DEVNULL)
    else:
        proc = _in_process(list(args), cwd, env)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmsweep {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _in_process(args: list[str], cwd: Path | None, env: dict[str, str]) -> subprocess.CompletedProcess:
    from lmsweep import console as terminal
    from lmsweep.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd, saved_width = dict(os.environ), os.getcwd(), terminal.console.width
    os.environ.update(env)
    # the width a process with its stdout on a pipe picks at import (lmsweep/console.py), whatever this
    # process's stdout is (an xdist worker's, a terminal)
    columns = os.environ.get("COLUMNS", "")
    terminal.console.width = int(columns) if columns.isdigit() else terminal.PIPE_WIDTH
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(args)
            except SystemExit as e:                  # argparse and explicit exits
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int | None):
                    print(e.code, file=sys.stderr)
            except Exception:                        # what the interpreter would print, and its exit code
                traceback.print_exc()
                code = 1
    finally:
        terminal.console.width = saved_width
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["lmsweep", *args], code, out.getvalue(), err.getvalue())


def write_spec(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
