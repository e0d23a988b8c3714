"""PBS output parsing, checked against real OpenPBS 23.06 transcripts (tests/fixtures/pbs).

The fixtures are copied into the repository from the recorded server session; every value
asserted here was read off those files, and ``test_every_capture_is_parsed`` makes sure no
transcript in ``index.json`` goes untested.
"""

from __future__ import annotations

import json
import re

import pytest

from helpers.cli import FIXTURES as REPO_FIXTURES
from lmsweep.submit.backends.pbs import limits_from_qmgr, states_from_qstat, task_states
from lmsweep.submit.backends.pbs_parse import (
    JobErrors,
    JobState,
    PbsParseError,
    classify_qsub_error,
    normalize_state,
    parse_index_list,
    parse_job_errors,
    parse_job_id,
    parse_job_kill_message,
    parse_qstat_full,
    parse_qsub_output,
    parse_queue_limits,
    parse_server_attributes,
    state_from_attributes,
)
from lmsweep.submit.base import RecordedJob

FIXTURES = REPO_FIXTURES / "pbs"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_id(jobs: list[JobState]) -> dict[str, JobState]:
    return {j.job_id: j for j in jobs}


# --------------------------------------------------------------------------- qsub


@pytest.mark.parametrize(
    ("name", "job_id"),
    [
        ("01_qsub_polaris.stdout.txt", "4.pbshost"),
        ("02_qsub_array.stdout.txt", "5[].pbshost"),
        ("03_qsub_h.stdout.txt", "12.pbshost"),
        ("04_qsub_array_pending.stdout.txt", "13[].pbshost"),
        ("05_qsub_array_at_limit.stdout.txt", "17[].pbshost"),
        ("05_qsub_debug_1.stdout.txt", "23.pbshost"),
        ("05_qsub_limq_1.stdout.txt", "19.pbshost"),
        ("05_qsub_limq_2.stdout.txt", "20.pbshost"),
        ("05_qsub_limq_3.stdout.txt", "21.pbshost"),
        ("06_qsub_dep_afterok.stdout.txt", "6.pbshost"),
        ("06_qsub_dep_afternotok.stdout.txt", "7.pbshost"),
        ("06_qsub_dep_afterany.stdout.txt", "8.pbshost"),
        ("06b_qsub_array_plain.stdout.txt", "9[].pbshost"),
        ("06b_qsub_dep_afterok.stdout.txt", "10.pbshost"),
        ("06b_qsub_dep_afternotok.stdout.txt", "11.pbshost"),
        ("06c_qsub_array_0-5_plain.stdout.txt", "14[].pbshost"),
        ("06c_qsub_dep_afterok.stdout.txt", "15.pbshost"),
        ("09_qsub_never_runs.stdout.txt", "27.pbshost"),
        ("10_qsub_array_running.stdout.txt", "28[].pbshost"),
        ("10b_qsub_single_long.stdout.txt", "29.pbshost"),
        ("11_qsub_walltime_exceed.stdout.txt", "30.pbshost"),
    ],
)
def test_qsub_prints_the_job_id(name, job_id):
    assert parse_qsub_output(fixture(name)) == job_id


def test_array_job_id_parts():
    jid = parse_job_id(parse_qsub_output(fixture("02_qsub_array.stdout.txt")))
    assert (jid.seq, jid.index, jid.is_array, jid.server) == (5, None, True, "pbshost")
    assert jid.array_id == "5[].pbshost" and str(jid) == "5[].pbshost"


def test_plain_job_id_parts():
    jid = parse_job_id("4.pbshost")
    assert (jid.seq, jid.index, jid.is_array, jid.array_id) == (4, None, False, None)


def test_subjob_ids_seen_inside_a_subjob():
    env = dict(line.split("=", 1) for line in fixture("07_subjob_env_index1.txt").splitlines())
    assert parse_job_id(env["PBS_ARRAY_ID"]).array_id == "5[].pbshost"
    sub = parse_job_id(env["PBS_JOBID"])
    assert (sub.seq, sub.index, sub.array_id) == (5, int(env["PBS_ARRAY_INDEX"]), "5[].pbshost")


def test_qsub_id_after_site_notices_and_alcf_style_server():
    out = "Note: your job will be charged to myproj\n123456.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov\n"
    assert parse_qsub_output(out) == "123456.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def test_qsub_without_id_is_an_error():
    with pytest.raises(PbsParseError, match="qsub printed no job id"):
        parse_qsub_output("qsub: would exceed queue generic's per-user limit\n")


# --------------------------------------------------------------------------- qstat records
#
# The backend asks for `qstat -x -f -t` in text form (pbs.py), so that is the parser under test. Cases captured
# only as `-F json` (qdel of an array, walltime kill, Can Never Run) go through the same attribute rules
# (`state_from_attributes`) and the same per-task step the backend runs (`task_states`): the transcripts' real
# attribute values, without a JSON parser in the product.


def records(name: str) -> list[JobState]:
    """The job records of one transcript: `-f` text as the backend parses it, `-F json` as attribute maps."""
    text = fixture(name)
    if name.endswith(".json"):
        return [state_from_attributes(jid, attrs) for jid, attrs in json.loads(text).get("Jobs", {}).items()]
    return parse_qstat_full(text)


def recorded(job_id: str, n_tasks: int, directory: str = "/nonexistent") -> RecordedJob:
    return RecordedJob(job_id, n_tasks, "sub-0001", 0, list(range(n_tasks)), directory)


def per_task(job_id: str, n_tasks: int, jobs: list[JobState]) -> dict[int, str]:
    states = task_states([recorded(job_id, n_tasks)], jobs)
    return {i: states[(job_id, i)].state for i in range(n_tasks)}


@pytest.mark.parametrize("name", ["01_qstat_f_running.stdout.txt", "01_qstat_f_json_running.stdout.json"])
def test_running_single_job(name):
    [job] = records(name)
    assert (job.job_id, job.state, job.normalized, job.queue) == ("4.pbshost", "R", "running", "workq")
    assert job.array_index is None and not job.is_array_parent and job.exit_status is None
    assert job.name == "polaris_single"


@pytest.mark.parametrize("name", ["03_qstat_xf_finished.stdout.txt", "03_qstat_xf_json_finished.stdout.json"])
def test_finished_single_job(name):
    [job] = records(name)
    assert (job.job_id, job.state, job.exit_status, job.substate) == ("4.pbshost", "F", 0, 92)
    assert job.normalized == "finished" and job.done
    assert job.comment == "Job run at Sun Nov 22 at 08:21 on (pbshost:ncpus=1) and finished"
    assert per_task("4.pbshost", 1, [job]) == {0: "finished"}


# --------------------------------------------------------------------------- held, then deleted


@pytest.mark.parametrize("name", ["03_qstat_f_held.stdout.txt", "03_qstat_f_json_held.stdout.json"])
def test_held_job(name):
    [job] = records(name)
    assert (job.job_id, job.name, job.state, job.normalized) == ("12.pbshost", "held_job", "H", "held")
    assert not job.done


def test_held_job_deleted_is_cancelled_without_exit_status():
    [job] = records("03_qstat_xf_json_after_qdel.stdout.json")
    assert (job.state, job.substate, job.exit_status, job.normalized) == ("F", 91, None, "cancelled")
    assert per_task("12.pbshost", 1, [job]) == {0: "cancelled"}


# --------------------------------------------------------------------------- array 5[]: -J 0-5%2, index 3 exits 3


def test_array_while_running():
    jobs = records("02_qstat_f_json_t_running.stdout.json")
    parent = by_id(jobs)["5[].pbshost"]
    assert (parent.state, parent.normalized, parent.is_array_parent) == ("B", "running", True)
    assert parent.array_indices == (0, 1, 2, 3, 4, 5)
    assert parent.array_id == "5[].pbshost"
    # queued subjobs carry no array_index attribute; the index comes from the id
    assert by_id(jobs)["5[2].pbshost"].array_index == 2
    assert per_task("5[].pbshost", 6, jobs) == {
        0: "running", 1: "running", 2: "queued", 3: "queued", 4: "queued", 5: "queued",
    }  # fmt: skip


def test_parent_record_while_running_text():
    [parent] = records("02_qstat_f_parent_running.stdout.txt")
    assert (parent.job_id, parent.state, parent.substate) == ("5[].pbshost", "B", 70)
    assert parent.array_indices == (0, 1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", ["02_qstat_xf_json_t_final.stdout.json", "02_qstat_xf_t_final.stdout.txt"])
def test_array_final_each_subjob_decides(name):
    jobs = by_id(records(name))
    assert per_task("5[].pbshost", 6, list(jobs.values())) == {
        0: "finished", 1: "finished", 2: "finished", 3: "failed", 4: "finished", 5: "finished",
    }  # fmt: skip
    assert jobs["5[3].pbshost"].exit_status == 3
    assert jobs["5[3].pbshost"].comment == "Job run at Sun Nov 22 at 08:22 on (pbshost:ncpus=1) and failed"
    parent = jobs["5[].pbshost"]
    # the parent claims success: ALCF's known issue, so it must not decide the outcome
    assert (parent.state, parent.exit_status, parent.normalized) == ("F", 0, "unknown")
    assert parent.done


def test_parent_alone_says_exit_0_but_every_subjob_is_unknown():
    jobs = records("02_qstat_xf_json_parent_final.stdout.json")
    assert [(j.job_id, j.exit_status) for j in jobs] == [("5[].pbshost", 0)]
    assert per_task("5[].pbshost", 6, jobs) == dict.fromkeys(range(6), "unknown")


def test_failing_subjob_alone():
    [job] = records("02_qstat_xf_json_subjob3_final.stdout.json")
    assert (job.job_id, job.array_index, job.exit_status, job.normalized) == ("5[3].pbshost", 3, 3, "failed")
    assert job.array_id == "5[].pbshost"


def test_dependents_of_array_with_failed_subjob():
    # afterok ran although 5[3] failed; afternotok was removed without running
    [afterok] = records("06_qstat_xf_json_deps_final.stdout.json")  # multi-id JSON: first only
    assert (afterok.job_id, afterok.normalized, afterok.exit_status) == ("6.pbshost", "finished", 0)
    [afternotok] = records("06_qstat_xf_json_afternotok_never_ran.stdout.json")
    assert (afternotok.job_id, afternotok.state, afternotok.substate) == ("7.pbshost", "F", 92)
    assert (afternotok.exit_status, afternotok.normalized) == (None, "cancelled")
    [afterany] = records("06_qstat_xf_json_afterany.stdout.json")
    assert (afterany.job_id, afterany.normalized) == ("8.pbshost", "finished")


def test_control_array_9_parent_exit_1_when_failure_is_last():
    jobs = by_id(records("06b_qstat_xf_final.stdout.txt"))
    assert jobs["9[].pbshost"].exit_status == 1 and jobs["9[].pbshost"].normalized == "unknown"
    assert (jobs["10.pbshost"].name, jobs["10.pbshost"].normalized) == ("dep2_afterok", "cancelled")
    assert (jobs["11.pbshost"].name, jobs["11.pbshost"].normalized) == ("dep2_afternotok", "finished")


def test_control_array_14_failed_subjob_and_missing_ones_are_unknown():
    jobs = records("06c_qstat_xf_final.stdout.txt")
    ids = by_id(jobs)
    assert ids["14[].pbshost"].exit_status == 0
    assert (ids["14[3].pbshost"].exit_status, ids["14[3].pbshost"].normalized) == (3, "failed")
    assert ids["15.pbshost"].normalized == "finished"  # afterok ran despite 14[3]
    assert per_task("14[].pbshost", 6, jobs) == {
        0: "unknown", 1: "unknown", 2: "unknown", 3: "failed", 4: "unknown", 5: "unknown",
    }  # fmt: skip


def test_bare_array_id_is_unknown_but_other_operands_still_print():
    errors = parse_job_errors(fixture("06c_qstat_x_bare_array_id.stderr.txt"))
    assert errors == JobErrors(unknown=("14.pbshost",))


def test_forgotten_job_says_so_and_a_kill_notice_in_its_log_says_failed(tmp_path):
    stderr = fixture("05_qstat_x_unknown_job.stderr.txt")
    states = states_from_qstat([recorded("99999.pbshost", 1, str(tmp_path))], "", stderr)
    assert (states[("99999.pbshost", 0)].state, states[("99999.pbshost", 0)].reason) == (
        "unknown", "qstat: Unknown Job Id (history expired)")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "job.err").write_text(fixture("11_walltime_killed_joboutput_stderr.txt"))
    state = states_from_qstat([recorded("99999.pbshost", 1, str(tmp_path))], "", stderr)[("99999.pbshost", 0)]
    assert (state.state, state.reason) == ("failed", "PBS: job killed: walltime 10 exceeded limit 5")


# --------------------------------------------------------------------------- array 13[]: qdel while pending


def test_parent_after_one_subjob_deleted_json():
    [parent] = records("04_qstat_f_json_parent_after_qdel_subjob.stdout.json")
    assert (parent.job_id, parent.normalized, parent.array_indices) == (
        "13[].pbshost",
        "queued",
        (0, 1, 2, 3, 4),
    )


def test_qdeled_pending_array_every_subjob_cancelled():
    jobs = records("04_qstat_xf_json_t_after_qdel_array.stdout.json")
    assert all(j.exit_status is None and j.substate == 91 for j in jobs)
    assert per_task("13[].pbshost", 5, jobs) == dict.fromkeys(range(5), "cancelled")
    parent = by_id(jobs)["13[].pbshost"]
    assert (parent.normalized, parent.comment) == (
        "cancelled",
        "Not Running: Queue not started. and terminated",
    )


# --------------------------------------------------------------------------- array 28[] and job 29: qdel while running


def test_qdeled_running_array_is_cancelled_though_exit_status_is_0():
    jobs = by_id(records("10_qstat_xf_json_t_after_qdel_array.stdout.json"))
    assert {j.exit_status for j in jobs.values()} == {0}
    assert per_task("28[].pbshost", 4, list(jobs.values())) == dict.fromkeys(range(4), "cancelled")
    assert jobs["28[0].pbshost"].comment.endswith("and terminated by root@pbshost")
    assert jobs["28[1].pbshost"].comment == "Subjob finished"  # deleted while running; substate says so


def test_qdeled_running_single_job_and_wrapped_comment():
    [job] = records("10b_qstat_xf_after_qdel_running.stdout.txt")
    assert (job.exit_status, job.substate, job.normalized) == (0, 91, "cancelled")
    # the text form wraps long values with a tab; pieces join without a separator
    assert job.comment == "Job run at Sun Nov 22 at 08:25 on (pbshost:ncpus=1) and terminated by root@pbshost"


# --------------------------------------------------------------------------- other outcomes


def test_walltime_kill_is_failed():
    [job] = records("11_qstat_xf_json_walltime_exceeded.stdout.json")
    assert (job.job_id, job.exit_status, job.substate, job.normalized) == ("30.pbshost", -29, 93, "failed")


def test_kill_notice_in_the_job_stderr_file():
    assert parse_job_kill_message(fixture("11_walltime_killed_joboutput_stderr.txt")) == (
        "walltime 10 exceeded limit 5"
    )
    assert parse_job_kill_message(fixture("02_subjob3_joboutput_stderr.txt")) is None  # the job's own failure
    assert fixture("02_subjob3_joboutput_stdout.txt").strip() == "index=3 jobid=5[3].pbshost"


def test_job_that_can_never_run():
    [job] = records("09_qstat_f_json_never_runs.stdout.json")
    assert job.normalized == "queued" and job.can_never_run
    assert job.comment == "Can Never Run: Insufficient amount of resource: system (aurora != polaris)"
    [state] = task_states([recorded("27.pbshost", 1)], [job]).values()
    assert state.active and state.never_runs


def test_multi_id_json_prints_only_first_job_but_text_prints_all():
    """Why the backend asks for the text form: one batched call must list every job."""
    assert [j.job_id for j in records("08_qstat_f_json_multi_id.stdout.json")] == ["19.pbshost"]
    text_ids = ["19.pbshost", "20.pbshost", "21.pbshost"]
    assert [j.job_id for j in records("08_qstat_f_multi_id_text.stdout.txt")] == text_ids
    every = by_id(records("08_qstat_f_json_all.stdout.json"))
    assert sorted(every) == ["19.pbshost", "20.pbshost", "21.pbshost", "23.pbshost"]
    assert (every["23.pbshost"].state, every["23.pbshost"].normalized) == ("E", "exiting")
    assert every["19.pbshost"].queue == "limq"


@pytest.mark.parametrize(
    ("exit_status", "substate", "comment", "expected"),
    [
        (0, 92, None, "finished"),
        (3, 93, None, "failed"),
        (-29, 93, None, "failed"),  # walltime
        (271, None, None, "cancelled"),  # 256 + SIGTERM: qdel/preemption on production PBS
        (265, None, None, "failed"),  # 256 + SIGKILL: e.g. the OOM killer
        (0, 91, None, "cancelled"),
        (0, None, "Job run at ... and terminated", "cancelled"),
        (None, 92, None, "cancelled"),  # never ran (dependency removed)
        (None, 94, None, "unknown"),  # moved
    ],
)
def test_normalize_finished_jobs(exit_status, substate, comment, expected):
    assert normalize_state("F", exit_status=exit_status, substate=substate, comment=comment) == expected
    assert normalize_state("X", exit_status=exit_status, substate=substate, comment=comment) == expected


@pytest.mark.parametrize(
    ("letter", "expected"),
    [("Q", "queued"), ("W", "queued"), ("T", "queued"), ("H", "held"), ("S", "held"), ("R", "running"),
     ("B", "running"), ("E", "exiting"), ("M", "unknown"), ("Z", "unknown")],
)  # fmt: skip
def test_normalize_live_letters(letter, expected):
    assert normalize_state(letter, exit_status=None) == expected


def test_index_lists():
    assert parse_index_list("0-1,3-4") == (0, 1, 3, 4)
    assert parse_index_list("0-9:3") == (0, 3, 6, 9)
    assert parse_index_list("-") == ()


def test_garbage_is_rejected():
    with pytest.raises(PbsParseError, match="not 'key = value'"):
        parse_qstat_full("Job Id: 4.pbshost\noops\n")
    assert parse_qstat_full("") == []


# --------------------------------------------------------------------------- stderr


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("01_qstat_finished_no_x.stderr.txt", JobErrors(finished=("4.pbshost",))),
        ("03_qstat_after_qdel_no_x.stderr.txt", JobErrors(finished=("12.pbshost",))),
        ("04_qstat_t_after_qdel_array.stderr.txt", JobErrors(finished=("13[].pbshost",))),
        ("05_qstat_unknown_job.stderr.txt", JobErrors(unknown=("99999.pbshost",))),
        ("05_qstat_x_unknown_job.stderr.txt", JobErrors(unknown=("99999.pbshost",))),
        ("05_qdel_unknown_job.stderr.txt", JobErrors(unknown=("99999.pbshost",))),
        ("05_qdel_finished_job.stderr.txt", JobErrors(finished=("4.pbshost",))),
        ("05_qdel_subjob_of_finished_array.stderr.txt", JobErrors(finished=("13[77].pbshost",))),
        ("06c_qstat_x_bare_array_id.stderr.txt", JobErrors(unknown=("14.pbshost",))),
    ],
)
def test_qstat_and_qdel_errors(name, expected):
    assert parse_job_errors(fixture(name)) == expected


def test_unclassified_stderr_is_kept():
    errors = parse_job_errors("qstat: cannot connect to server pbshost (errno=111)\n")
    assert errors.other == ("qstat: cannot connect to server pbshost (errno=111)",) and errors
    assert not parse_job_errors("")


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("05_qsub_array_too_large.stderr.txt", "array_too_large", "qsub: Array job exceeds server or queue size limit"),
        ("05_qsub_array_single_index.stderr.txt", "bad_array_range", "qsub: illegal -J value"),
        ("05_qsub_bad_array_range.stderr.txt", "bad_array_range", "qsub: illegal -J value"),
        ("05_qsub_bad_walltime_5min.stderr.txt", "bad_attribute", "qsub: Illegal attribute or resource value Resource_List.walltime"),
        ("05_qsub_bad_walltime_abc.stderr.txt", "bad_attribute", "qsub: Illegal attribute or resource value Resource_List.walltime"),
        ("05_qsub_debug_2_exceeds.stderr.txt", "queue_limit", "qsub: would exceed queue generic's per-user limit"),
        ("05_qsub_limq_4_exceeds.stderr.txt", "queue_limit", "qsub: would exceed queue generic's per-user limit"),
        ("05_qsub_limq_array_over_limit.stderr.txt", "queue_limit", "qsub: would exceed queue generic's per-user limit"),
        ("05_qsub_missing_script.stderr.txt", "missing_script", "qsub: script file:: No such file or directory"),
        ("05_qsub_unknown_queue.stderr.txt", "unknown_queue", "qsub: Unknown queue"),
        ("05_qsub_unknown_resource.stderr.txt", "unknown_resource", "qsub: Unknown resource: ngpus"),
    ],
)  # fmt: skip
def test_qsub_rejections(name, kind, message):
    rejection = classify_qsub_error(fixture(name))
    assert (rejection.kind, rejection.message) == (kind, message)
    assert rejection.hint


def test_alcf_rejection_message():
    assert classify_qsub_error("qsub: Job rejected by all possible destinations\n").kind == "rejected"


# --------------------------------------------------------------------------- server and queues


def test_queue_limits_from_qmgr_print_server():
    text = fixture("00_qmgr_print_server.stdout.txt")
    queues = parse_queue_limits(text)
    assert sorted(queues) == ["debug", "preemptable", "workq"]
    assert queues["debug"]["max_queued"] == {"u:PBS_GENERIC": 1}
    assert queues["preemptable"]["max_queued"] == {"p:PBS_GENERIC": 20}
    assert queues["workq"] == {"queue_type": "Execution", "enabled": True, "started": True}
    server = parse_server_attributes(text)
    assert server["max_array_size"] == 10000 and server["default_queue"] == "workq"
    assert server["job_history_enable"] is True


def test_queue_limits_from_qmgr_list_queue():
    queues = parse_queue_limits(fixture("05_qmgr_list_limq.stdout.txt"))
    assert queues["limq"]["max_queued"] == {"u:PBS_GENERIC": 3}
    assert queues["limq"]["started"] is False


def test_queue_limits_with_several_entries_and_resources_max():
    text = (
        'set queue prod max_queued = "[o:PBS_ALL=1000], [p:PBS_GENERIC=100]"\n'
        "set queue prod resources_max.walltime = 24:00:00\n"
        "set queue prod resources_min.nodect = 10\n"
    )
    assert parse_queue_limits(text) == {
        "prod": {
            "max_queued": {"o:PBS_ALL": 1000, "p:PBS_GENERIC": 100},
            "resources_max.walltime": "24:00:00",
            "resources_min.nodect": 10,
        }
    }


def test_live_limits_from_qmgr_print_server():
    text = fixture("00_qmgr_print_server.stdout.txt")
    assert limits_from_qmgr(text, "debug") == {"max_array_size": 10000, "max_queued": 1}
    assert limits_from_qmgr(text, "preemptable") == {"max_array_size": 10000, "max_queued": 20}
    assert limits_from_qmgr(text, "workq") == {"max_array_size": 10000}
    assert limits_from_qmgr(fixture("05_qmgr_list_limq.stdout.txt"), "limq") == {"max_queued": 3}


# --------------------------------------------------------------------------- completeness


def _captures() -> list[dict]:
    return json.loads((FIXTURES / "index.json").read_text())["captures"]


NOT_PARSED = {
    "00_qstat_version": "version banner",
    "00_qstat_B": "server summary, nothing lmsweep reads",
    "00_qstat_Q": "queue summary, nothing lmsweep reads (limits come from qmgr)",
}


def _asks_for(command: str) -> bool:
    """The qstat form the backend runs: full records (-f), text (not -F json / dsv)."""
    words = command.split()
    return any(w.startswith("-") and "f" in w and not w.startswith("-F") for w in words) and "-F" not in words


@pytest.mark.parametrize("capture", _captures(), ids=lambda c: c["name"])
def test_every_capture_is_parsed(capture):
    """Each PBS command transcript parses cleanly and yields every job id it prints."""
    command = capture["command"]
    if command is None or capture["name"] in NOT_PARSED:
        pytest.skip(NOT_PARSED.get(capture["name"], "file written by a job, not PBS output"))
    tool = command.split()[0]
    out = fixture(capture["stdout_file"]) if capture["stdout_file"] else ""
    err = fixture(capture["stderr_file"]) if capture["stderr_file"] else ""
    if tool == "qsub":
        if capture["exit_code"] == 0:
            assert parse_qsub_output(out) == out.strip()
        else:
            assert classify_qsub_error(err).kind != "unknown"
    elif tool == "qstat":
        if out.startswith("{"):
            jobs = [state_from_attributes(jid, attrs) for jid, attrs in json.loads(out).get("Jobs", {}).items()]
            assert {j.job_id for j in jobs} == set(json.loads(out).get("Jobs", {}))
        elif _asks_for(command) or not out.strip():
            jobs = parse_qstat_full(out)
            printed = set(re.findall(r"^Job Id: (\d+\[?\d*\]?\.pbshost)", out, re.MULTILINE))
            assert {j.job_id for j in jobs} == printed
        errors = parse_job_errors(err)
        assert not errors.other
        assert (capture["exit_code"] != 0) == bool(errors)
    elif tool == "qdel":
        assert out == "" and (capture["exit_code"] != 0) == bool(parse_job_errors(err))
        assert not parse_job_errors(err).other
    elif tool == "qmgr":
        assert parse_queue_limits(out)
    elif tool == "ls":
        pytest.skip("directory listing of job output files")
    else:
        pytest.fail(f"no parser for {command!r}")
