"""A compaction manifest is data on disk, never trusted (issue 20): a name that leaves the manifest's own
directory, a malformed manifest or a symlink is refused. The manifest is moved to EXP/quarantine/ with a
`.reason` note, one line says so, and nothing it names is deleted (or skipped by readers).

The trees are written with the real PartWriter (benchmarks.results); the traversal runs through the real
`lmsweep worker` and `lmsweep results --compact`, the malformed table through compaction and `lmsweep.load`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lmsweep
from helpers.cli import cli
from lmsweep.results.compact import compact_experiment, recover
from lmsweep.results.integrity import live_parts

TRAVERSAL = {"merged": "../../plan.json", "replaces": ["../../../victim.txt"]}
REFUSED = "refused compaction manifest"


def parts_dir(exp: Path) -> Path:
    return exp / "results" / "task=generate"


def part_names(exp: Path, element: int | None = None) -> list[str]:
    prefix = "part-" if element is None else f"part-e{element:05d}-"
    return sorted(p.name for p in parts_dir(exp).glob(f"{prefix}*.parquet"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    from benchmarks.results import synthetic_plan, write_parts
    from lmsweep.jobs.plan import write_plan

    exp = tmp_path_factory.mktemp("manifest") / "bench"
    plan = synthetic_plan(20, elements=2)
    write_plan(plan, exp)
    write_parts(exp, plan, rows_per_file=4)        # element 0: 3 parts, element 1: 2 parts
    return exp


@pytest.fixture()
def exp(built, tmp_path) -> Path:
    """A fresh copy at tmp/runs/bench, with tmp/runs/victim.txt next to it (what ../../../ reaches)."""
    dest = tmp_path / "runs" / "bench"
    shutil.copytree(built, dest)
    (tmp_path / "runs" / "victim.txt").write_text("not yours\n")
    return dest


def victim(exp: Path) -> Path:
    return exp.parent / "victim.txt"


def quarantined(exp: Path, name: str) -> Path:
    return exp / "quarantine" / "results" / "task=generate" / name


def refused_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if REFUSED in line]


def assert_refused(exp: Path, name: str) -> None:
    """The manifest left the results tree for quarantine/, with a note saying why."""
    assert not os.path.lexists(parts_dir(exp) / name)
    assert os.path.lexists(quarantined(exp, name))
    assert quarantined(exp, name + ".reason").read_text().strip()


def test_traversal_manifest_through_the_real_worker_deletes_nothing_outside(exp):
    (parts_dir(exp) / "_compact-e00000-1.json").write_text(json.dumps(TRAVERSAL))
    proc = subprocess.run([sys.executable, "-m", "lmsweep", "worker", "--plan", str(exp), "--element", "0"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert victim(exp).read_text() == "not yours\n"
    assert (exp / "plan.json").is_file()
    assert proc.returncode == 0, proc.stderr[-2000:]                # every unit was done: nothing to run
    assert len(refused_lines(proc.stderr)) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_refused(exp, "_compact-e00000-1.json")
    assert len(lmsweep.load(exp)) == 20 and lmsweep.status(exp).complete


def test_traversal_manifest_through_results_compact_deletes_nothing_outside(exp):
    (parts_dir(exp) / "_compact-e00000-1.json").write_text(json.dumps(TRAVERSAL))
    proc = cli("results", str(exp), "--compact")
    assert victim(exp).read_text() == "not yours\n"
    assert proc.returncode == 0, proc.stderr
    assert len(refused_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "../../plan.json" in refused_lines(proc.stderr)[0]
    assert_refused(exp, "_compact-e00000-1.json")
    assert "compacted 2 element(s)" in proc.stdout            # the real parts are still merged
    assert len(lmsweep.load(exp)) == 20 and lmsweep.status(exp).complete


def malformed_cases() -> list[tuple[str, bytes]]:
    other = "part-e00001-r0000-1-0bbfd16a-1-0.parquet"
    ok = "part-e00000-c1-1.parquet"
    return [
        ("empty object", b"{}"),
        ("a list", b'["part-e00000-c1-1.parquet"]'),
        ("null", b"null"),
        ("truncated JSON", b'{"merged": "part-e00000-c1-1.parq'),
        ("empty file", b""),
        ("not UTF-8", b'{"merged": "\xff\xfe"}'),
        ("merged is a number", json.dumps({"merged": 1, "replaces": []}).encode()),
        ("replaces is a string", json.dumps({"merged": ok, "replaces": "part-e00000"}).encode()),
        ("replaces holds a number", json.dumps({"merged": ok, "replaces": [7]}).encode()),
        ("replaces missing", json.dumps({"merged": ok}).encode()),
        ("absolute path", json.dumps({"merged": ok, "replaces": ["/etc/passwd"]}).encode()),
        ("subdirectory", json.dumps({"merged": ok, "replaces": ["sub/part-e00000-c1-1.parquet"]}).encode()),
        ("dot-dot in a part-like name", json.dumps({"merged": ok, "replaces": ["part-e00000-..parquet"]}).encode()),
        ("another element's part", json.dumps({"merged": ok, "replaces": [other]}).encode()),
        ("merged among its replaced", json.dumps({"merged": ok, "replaces": [ok]}).encode()),
    ]


@pytest.mark.parametrize("case,content", malformed_cases(), ids=[c for c, _ in malformed_cases()])
def test_malformed_manifests_are_quarantined_not_obeyed(exp, capfd, case, content):
    before = part_names(exp)
    # a merged file that "exists", so that a manifest naming it would be obeyed: a copy of a real part
    (parts_dir(exp) / "part-e00000-c1-1.parquet").write_bytes((parts_dir(exp) / before[0]).read_bytes())
    other = parts_dir(exp) / "part-e00001-r0000-1-0bbfd16a-1-0.parquet"
    other.write_bytes((parts_dir(exp) / part_names(exp, 1)[0]).read_bytes())
    name = "_compact-e00000-5-5.json"
    (parts_dir(exp) / name).write_bytes(content)

    assert len(lmsweep.load(exp)) == 20                       # a reader: refuses it, reads on
    assert_refused(exp, name)
    assert set(before) <= set(part_names(exp)) and other.exists()   # nothing named was hidden or deleted
    assert len(refused_lines(capfd.readouterr().err)) == 1

    (parts_dir(exp) / name).write_bytes(content)              # again, for the compaction (the writer's path)
    done, running = compact_experiment(exp)
    assert running == [] and {c.element for c in done} == {0, 1}
    assert len(refused_lines(capfd.readouterr().err)) == 1
    assert not os.path.lexists(parts_dir(exp) / name)
    assert len(lmsweep.load(exp)) == 20 and lmsweep.status(exp).complete


def test_a_symlinked_manifest_is_refused_and_its_target_untouched(exp, tmp_path, capfd):
    names = part_names(exp, 0)
    merged = "part-e00000-c1-1.parquet"
    (parts_dir(exp) / merged).write_bytes((parts_dir(exp) / names[0]).read_bytes())
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"merged": merged, "replaces": names}))
    (parts_dir(exp) / "_compact-e00000-1-1.json").symlink_to(elsewhere)
    assert {p.name for p in live_parts(parts_dir(exp))} >= set(names)     # not obeyed by readers
    assert quarantined(exp, "_compact-e00000-1-1.json").is_symlink()      # moved as a link, not followed
    assert elsewhere.is_file() and set(names) <= set(part_names(exp))
    assert len(refused_lines(capfd.readouterr().err)) == 1


def test_a_manifest_replacing_a_symlinked_part_is_refused_and_deletes_nothing(exp, capfd):
    names = part_names(exp, 0)
    merged = "part-e00000-c1-1.parquet"
    (parts_dir(exp) / merged).write_bytes((parts_dir(exp) / names[0]).read_bytes())
    link = parts_dir(exp) / "part-e00000-r0000-9-0bbfd16a-9-9.parquet"
    link.symlink_to(victim(exp))
    (parts_dir(exp) / "_compact-e00000-1-1.json").write_text(json.dumps({"merged": merged,
                                                                        "replaces": [*names, link.name]}))
    recover(parts_dir(exp), 0)                                # what a compaction runs first
    assert len(refused_lines(capfd.readouterr().err)) == 1
    assert set(names) <= set(part_names(exp))
    assert_refused(exp, "_compact-e00000-1-1.json")
    assert victim(exp).read_text() == "not yours\n"
    assert link.is_symlink()                                  # the manifest deleted nothing it named
