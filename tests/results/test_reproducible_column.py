"""Each result row records what its engine promises for a rerun (`reproducible`, schema 2), and `compare` says
per differing row whether the difference was expected (column `expected`): the engine promised nothing, the
sides ran other software or batch sizes, or it is a difference the engine promised not to make."""
from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

import lmsweep
from helpers.task_runs import run_spec
from lmsweep.results.compare import SideInfo, compare, expectations, with_expectation
from lmsweep.results.schema import SCHEMA_VERSION

SPEC = """name: promise
models: [{{alias: tiny, source: {model}}}]
prompts: ["Shakespeare was a", "Once upon a time", "The capital of France is"]
task: generate
decoding:
  max_new_tokens: 12
  seeds: [0, 1]
  include: [{{}}, {{num_beams: 2}}, {{temperature: 0.7}}]
execution: {{batch_size: {batch}, backend: {backend}}}
"""


def test_rows_record_the_promise_and_compare_marks_a_broken_one_unexpected(tmp_path, tiny_llama, perturbed):
    hf = run_spec(tmp_path / "hf", SPEC.format(model=tiny_llama, batch=8, backend="hf"))
    df = lmsweep.load(hf)
    assert set(df["schema_version"]) == {SCHEMA_VERSION} == {2}
    by_point = df.groupby("decoding")["reproducible"].agg(set).to_dict()
    assert by_point == {"greedy": {"any_batch"}, "beam2": {"same_batch"}, "sample t=0.7": {"any_batch"}}, by_point

    # the same units written by an engine that applies a repetition penalty nobody asked for, at the same batch
    # size, on the same software and host: the sampled rows differ where the hf promise says they must not
    bad = run_spec(tmp_path / "bad", SPEC.format(model=tiny_llama, batch=8, backend="hf-penalty"))
    c = compare(hf, bad)
    differing = pd.concat([c.diffs, c.info_diffs], ignore_index=True)
    batch = df.groupby("unit_id")["batch_size"].first()          # the same units ran in the same batches on both
    assert len(differing) and differing["expected"].tolist() == [
        f"no: promised bit-identical in the same batch (batch size {batch[u]} both)" for u in differing["unit_id"]]
    (check,) = [k for k in c.checks if k.name == "differences the engine promised not to make"]
    assert check.value == len(differing) and check.limit is None          # reported, the gates judge

    # a part written before the column existed (schema 1) reads it as null, and compare says it cannot tell
    for part in (hf / "results").rglob("part-*.parquet"):
        table = pq.read_table(part)
        old = table.drop_columns(["reproducible"])
        pq.write_table(old.replace_schema_metadata({b"lmsweep_schema_version": b"1", b"lmsweep_task": b"generate"}),
                       part)
    assert lmsweep.load(hf)["reproducible"].isna().all()
    assert lmsweep.status(hf).done == len(df["unit_id"].unique())         # the old parts still count as done
    c = compare(hf, bad)
    assert set(pd.concat([c.diffs, c.info_diffs])["expected"]) == {
        "unknown: a side written before rows recorded their promise (schema 1)"}


def side(**kw) -> SideInfo:
    base = dict(path="p", experiment="e", spec_hash="h", task="generate", models={}, backend="hf", planned=1, done=1,
                failed=0, hosts=["n1"], packages={"torch": ["2.13.0"]}, accelerators=["cpu"])
    return SideInfo(**(base | kw))


def both(pb, pc, nb, nc) -> pd.DataFrame:
    return pd.DataFrame({"unit_id_c": ["u"], "reproducible_b": [pb], "reproducible_c": [pc],
                         "batch_size_b": [nb], "batch_size_c": [nc]})


@pytest.mark.parametrize("pb, pc, nb, nc, cur, tokens, floats", [
    ("any_batch", "any_batch", 8, 8, {}, "no", "no"),
    ("any_batch", "any_batch", 8, 3, {}, "no", "yes"),                 # tokens at any batch; floats round
    ("same_batch", "same_batch", 8, 3, {}, "yes", "yes"),              # beam search at another batch
    ("any_batch", "none", 8, 8, {}, "yes", "yes"),                     # one side on an engine that promises nothing
    ("any_batch", "any_batch", 8, 8, {"packages": {"torch": ["2.14.0"]}}, "yes", "yes"),
    ("any_batch", "any_batch", 8, 8, {"hosts": ["n2"]}, "yes", "yes"),
    ("any_batch", "any_batch", 8, 8, {"models": {"tiny": {"fingerprint": "sha256:b"}}}, "yes", "yes"),
    (None, "any_batch", 8, 8, {}, "unknown", "unknown"),                # a schema-1 side
])
def test_expectation_per_promise_and_side(pb, pc, nb, nc, cur, tokens, floats):
    expected = expectations(both(pb, pc, nb, nc), side(), side(**cur))
    frame = pd.DataFrame({"unit_id": ["u", "u"], "differs_in": ["token_ids", ""]})
    got = with_expectation(frame, expected)["expected"].tolist()
    assert [g.split(":")[0] for g in got] == [tokens, floats], got
