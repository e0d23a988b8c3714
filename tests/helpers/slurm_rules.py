"""A strict checker for rendered Slurm batch scripts against NERSC Perlmutter's and OLCF Frontier's rules.

Like `pbs_rules.py` for ALCF, it stands in for the site's `sbatch` and its QOS/partition policies: tests
render a script and assert ``check_slurm_script(text, site) == []``. The tables are kept here, apart from
``configs/systems/*.yaml``, so the check is an oracle and not a copy of the code under test
(tests/submit/test_site_profiles.py asserts that the two agree).

Sources: OLCF Frontier user guide (olcf/olcf-user-docs systems/frontier_user_guide.rst, 2026-07-22): `-A` names
the project to charge; partitions batch (default; walltime by node-count bin) and extended (<= 24 h, <= 64
nodes, 1 running per user); QOS debug (<= 2 h, one job per user in any state); at most 100 jobs per user
queued; 56 allocatable cores (low-noise mode, `-S 8`) and 8 GCDs per node; ranks bound with
`srun -c7 --gpus-per-task=1 --gpu-bind=closest`. NERSC (docs.nersc.gov/jobs/policy, beginner-guide): a queue
is a QOS (`-q`), GPU nodes need the `gpu` constraint, 4 A100 and 128 hardware threads per GPU node; the QOS
numbers are those of configs/systems/perlmutter.yaml's "table" comments (see there for how far they are
verified).
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

__all__ = ["SITES", "SiteRule", "check_slurm_script", "directives"]

_H = 3600


@dataclass(frozen=True)
class QueueRule:
    min_nodes: int
    max_nodes: int
    max_walltime_s: int
    max_jobs: int | None          # jobs per user queued (or in any state); an array task counts


@dataclass(frozen=True)
class SiteRule:
    cores: int                    # Slurm CPUs a job may use per node
    gpus: int
    partitions: frozenset[str]    # allowed --partition values (empty: none may be given)
    qos: dict[str, QueueRule]     # --qos value -> limits (a "" key: no --qos given)
    batch_bins: tuple[tuple[int, int, int], ...] = ()   # (min nodes, max nodes, max walltime s) for `batch`
    partition_rules: dict[str, QueueRule] | None = None
    needs: tuple[str, ...] = ()   # directives every job must carry
    account_required: bool = False
    launch_flags: tuple[str, ...] = ()      # each must be on the srun line
    bind_var: str = "CUDA_VISIBLE_DEVICES"  # how one GPU per rank is set, when srun does not do it


SITES: dict[str, SiteRule] = {
    "perlmutter": SiteRule(
        cores=128, gpus=4, partitions=frozenset(),
        qos={"regular": QueueRule(1, 1794, 48 * _H, 5000), "debug": QueueRule(1, 8, _H // 2, 5)},
        needs=("--constraint=gpu",), launch_flags=("--cpus-per-task",)),
    "frontier": SiteRule(
        cores=56, gpus=8, partitions=frozenset({"batch", "extended"}),
        qos={"": QueueRule(1, 9472, 12 * _H, 100), "normal": QueueRule(1, 9472, 12 * _H, 100),
             "debug": QueueRule(1, 9472, 2 * _H, 1)},
        batch_bins=((1, 91, 2 * _H), (92, 183, 6 * _H), (184, 1881, 12 * _H), (1882, 5644, 12 * _H),
                    (5645, 9472, 12 * _H)),
        partition_rules={"extended": QueueRule(1, 64, 24 * _H, 100)},
        account_required=True, launch_flags=("-c", "--gpus-per-task=1", "--gpu-bind=closest"),
        bind_var="ROCR_VISIBLE_DEVICES"),
}


def directives(text: str) -> list[tuple[str, str]]:
    """(flag, value) of each #SBATCH line before the first command, as sbatch reads them; short flags too."""
    out = []
    for line in text.splitlines()[1:]:
        if not line.strip() or (line.startswith("#") and not line.startswith("#SBATCH")):
            continue
        if not line.startswith("#SBATCH "):
            break
        arg = line[len("#SBATCH "):].strip()
        if arg.startswith("--"):
            flag, _, value = arg.partition("=")
        else:
            flag, value = arg[:2], arg[2:].strip()
        out.append((flag, value))
    return out


def _seconds(value: str) -> int:
    parts = [int(x) for x in value.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return h * 3600 + m * 60 + s


def check_slurm_script(text: str, site: str) -> list[str]:
    """Every way `text` breaks `site`'s rules, as messages; [] when sbatch there would take it and run it."""
    rule, problems = SITES[site], []
    if not text.startswith("#!/bin/bash"):
        problems.append("first line is not #!/bin/bash")
    d = directives(text)
    flags = [f for f, _ in d]
    for f in set(flags):
        if flags.count(f) > 1:
            problems.append(f"{f} given {flags.count(f)} times")
    get = dict(d).get
    for need in rule.needs:
        flag, _, value = need.partition("=")
        if get(flag) != value:
            problems.append(f"missing {need}")
    if rule.account_required and not get("--account"):
        problems.append("no --account: the project to charge is required")
    partition, qos = get("--partition"), get("--qos") or ""
    if partition is not None and partition not in rule.partitions:
        problems.append(f"--partition={partition}: " + ("this site selects GPU nodes by constraint and queues by "
                                                        "QOS; give no partition" if not rule.partitions else
                                                        f"expected one of {sorted(rule.partitions)}"))
    if qos not in rule.qos:
        problems.append(f"--qos={qos or '(none)'}: expected one of {sorted(q for q in rule.qos if q)}")
        return problems
    limits = rule.qos[qos]
    if partition and rule.partition_rules and partition in rule.partition_rules and qos != "debug":
        limits = rule.partition_rules[partition]
    nodes = int(get("--nodes") or 1)
    walltime = _seconds(get("--time") or "0")
    if not limits.min_nodes <= nodes <= limits.max_nodes:
        problems.append(f"--nodes={nodes} outside {limits.min_nodes}-{limits.max_nodes}")
    if walltime > limits.max_walltime_s:
        problems.append(f"--time={get('--time')} above {limits.max_walltime_s // 60} min")
    if rule.batch_bins and (partition or "batch") == "batch":
        cap = next((w for lo, hi, w in rule.batch_bins if lo <= nodes <= hi), 0)
        if walltime > cap:
            problems.append(f"--time={get('--time')} above the {cap // 3600} h of the {nodes}-node bin")
    tasks = 1
    if array := get("--array"):
        m = re.fullmatch(r"0-(\d+)(?:%(\d+))?", array)
        if not m:
            problems.append(f"--array={array}: expected 0-N[%K]")
        else:
            tasks = int(m.group(1)) + 1
    if limits.max_jobs is not None and tasks > limits.max_jobs:
        problems.append(f"{tasks} array tasks: more than the {limits.max_jobs} jobs one user may have queued")
    per_node = int(get("--ntasks-per-node") or 1) * int(get("--cpus-per-task") or 1)
    if per_node > rule.cores:
        problems.append(f"{per_node} CPUs per node asked, the node has {rule.cores}")
    if int(get("--gpus-per-node") or 0) > rule.gpus:
        problems.append(f"--gpus-per-node above the node's {rule.gpus}")
    launch = [line for line in text.splitlines() if "-m lmsweep worker" in line]
    if len(launch) != 1:
        problems.append(f"expected one launch line, found {len(launch)}")
        return problems
    words = shlex.split(launch[0].removesuffix(" &"))
    if words[0] != "srun":
        problems.append("the launch line does not start with srun")
    for flag in rule.launch_flags:
        if not any(w == flag or w.startswith(flag + "=") for w in words):
            problems.append(f"srun lacks {flag}")
    if rule.bind_var and "--gpus-per-task=1" not in words and not any(
            f"export {rule.bind_var}=$SLURM_LOCALID" in w for w in words):
        problems.append(f"ranks are not bound to one GPU each ({rule.bind_var} or srun --gpus-per-task=1)")
    if site == "frontier" and "CUDA_VISIBLE_DEVICES" in text:
        problems.append("CUDA_VISIBLE_DEVICES on an AMD node (ROCm reads ROCR_VISIBLE_DEVICES)")
    return problems
