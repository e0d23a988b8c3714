"""`lmsweep worker`: what a scheduler (or the local backend) launches for one element."""
from __future__ import annotations

from pathlib import Path


def cmd_worker(args) -> int:
    from lmsweep.runner import signals
    from lmsweep.runner.worker import run_element

    signals.install()        # SIGTERM/SIGINT: finish or abandon the current batch, then exit 3
    return run_element(Path(args.plan), args.element, batch_size=args.batch_size)


def register(sub) -> None:
    s = sub.add_parser("worker", help="run one element of a plan (what schedulers launch)")
    s.add_argument("--plan", required=True, help="experiment directory holding plan.json")
    s.add_argument("--element", type=int, required=True)
    s.add_argument("--batch-size", type=int)
    s.set_defaults(func=cmd_worker)
