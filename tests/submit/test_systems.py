"""System profiles load into frozen objects, agree with the ALCF rules, and fail with one clear line."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from lmsweep.submit.systems import CONFIG_DIR, ProfileError, list_systems, load_system, walltime_seconds

try:
    from tests.pbs_rules import ALCF_QUEUES, FILESYSTEMS, check_pbs_script
except ImportError:  # tests/ on sys.path (pytest rootdir insertion) instead of the repo root
    from helpers.pbs_rules import ALCF_QUEUES, FILESYSTEMS, check_pbs_script


def test_shipped_profiles():
    assert list_systems() == ["aurora", "frontier", "local", "perlmutter", "polaris", "slurm-generic", "slurm-gpu"]
    for name in list_systems():
        assert load_system(name).name == name


def test_polaris_profile():
    p = load_system("polaris")
    assert (p.scheduler, p.gpus_per_node, p.ranks_per_node, p.cpus_per_rank) == ("pbs", 4, 4, 8)
    assert p.gpu_bind == "export CUDA_VISIBLE_DEVICES=$((3 - PMI_LOCAL_RANK % 4))"
    assert p.filesystems == ("home", "eagle") and p.max_array_size == 10000
    assert p.queue("prod").min_nodes == 10 and p.queue("prod").max_concurrent_subjobs == 10
    assert p.queue("preemptable").preemptable and not p.queue("prod").preemptable
    assert p.queue().name == "debug"
    assert "export HF_HUB_OFFLINE=1" in p.env_setup and "module load conda" in p.env_setup
    assert p.launcher == 'mpiexec -n {nranks} --ppn {ppn} --depth {depth} --cpu-bind depth --hostfile "$PBS_NODEFILE"'
    assert p.source == CONFIG_DIR / "polaris.yaml"


def test_aurora_profile():
    p = load_system("aurora")
    assert (p.gpus_per_node, p.ranks_per_node, p.filesystems) == (12, 12, ("home", "flare"))
    assert p.gpu_bind == "export ZE_AFFINITY_MASK=$((PALS_LOCAL_RANKID % 12))"
    assert "module load frameworks" in p.env_setup
    assert p.launcher.startswith("mpiexec -n {nranks} --ppn {ppn} --cpu-bind list:1-8:")
    assert p.queue("debug-scaling").min_nodes == 2


def test_slurm_generic_profile():
    p = load_system("slurm-generic")
    assert (p.scheduler, p.default_queue, p.max_array_size) == ("slurm", "debug", 1001)
    assert p.launcher == "srun -n {nranks} --ntasks-per-node {ppn} --cpus-per-task {depth}"
    assert p.gpu_bind == "" and p.filesystems == ()


def test_local_profile():
    p = load_system("local")
    assert (p.scheduler, p.default_queue, dict(p.queues), p.max_array_size) == ("local", None, {}, None)
    with pytest.raises(ProfileError, match="system 'local' has no queue None"):
        p.queue()


def test_profiles_are_frozen():
    p = load_system("polaris")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        p.queues["new"] = p.queues["prod"]  # type: ignore[index]
    assert load_system("polaris") == p


def test_queue_accepts():
    prod = load_system("polaris").queue("prod")
    assert (
        prod.accepts(10, "24:00:00") and not prod.accepts(9, "01:00:00") and not prod.accepts(10, "24:00:01")
    )
    assert prod.max_walltime_seconds == walltime_seconds("24:00:00") == 86400


@pytest.mark.parametrize("system", ["polaris", "aurora"])
def test_alcf_profiles_agree_with_the_pbs_rules(system):
    profile = load_system(system)
    rules = ALCF_QUEUES[system]
    assert set(profile.queues) == set(rules)
    for name, q in profile.queues.items():
        r = rules[name]
        assert (q.min_nodes, q.max_nodes, q.max_walltime_seconds) == (
            r.min_nodes,
            r.max_nodes,
            r.max_walltime_s,
        )
        assert (q.max_concurrent_subjobs, q.max_queued, q.preemptable) == (
            r.max_concurrent,
            r.max_queued,
            r.preemptable,
        )
    assert set(profile.filesystems) <= FILESYSTEMS[system]


@pytest.mark.parametrize("system", ["polaris", "aurora"])
def test_a_script_at_each_queue_limit_passes_the_rules(system):
    profile = load_system(system)
    for q in profile.queues.values():
        for nodes in {q.min_nodes, q.max_nodes}:
            script = "\n".join(
                [
                    "#!/bin/bash -l",
                    "#PBS -A myproj",
                    f"#PBS -q {q.name}",
                    f"#PBS -l select={nodes}:system={system}",
                    "#PBS -l place=scatter",
                    f"#PBS -l walltime={q.max_walltime}",
                    f"#PBS -l filesystems={':'.join(profile.filesystems)}",
                    *(["#PBS -r y"] if q.preemptable else []),
                    *profile.env_setup,
                    profile.launcher.format(nranks=nodes * profile.ranks_per_node, ppn=profile.ranks_per_node,
                                            depth=profile.cpus_per_rank, nnodes=nodes),
                ]
            )
            assert check_pbs_script(script, system) == [], (q.name, nodes)


# --- errors: one line naming file, line and key -----------------------------------------

GOOD = """\
name: site
scheduler: pbs
gpus_per_node: 4
cpus_per_node: 32
default_queue: prod
queues:
  prod:
    min_nodes: 10
    max_nodes: 20
    max_walltime: "24:00:00"
    max_queued: 100
    max_running: 10
    max_concurrent_subjobs: 10
    preemptable: false
filesystems: [home]
launcher: mpiexec -n {nranks} --ppn {ppn}
gpu_bind: ""
env_setup: []
max_array_size: 10000
"""


def write(tmp_path: Path, text: str, name: str = "site") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ProfileError) as info:
        load_system(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_custom_profile_by_path(tmp_path):
    p = load_system(write(tmp_path, GOOD))
    assert p.ranks_per_node == 4  # defaults to one rank per GPU


def test_cpu_only_profile_defaults_to_one_rank(tmp_path):
    p = load_system(write(tmp_path, GOOD.replace("gpus_per_node: 4", "gpus_per_node: 0")))
    assert p.ranks_per_node == 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("max_nodes: 20", "max_nodes: ten", "9: queues.prod.max_nodes: expected int, got 'ten'"),
        ("max_nodes: 20", "max_nodes: 5", "9: queues.prod.max_nodes: 5 is below min_nodes 10"),
        ("gpus_per_node: 4", "gpus_per_node: true", "3: gpus_per_node: expected int, got True"),
        ("cpus_per_node: 32", "cpus_per_node: 0", "4: cpus_per_node: must be >= 1, got 0"),
        ('"24:00:00"', '"24h"', "10: queues.prod.max_walltime: expected \"HH:MM:SS\", got '24h'"),
        ("    max_queued: 100\n", "", "7: queues.prod.max_queued: missing"),
        ("max_running: 10", "max_runing: 10", ("12: queues.prod.max_runing: unknown key (did you mean "
         "'max_running'?); expected one of: min_nodes, max_nodes, max_walltime, max_queued, max_running, "
         "max_concurrent_subjobs, preemptable, partition, qos")),
        ("preemptable: false", "preemptable: 0", "14: queues.prod.preemptable: expected true or false, got 0"),
        ("scheduler: pbs", "scheduler: lsf", "2: scheduler: expected one of local, pbs, slurm, got 'lsf'"),
        ("default_queue: prod", "default_queue: debug", "5: default_queue: 'debug' is not one of the queues (prod)"),
        ("name: site", "name: polaris", "1: name: 'polaris' does not match the file name 'site'"),
        ("filesystems: [home]", "filesystems: home", "15: filesystems: expected a list of strings, got 'home'"),
        ("launcher: mpiexec -n {nranks} --ppn {ppn}", "launcher: mpiexec -n {ranks}",
         "16: launcher: unknown placeholder {ranks} (allowed: {depth}, {nnodes}, {nranks}, {ppn})"),
        ("launcher: mpiexec -n {nranks} --ppn {ppn}", "launcher: mpiexec --cpu-bind list:1-8:9-16",
         "16: launcher: --cpu-bind list has 2 core groups but ranks_per_node is 4"),
        ("max_array_size: 10000", "max_array_size: 0", "19: max_array_size: must be >= 1, got 0"),
        ("env_setup: []", "env_setup: []\nextra: 1", ("19: extra: unknown key; expected one of: name, scheduler, "
         "gpus_per_node, cpus_per_node, ranks_per_node, default_queue, queues, filesystems, launcher, "
         "gpu_bind, env_setup, max_array_size, python, mpi_library, tokens_per_second, directives, shared_paths")),
        ("max_array_size: 10000", "max_array_size: 10000\ntokens_per_second: fast",
         "20: tokens_per_second: expected a number > 0, got 'fast'"),
        ("max_array_size: 10000", "max_array_size: 10000\npython: venv/bin/python",
         "20: python: expected an absolute path or a command name, got 'venv/bin/python'"),
        ("env_setup: []", "env_setup: []\nname: again",
         "19: name: duplicate key 'name' (first on line 1); YAML would silently keep only the last"),
        ("gpu_bind: \"\"\n", "", "(top level): gpu_bind: missing"),
    ],
)  # fmt: skip
def test_profile_errors_name_file_line_and_key(tmp_path, old, new, message):
    assert old in GOOD, old
    path = write(tmp_path, GOOD.replace(old, new, 1))
    got = error_of(path)
    if message.startswith("(top level)"):
        assert got == f"{path}: gpu_bind: missing"
    else:
        assert got == f"{path}:{message}"


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "name: site\nqueues: [unclosed\n")
    assert error_of(path).startswith(f"{path}:3: malformed YAML:")      # the spec's YAML reader (jobs/yamlio.py)


def test_every_problem_of_a_profile_at_once_in_file_order(tmp_path):
    """As a spec's: one line each at its key's line; a misspelt key is one problem (not also a missing one)."""
    text = (GOOD.replace("cpus_per_node: 32", "cpus_per_node: -1").replace("max_nodes: 20", "max_nodes: ten")
            .replace("max_running: 10", "max_runing: 10").replace("filesystems: [home]", "filesystems: [home, 'a;b']"))
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_system(path)
    assert [line.removeprefix(f"{path}:").split(": ")[:2] for line in info.value.lines()] == [
        ["4", "cpus_per_node"], ["9", "queues.prod.max_nodes"], ["12", "queues.prod.max_runing"],
        ["15", "filesystems.1"]]
    assert str(info.value) == "\n".join(info.value.lines()) and info.value.exit_code == 2


def test_cross_checks_report_at_each_key(tmp_path):
    text = GOOD.replace("default_queue: prod", "default_queue: debug") + 'directives: ["-l x=1", "-J 3"]\n'
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_system(path)
    assert info.value.lines() == [f"{path}:5: default_queue: 'debug' is not one of the queues (prod)",
                                  f"{path}:20: directives.1: directive '-J 3' sets -J, which lmsweep sets itself"]


def test_local_profile_may_not_have_queues(tmp_path):
    text = GOOD.replace("scheduler: pbs", "scheduler: local").replace(
        "default_queue: prod", "default_queue: null"
    )
    assert (
        error_of(write(tmp_path, text))
        == f"{tmp_path / 'site.yaml'}:6: queues: must be empty for scheduler local"
    )


def test_unknown_system_name_lists_the_known_ones():
    with pytest.raises(
        ProfileError, match=r"unknown system 'summit' \(known: aurora, frontier, local, perlmutter, polaris, "
                            r"slurm-generic, slurm-gpu\)"
    ):
        load_system("summit")


def test_missing_profile_path(tmp_path):
    with pytest.raises(ProfileError, match="no such system profile"):
        load_system(tmp_path / "nope.yaml")


def test_error_paths_inside_the_repo_are_relative():
    from lmsweep.submit.systems import _display

    assert _display(CONFIG_DIR / "x.yaml") == "configs/systems/x.yaml"
