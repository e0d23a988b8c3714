"""At most one live worker per element: a lock file under EXP/locks/, held while the element runs.

Two `lmsweep run` of one spec at once, a job submitted twice, or a requeued job that starts while
its first run is still being killed: whichever worker comes second waits for the lock, then reads
which units are done and runs only the rest, so no unit is written twice. Under MPI only rank 0
takes the lock; the other ranks wait for rank 0's list of pending units, so the lock covers them too.

The lock is `flock(2)` on `EXP/locks/element-NNNNN.lock`: the kernel drops it when the holder dies,
however it dies (kill -9 included), so a crash never leaves a stale lock. On NFS the Linux client maps
flock to byte-range locks (works across nodes); Lustre needs the `flock` mount option (with
`localflock` the lock only covers one node). The file holds the holder's pid, host and start time
for the "waiting for ..." message; lock files are never deleted (deleting one races with waiters).
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from lmsweep.results.integrity import sweep_temp_files, verify_element_parts
from lmsweep.results.schema import schema_for
from lmsweep.results.writer import lock_path, results_dir

POLL_SECONDS = 1.0


class ElementLock:
    """An acquired element lock; released by `release()` or when the process ends."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.release()
        except OSError:
            pass


def acquire(exp_dir: Path, element: int, should_stop=lambda: False) -> ElementLock | None:
    """Wait until this process holds the element's lock. Returns None if `should_stop()` turns true
    while waiting (a preempted worker that never got to run)."""
    path = lock_path(exp_dir, element)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o664)
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not told:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
                print(f"element {element} is being run by {holder}; waiting for it to finish "
                      f"(lock {path})", file=sys.stderr, flush=True)
                told = True
            if should_stop():
                os.close(fd)
                return None
            time.sleep(POLL_SECONDS)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    if told:
        print(f"element {element}: lock acquired; skipping the units the other worker finished",
              file=sys.stderr, flush=True)
    return ElementLock(path, fd)


def claim_element(exp_dir: Path, element: int, task: str, should_stop=lambda: False) -> ElementLock | None:
    """Take the element's lock; then delete the element's leftover temporary part files (while we hold
    the lock no other writer of this element is alive, so they are debris of a killed run) and read its
    finished parts in full, quarantining any that are damaged, so their units count as not done."""
    lock = acquire(exp_dir, element, should_stop)
    if lock is not None:
        exp_dir = Path(exp_dir)
        sweep_temp_files(exp_dir, element)
        verify_element_parts(exp_dir, results_dir(exp_dir, task), schema_for(task), element)
    return lock
