"""`python -m lmsweep.submit.preflight --mpi-library TEXT`: a job's check of its interpreter on the compute node.

A job script runs it once, before the launcher, when its system profile names an `mpi_library`. An
interpreter that cannot import lmsweep or mpi4py, or whose mpi4py is built on another MPI than the
site's (a pip wheel's MPICH instead of Cray MPICH on Polaris), would otherwise start N ranks that fail
or hang after the queue wait. Here the element fails in a second with the reason, and the script exits
EXIT_PREFLIGHT (4). That the module runs at all shows the interpreter starts and imports lmsweep.

MPI is not initialised: `MPI_Get_library_version` may be called before `MPI_Init`, so the check starts
no singleton MPI process on the node.
"""
from __future__ import annotations

import argparse
import sys

EXIT_PREFLIGHT = 4


def problems(expected: str | None) -> tuple[list[str], str]:
    """What is wrong (empty: nothing) and one line saying what was found."""
    try:
        import mpi4py
        mpi4py.rc.initialize = False
        mpi4py.rc.finalize = False
        from mpi4py import MPI
    except Exception as e:      # ImportError, or a broken MPI library behind it (OSError)
        return [f"mpi4py does not import: {e}"], "mpi4py missing"
    library = MPI.Get_library_version()
    first = (library.strip().splitlines() or ["(no library version)"])[0].strip()
    found = f"mpi4py {mpi4py.__version__} on {first}"
    if expected and expected.lower() not in library.lower():
        return [f"mpi4py's MPI library is not {expected!r} (found: {first!r}): this interpreter's "
                f"mpi4py is not the site's; use the site's Python environment or rebuild mpi4py against "
                f"its MPI (docs/cluster.md#which-python-runs-the-worker)"], found
    return [], found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lmsweep.submit.preflight")
    p.add_argument("--mpi-library", help="text MPI.Get_library_version() must contain")
    args = p.parse_args(argv)
    import lmsweep

    wrong, found = problems(args.mpi_library)
    for line in wrong:
        print(f"lmsweep: preflight: {line}", file=sys.stderr, flush=True)
    if wrong:
        return EXIT_PREFLIGHT
    print(f"lmsweep: preflight ok: python {sys.version.split()[0]} ({sys.executable}), lmsweep from "
          f"{lmsweep.__path__[0]}, {found}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
