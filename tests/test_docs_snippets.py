"""Every Python snippet in docs/results.md, docs/tasks.md and docs/spec.md runs: against real experiments of the
example specs it names (`runs/<name>`, made from `configs/<name>.yaml` on the tiny model, in process), or on its
own. A snippet that cannot run here is listed in NOT_RUN with where it does run, so a new snippet is either run
or named; a snippet whose code breaks (a renamed column, a moved function) fails the suite."""
from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

import pytest
import yaml

from helpers.cli import REPO
from helpers.task_runs import run_spec

PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
PAGES = ("docs/results.md", "docs/tasks.md", "docs/spec.md")
RUN_NAME = re.compile(r"""["']runs/([\w-]+)""")

# The experiments the snippets read (runs/<name>): the example spec each is made from, run on the tiny model, and
# what changes in it (merged into the spec's top-level blocks): what a 2-layer, 256-position model needs, and 4 new
# tokens where 32 add only time (quickstart's 66 sequences: 21 s of CPU at 32, 4 s at 4).
EXAMPLES = {"quickstart": ("quickstart", {"decoding": {"max_new_tokens": 4}}), "next_token": ("next_token", {}),
            "logit_lens": ("logit_lens", {}), "ablation": ("ablation", {}),
            "attention_summary": ("attention_summary", {"task": {"max_tokens": 64}}), "attn": ("attention", {})}

# Snippets that read an experiment these examples do not make, keyed by that experiment, with where they run.
NOT_RUN = {
    "attention": "reads layer 29 head 3 of SmolLM2: tests/test_docs_columns.py runs it on the real model",
    "a": "compare of a run and a noisy rerun: tests/results/test_compare.py compares such runs of the tiny model",
    "noisy": "the other side of that compare",
    "sentiment": "a printed row of SmolLM2's sentiment example (a pycon transcript, not a script)",
}


def snippets() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        text = (REPO / page).read_text()
        for m in PYTHON_BLOCK.finditer(text):
            line = text[:m.start()].count("\n") + 2
            out.append((f"{page}:{line}", m.group(1)))
    return out


def runs_named(code: str) -> set[str]:
    return set(RUN_NAME.findall(code))


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> Path:
    """A folder holding runs/<name> for every example in EXAMPLES, made from the shipped spec on the tiny model
    (the spec's alias kept, so `load_model(exp, "smollm2")` reads as documented)."""
    root = tmp_path_factory.mktemp("docs-snippets")
    for name, (config, changes) in EXAMPLES.items():
        spec = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())
        spec["models"] = [{"alias": m["alias"], "source": str(tiny_llama)} for m in spec["models"]]
        for p in spec["prompts"]:
            if isinstance(p, dict) and "file" in p:
                p["file"] = str(REPO / "configs" / p["file"])
        for block, values in changes.items():
            spec[block] = {**spec[block], **values}
        exp = run_spec(root / "specs" / name, yaml.safe_dump(spec, sort_keys=False), f"{name}.yaml")
        (root / "runs").mkdir(exist_ok=True)
        (root / "runs" / name).symlink_to(exp)
    (root / "configs").symlink_to(REPO / "configs")
    return root


def test_every_snippet_is_run_or_says_where_it_runs():
    unknown = {}
    for where, code in snippets():
        names = runs_named(code)
        if code.lstrip().startswith(">>>"):
            names |= {"sentiment"}
        missing = names - set(EXAMPLES) - set(NOT_RUN)
        if missing:
            unknown[where] = sorted(missing)
    assert not unknown, f"snippets reading experiments no example makes (add to EXAMPLES or NOT_RUN): {unknown}"


RUNNABLE = [(where, code) for where, code in snippets()
            if not code.lstrip().startswith(">>>") and runs_named(code) <= set(EXAMPLES)]


@pytest.mark.parametrize("where,code", RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_the_snippet_runs(where, code, runs, monkeypatch, tmp_path):
    script = tmp_path / (re.sub(r"\W", "_", where) + ".py")
    script.write_text(code)
    monkeypatch.chdir(runs)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        runpy.run_path(str(script))
    if "print(" in code:
        assert out.getvalue().strip(), f"{where} printed nothing"


def test_the_runnable_snippets_cover_every_example():
    """Each example made for the snippets is read by one, so none is run for nothing."""
    read = set().union(*(runs_named(code) for _, code in RUNNABLE))
    assert read == set(EXAMPLES)
