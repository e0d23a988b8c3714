"""Who this rank is within its element: world, node-local layout, tensor-parallel group, device, threads.

A worker may be started four ways and must find the same facts in each:

- by an MPI launcher (`mpiexec`, `srun --mpi`, PALS on Polaris): ask mpi4py. Node-local rank and size
  come from `COMM_TYPE_SHARED`; rank 0 picks MASTER_ADDR (loopback when every rank shares its host) and
  a free MASTER_PORT and broadcasts both. DeepSpeed's own MPI discovery does not set LOCAL_SIZE (its CPU
  all-reduce then segfaults) and takes the first address of `hostname -I`, which is wrong on many hosts,
  so we export RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE, MASTER_ADDR and MASTER_PORT ourselves before
  anything initialises torch.distributed.
- by `torchrun` or the `deepspeed` launcher: they export those variables already; we read them.
- as a plain process (tests, a laptop): a world of one, and mpi4py is never imported.

The element's ranks form `world / tp` tensor-parallel groups of consecutive ranks (so a group stays
on one node when ranks are packed per node). Each group takes a disjoint share of the element's units;
the ranks of a group run the same batches, and only the group's leader writes rows.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

# Variables that only an MPI process manager sets (MPICH/Hydra and Cray PALS, PMIx, Open MPI, MVAPICH).
MPI_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK",
                     "MV2_COMM_WORLD_RANK")
# What `torchrun` and the `deepspeed` launcher export.
ENV_LAUNCHER_VARS = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class TPLayout:
    """Tensor-parallel groups of one element: pure arithmetic, the same on every rank."""

    world_size: int
    tp: int

    def __post_init__(self) -> None:
        if self.tp < 1 or self.world_size < 1 or self.world_size % self.tp:
            raise ValueError(f"{self.world_size} rank(s) cannot be split into tensor-parallel groups of "
                             f"{self.tp}; use a multiple of {self.tp} ranks")

    @property
    def n_groups(self) -> int:
        return self.world_size // self.tp

    def group_of(self, rank: int) -> int:
        return rank // self.tp

    def members(self, group: int) -> list[int]:
        return list(range(group * self.tp, (group + 1) * self.tp))

    def leader(self, group: int) -> int:
        return group * self.tp

    def is_leader(self, rank: int) -> bool:
        return rank % self.tp == 0

    def share(self, items: list, group: int) -> list:
        """This group's disjoint share: round-robin, so shares differ in length by at most one."""
        return items[group::self.n_groups]


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"                  # "mpi" | "env" (torchrun, deepspeed) | "single"
    hosts: list[str] = field(default_factory=lambda: [socket.gethostname()])
    mpi_library: str | None = None
    _comm: Any = field(default=None, repr=False)          # mpi4py COMM_WORLD under an MPI launcher
    _torch_group: Any = field(default=None, repr=False)   # a gloo group for object collectives (env launcher)

    # ---- collectives on small Python objects; identity in a world of one -----------------------------

    def bcast(self, obj: Any, root: int = 0) -> Any:
        if self.size == 1:
            return obj
        if self._comm is not None:
            return self._comm.bcast(obj, root=root)
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=root, group=self._object_group())
        return box[0]

    def allgather(self, obj: Any) -> list:
        if self.size == 1:
            return [obj]
        if self._comm is not None:
            return self._comm.allgather(obj)
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self._object_group())
        return out

    def _object_group(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed must be initialised before collectives under torchrun")
        if self._torch_group is None:
            self._torch_group = dist.new_group(backend="gloo")
        return self._torch_group

    def layout(self) -> dict:
        return {"rank": self.rank, "world_size": self.size, "local_rank": self.local_rank,
                "local_size": self.local_size, "launcher": self.launcher, "master_addr": self.master_addr,
                "master_port": self.master_port, "hosts": self.hosts, "nodes": len(set(self.hosts))}


def launched_by_mpi(environ: dict | os._Environ = os.environ) -> bool:
    return any(v in environ for v in MPI_LAUNCHER_VARS)


def discover(environ: dict | os._Environ | None = None) -> World:
    """The world of this process; does not touch torch.distributed. Call `export_env` to publish it."""
    environ = os.environ if environ is None else environ
    if all(v in environ for v in ENV_LAUNCHER_VARS) and not launched_by_mpi(environ):
        return _from_env(environ)
    if launched_by_mpi(environ):
        return _from_mpi(environ)
    return World(master_port=int(environ.get("MASTER_PORT", 0)) or free_port())


def _from_env(environ) -> World:
    size = int(environ["WORLD_SIZE"])
    local_size = int(environ.get("LOCAL_SIZE") or environ.get("LOCAL_WORLD_SIZE") or size)
    return World(rank=int(environ["RANK"]), size=size, local_rank=int(environ.get("LOCAL_RANK", 0)),
                 local_size=local_size, master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
                 master_port=int(environ.get("MASTER_PORT", 29500)), launcher="env",
                 hosts=[socket.gethostname()])


def _from_mpi(environ) -> World:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    local_rank, local_size = local.Get_rank(), local.Get_size()
    local.Free()
    hosts = comm.allgather(socket.gethostname())
    chosen = None
    if rank == 0:
        # A pre-set MASTER_ADDR/PORT (same on every rank: launchers pass one environment) wins.
        addr = environ.get("MASTER_ADDR") or ("127.0.0.1" if len(set(hosts)) == 1 else _host_address())
        port = int(environ.get("MASTER_PORT") or 0) or free_port()
        chosen = (addr, port)
    addr, port = comm.bcast(chosen, root=0)
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size, master_addr=addr,
                 master_port=port, launcher="mpi", hosts=hosts,
                 mpi_library=MPI.Get_library_version().strip().splitlines()[0], _comm=comm)


def _host_address() -> str:
    """This host's address as other nodes reach it: the resolved host name, or the name itself when it
    resolves to loopback (Debian maps the host name to 127.0.1.1), for the other nodes to resolve."""
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        return name
    return name if addr.startswith("127.") else addr


def free_port(host: str = "") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def abort_on_crash(world: World) -> None:
    """An uncaught exception on one MPI rank aborts the whole job instead of leaving its peers blocked in
    a collective forever (MPICH does not end the other ranks when one exits). What `python -m mpi4py`
    does; errors the worker reports itself (SpecError: every rank fails alike) are not affected."""
    if world.launcher != "mpi" or world.size == 1:
        return
    import sys

    previous = sys.excepthook

    def hook(kind, value, tb):
        previous(kind, value, tb)
        sys.stderr.flush()
        world._comm.Abort(1)

    sys.excepthook = hook


def export_env(world: World) -> None:
    """What torch.distributed's env:// init and DeepSpeed read; set before either is initialised.

    A world of one needs none of it (no process group is made) and leaves the environment alone, so an
    in-process run (tests, notebooks) does not hand RANK/WORLD_SIZE to the processes it starts later."""
    if world.launcher == "single":
        return
    os.environ.update({"RANK": str(world.rank), "WORLD_SIZE": str(world.size),
                       "LOCAL_RANK": str(world.local_rank), "LOCAL_SIZE": str(world.local_size),
                       "LOCAL_WORLD_SIZE": str(world.local_size), "MASTER_ADDR": world.master_addr,
                       "MASTER_PORT": str(world.master_port)})


def default_threads(local_size: int, environ: dict | os._Environ | None = None,
                    affinity: set[int] | None = None, cpu_count: int | None = None) -> int:
    """CPU threads for one rank when neither the spec nor OMP_NUM_THREADS says.

    A launcher that binds ranks (`mpiexec --cpu-bind depth --depth D`, `srun --cpus-per-task`) leaves each
    rank an affinity mask of its own cores: use all of them. An unbound rank shares the node's cores
    with the other ranks on its node.
    """
    environ = os.environ if environ is None else environ
    affinity = affinity if affinity is not None else _affinity()
    cpu_count = cpu_count or os.cpu_count() or 1
    if affinity and len(affinity) < cpu_count:
        return len(affinity)
    return max(1, cpu_count // max(1, local_size))


def _affinity() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set()


def threads_for_rank(requested: int | None, local_size: int, environ: dict | os._Environ | None = None) -> \
        tuple[int, str]:
    """(threads, where the number came from): the spec, else the launcher's OMP_NUM_THREADS, else a default."""
    environ = os.environ if environ is None else environ
    if requested:
        return requested, "spec"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    return default_threads(local_size, environ), "default"


def bind_device(world: World, accelerator: str) -> dict:
    """One GPU per rank, chosen by the node-local rank; returns what to record about the binding.

    If the launcher already narrowed CUDA_VISIBLE_DEVICES to one GPU per rank (ALCF's
    set_affinity_gpu_polaris.sh), that GPU is device 0; otherwise local rank r takes GPU r mod count.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if accelerator != "cuda":
        return {"device": "cpu", "label": "cpu", "cuda_visible_devices": visible}
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise RuntimeError(f"rank {world.rank}: CUDA reports no device (CUDA_VISIBLE_DEVICES={visible!r})")
    index = world.local_rank % count
    if world.local_size > count:
        print(f"warning: {world.local_size} ranks on {world.hosts[world.rank]} share {count} GPU(s)",
              flush=True)
    torch.cuda.set_device(index)
    props = torch.cuda.get_device_properties(index)
    ids = [v.strip() for v in visible.split(",")] if visible else []
    node_gpu = ids[index] if index < len(ids) else str(index)
    # `label` names the GPU as the node numbers it (through CUDA_VISIBLE_DEVICES), so 4 ranks that each
    # see one GPU as cuda:0 still record 4 different GPUs in their rows.
    return {"device": f"cuda:{index}", "label": f"cuda:{node_gpu}", "cuda_visible_devices": visible,
            "gpu_name": props.name,
            "gpu_uuid": str(getattr(props, "uuid", "")) or None,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
