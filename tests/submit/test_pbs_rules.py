"""The PBS script checker accepts what an ALCF user would write and names each mistake."""

from __future__ import annotations

import pytest

try:
    from tests.pbs_rules import ALCF_QUEUES, check_pbs_script
except ImportError:  # tests/ on sys.path (pytest rootdir insertion) instead of the repo root
    from helpers.pbs_rules import ALCF_QUEUES, check_pbs_script

POLARIS = """\
#!/bin/bash -l
#PBS -A myproj
#PBS -q prod
#PBS -l select=10:system=polaris
#PBS -l place=scatter
#PBS -l walltime=02:00:00
#PBS -l filesystems=home:eagle
#PBS -J 0-39%10
#PBS -r y
#PBS -N lmsweep_demo-0
#PBS -j oe
#PBS -o /eagle/myproj/runs/demo/logs/elem.^array_index^.out
#PBS -m ae
#PBS -M someone@anl.gov

# everything below runs on the head node of each subjob
cd "$PBS_O_WORKDIR"
module use /soft/modulefiles
module load conda
mpiexec -n 40 --ppn 4 --depth 8 --cpu-bind depth --hostfile "$PBS_NODEFILE" python -m runner
"""

AURORA = """\
#!/bin/bash -l
#PBS -A myproj
#PBS -q debug
#PBS -l select=2:system=aurora
#PBS -l place=scatter
#PBS -l walltime=00:30:00
#PBS -l filesystems=home:flare
#PBS -k doe
#PBS -N smoke
cd "$PBS_O_WORKDIR"
module load frameworks
mpiexec -n 24 --ppn 12 --hostfile "$PBS_NODEFILE" python -m runner
"""


def replace_line(script: str, old: str, new: str) -> str:
    assert old in script, old
    return script.replace(old, new, 1)


def test_accepts_a_handwritten_polaris_array_script():
    assert check_pbs_script(POLARIS, "polaris") == []


def test_accepts_a_handwritten_aurora_script():
    assert check_pbs_script(AURORA, "aurora") == []


def test_accepts_several_resources_on_one_line_and_preemptable_with_rerun():
    script = (
        "#!/bin/bash\n"
        "#PBS -A myproj -q preemptable -r y\n"
        "#PBS -l select=4:system=polaris:ngpus=4,place=scatter,walltime=72:00:00\n"
        "#PBS -l filesystems=home:grand\n"
        "#PBS -J 1-40:2%20\n"
        "#PBS -o /eagle/myproj/logs/\n"
        "python -m runner\n"
    )
    assert check_pbs_script(script, "polaris") == []


def test_rejects_unknown_system():
    with pytest.raises(ValueError, match="unknown system 'frontier'"):
        check_pbs_script(POLARIS, "frontier")


# --- one test per rule: each mutation yields exactly the message that names it ---------


def only(errors: list[str]) -> str:
    assert len(errors) == 1, errors
    return errors[0]


def test_missing_shebang():
    script = POLARIS.split("\n", 1)[1]
    errors = check_pbs_script(script, "polaris")
    assert "line 1: first line must be a shebang such as '#!/bin/bash -l', got '#PBS -A myproj'" in errors


def test_missing_project():
    script = replace_line(POLARIS, "#PBS -A myproj\n", "")
    assert only(check_pbs_script(script, "polaris")) == "missing mandatory directive -A <project>"


def test_missing_walltime():
    script = replace_line(POLARIS, "#PBS -l walltime=02:00:00\n", "")
    assert only(check_pbs_script(script, "polaris")) == "missing mandatory directive -l walltime=HH:MM:SS"


def test_missing_filesystems():
    script = replace_line(AURORA, "#PBS -l filesystems=home:flare\n", "")
    assert only(check_pbs_script(script, "aurora")) == "missing mandatory directive -l filesystems=<fs:fs>"


def test_unknown_filesystem_for_the_system():
    script = replace_line(AURORA, "filesystems=home:flare", "filesystems=home:eagle")
    assert only(check_pbs_script(script, "aurora")) == (
        "line 7: unknown aurora filesystem 'eagle' (valid: daos_perf, daos_user, flare, home)"
    )


def test_walltime_not_hh_mm_ss():
    script = replace_line(POLARIS, "walltime=02:00:00", "walltime=5min")
    assert only(check_pbs_script(script, "polaris")) == "line 6: walltime '5min' is not HH:MM:SS"


def test_walltime_above_queue_maximum():
    script = replace_line(AURORA, "walltime=00:30:00", "walltime=01:00:01")
    assert only(check_pbs_script(script, "aurora")) == (
        "line 6: walltime 01:00:01 exceeds aurora queue 'debug' maximum 1:00:00"
    )


def test_walltime_below_five_minutes():
    script = replace_line(AURORA, "walltime=00:30:00", "walltime=00:04:59")
    assert only(check_pbs_script(script, "aurora")) == (
        "line 6: walltime 00:04:59 is below the 5-minute minimum of every ALCF queue"
    )


def test_too_few_nodes_for_polaris_prod():
    script = replace_line(POLARIS, "select=10:system=polaris", "select=9:system=polaris")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 4: 9 nodes outside polaris queue 'prod' range 10-496"
    )


def test_too_many_nodes_for_debug():
    script = replace_line(AURORA, "select=2:system=aurora", "select=3:system=aurora")
    assert (
        only(check_pbs_script(script, "aurora")) == "line 4: 3 nodes outside aurora queue 'debug' range 1-2"
    )


def test_select_for_the_wrong_machine():
    script = replace_line(POLARIS, "select=10:system=polaris", "select=10:system=aurora")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 4: select asks for system=aurora but this is a polaris script"
    )


def test_select_without_system():
    script = replace_line(POLARIS, "select=10:system=polaris", "select=10:ncpus=64")
    assert (
        only(check_pbs_script(script, "polaris")) == "line 4: select must name the machine: 10:system=polaris"
    )


def test_place_must_be_scatter():
    script = replace_line(POLARIS, "place=scatter", "place=pack")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 5: -l place=pack must be scatter (optionally :excl or :group=tier0|tier1)"
    )


def test_unknown_queue():
    script = replace_line(POLARIS, "#PBS -q prod", "#PBS -q workq")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 3: unknown polaris queue 'workq' (known: debug, debug-scaling, prod, preemptable, capacity)"
    )


def test_wide_prod_array_needs_a_throttle():
    script = replace_line(POLARIS, "-J 0-39%10", "-J 0-39")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 8: -J 0-39: 40 subjobs in queue 'prod' need a throttle %K with K <= 10 "
        "(without it the array may never run)"
    )


def test_prod_throttle_above_ten():
    script = replace_line(POLARIS, "-J 0-39%10", "-J 0-39%11")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 8: -J 0-39%11: %11 exceeds queue 'prod' limit of 10 running subjobs"
    )


def test_debug_array_throttle_above_one():
    script = replace_line(POLARIS, "#PBS -q prod", "#PBS -q debug")
    script = replace_line(script, "select=10:", "select=1:")
    script = replace_line(script, "walltime=02:00:00", "walltime=01:00:00")
    script = replace_line(script, "-J 0-39%10", "-J 0-3%2")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 8: -J 0-3%2: %2 exceeds queue 'debug' limit of 1 running subjobs"
    )


def test_preemptable_throttle_above_twenty():
    script = replace_line(POLARIS, "#PBS -q prod", "#PBS -q preemptable")
    script = replace_line(script, "select=10:", "select=2:")
    script = replace_line(script, "-J 0-39%10", "-J 0-19%21")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 8: -J 0-19%21: %21 exceeds queue 'preemptable' limit of 20 running subjobs"
    )


def test_array_larger_than_the_queued_job_limit():
    # OpenPBS counts every subjob toward max_queued (fixture 05_qsub_limq_array_over_limit)
    script = replace_line(POLARIS, "-J 0-39%10", "-J 0-100%10")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 8: -J 0-100%10: 101 subjobs exceed queue 'prod' limit of 100 queued jobs (each subjob counts)"
    )


def test_malformed_array_ranges():
    for bad, message in (
        ("5", "line 8: -J '5' is not start-end[:step][%max_running]"),
        ("5-2", "line 8: -J 5-2: start must be below end (PBS rejects 5-2)"),
        ("0-9:0", "line 8: -J 0-9:0: step and %max must be >= 1"),
    ):
        script = replace_line(POLARIS, "-J 0-39%10", f"-J {bad}")
        assert only(check_pbs_script(script, "polaris")) == message


def test_array_above_max_array_size():
    script = replace_line(POLARIS, "#PBS -q prod", "#PBS -q preemptable")
    script = replace_line(script, "select=10:", "select=2:")
    script = replace_line(script, "-J 0-39%10", "-J 0-10000%20")
    errors = check_pbs_script(script, "polaris")
    assert "line 8: -J 0-10000%20 has 10001 subjobs, above max_array_size 10000" in errors


def test_preemptable_needs_rerunnable():
    script = replace_line(POLARIS, "#PBS -q prod", "#PBS -q preemptable")
    script = replace_line(script, "select=10:", "select=2:")
    script = replace_line(script, "-J 0-39%10", "-J 0-19%20")
    script = replace_line(script, "#PBS -r y\n", "")
    assert only(check_pbs_script(script, "polaris")) == (
        "queue 'preemptable' is preemptable: add '#PBS -r y' so a killed job is rerun"
    )


def test_rerun_flag_must_be_y_or_n():
    script = replace_line(POLARIS, "#PBS -r y", "#PBS -r yes")
    assert only(check_pbs_script(script, "polaris")) == "line 9: -r must be y or n, got 'yes'"


def test_directive_after_first_command_is_ignored():
    script = POLARIS + "#PBS -l walltime=04:00:00\n"
    assert only(check_pbs_script(script, "polaris")) == (
        "line 21: #PBS directive after the first command (line 17) is ignored by PBS"
    )


def test_lookalike_directive_is_flagged():
    script = replace_line(POLARIS, "#PBS -j oe", "# PBS -j oe")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 11: '# PBS -j oe' is not read by PBS (a directive starts exactly '#PBS ')"
    )


def test_unknown_directive():
    script = replace_line(POLARIS, "#PBS -j oe", "#PBS -V")
    assert only(check_pbs_script(script, "polaris")) == "line 11: unknown or unsupported directive -V"


def test_unknown_resource():
    script = replace_line(POLARIS, "#PBS -j oe", "#PBS -l mem=10gb")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 11: unknown resource -l mem (allowed: select, place, walltime, filesystems)"
    )


def test_duplicate_directive():
    script = replace_line(POLARIS, "#PBS -j oe", "#PBS -q debug")
    assert only(check_pbs_script(script, "polaris")) == "line 11: -q given twice (first on line 3)"


def test_trailing_comment_in_directive():
    script = replace_line(AURORA, "#PBS -A myproj", "#PBS -A myproj  # replace with your project")
    assert only(check_pbs_script(script, "aurora")) == (
        "line 2: trailing comment in a #PBS directive (not every PBS strips it; keep it bare)"
    )


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("1run", "must start with a letter"),
        ("my run", "must start with a letter"),
        ("a/b", "must start with a letter"),
        ("x" * 237, "is 237 characters, PBS allows 236"),
    ],
)
def test_job_name_rules(name, why):
    script = replace_line(AURORA, "#PBS -N smoke", f"#PBS -N '{name}'")
    errors = check_pbs_script(script, "aurora")
    assert len(errors) == 1 and why in errors[0], errors


def test_join_must_be_oe():
    script = replace_line(POLARIS, "#PBS -j oe", "#PBS -j yes")
    assert only(check_pbs_script(script, "polaris")) == "line 11: -j must be oe, eo or n, got 'yes'"


def test_array_output_without_index_would_be_overwritten():
    script = replace_line(POLARIS, "elem.^array_index^.out", "elem.out")
    assert only(check_pbs_script(script, "polaris")) == (
        "line 12: -o /eagle/myproj/runs/demo/logs/elem.out has no ^array_index^: "
        "every subjob would write the same file"
    )


def test_mail_options_and_address():
    script = replace_line(POLARIS, "#PBS -m ae", "#PBS -m aez")
    script = replace_line(script, "someone@anl.gov", "someone")
    assert check_pbs_script(script, "polaris") == [
        "line 13: -m 'aez' must be 'n' or letters from a, b, e, j",
        "line 14: -M 'someone' is not an e-mail address",
    ]


def test_placeholder_project_is_rejected():
    script = replace_line(AURORA, "#PBS -A myproj", "#PBS -A <your_ProjectName>")
    assert only(check_pbs_script(script, "aurora")) == "line 2: -A '<your_ProjectName>' is not a project name"


def test_every_queue_table_row_is_consistent():
    for system, queues in ALCF_QUEUES.items():
        for name, rule in queues.items():
            assert 1 <= rule.min_nodes <= rule.max_nodes, (system, name)
            assert rule.max_concurrent >= 1, (system, name)
