"""A sampled unit's random stream is independent of max_new_tokens: the same seed gives the same text up to
the shorter length. Units sampled under the earlier derivation (streams keyed by the unit key, which holds
max_new_tokens) have other ids, so their rows never count as done for today's units."""
from __future__ import annotations

import json

import pytest

from helpers.task_runs import rows, run_spec
from lmsweep.jobs.plan import plan_spec
from lmsweep.jobs.spec import load_spec

PROMPTS = ["Once upon a time", "The capital of France is", "My dog really wanted to eat icecream because",
           "Shakespeare was a", "I skip across the"]
SHORT, LONG = 6, 20


def spec_text(source: str) -> str:
    return (f"name: streams\nmodels: [{{alias: m, source: '{source}'}}]\nprompts: {json.dumps(PROMPTS)}\n"
            f"task: generate\n"
            f"decoding: {{temperature: [1.2, 0.8], max_new_tokens: [{SHORT}, {LONG}], seeds: [0, 1, 2]}}\n"
            "execution: {batch_size: 4, threads_per_rank: 1}\n")


def assert_short_samples_are_prefixes(df) -> int:
    short = df[df.max_new_tokens == SHORT].set_index(["prompt_id", "seed", "temperature"]).sort_index()
    long = df[df.max_new_tokens == LONG].set_index(["prompt_id", "seed", "temperature"]).sort_index()
    assert len(short) == len(long) == len(PROMPTS) * 3 * 2
    differ = 0
    for key, s in short.iterrows():
        a, b = list(s.token_ids), list(long.loc[key].token_ids)
        differ += a != b[:len(a)]
    assert differ == 0, f"{differ} of {len(short)} short samples are not prefixes of the long ones"
    return len(short)


def test_same_seed_same_text_up_to_the_shorter_length_tiny(tmp_path, tiny_llama):
    df = rows(run_spec(tmp_path, spec_text(str(tiny_llama))))
    assert_short_samples_are_prefixes(df)
    # the streams still differ from seed to seed
    long = df[(df.max_new_tokens == LONG) & (df.temperature == 1.2)]
    assert long.groupby("prompt_id").token_ids.apply(lambda s: len({tuple(t) for t in s})).min() > 1


@pytest.mark.slow
def test_same_seed_same_text_up_to_the_shorter_length_smollm2(tmp_path):
    df = rows(run_spec(tmp_path, spec_text("package:smollm2-135m-instruct")))
    assert_short_samples_are_prefixes(df)


def test_the_stream_version_is_part_of_sampled_unit_ids_only(tmp_path, tiny_llama, monkeypatch):
    """Bumping SAMPLING_STREAM moves every sampled unit's id (their old rows stop counting as done) and
    no greedy or beam unit's."""
    from lmsweep.jobs import decoding

    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(str(tiny_llama)).replace("temperature: [1.2, 0.8]",
                                                        "include: [{}, {num_beams: 2}, {top_k: 5}]"))

    def ids_by_strategy() -> dict[str, set[str]]:
        plan = plan_spec(load_spec(path))
        out: dict[str, set[str]] = {}
        for u in plan.units.to_pylist():
            out.setdefault(plan.points[u["point"]].strategy, set()).add(u["unit_id"])
        return out

    now = ids_by_strategy()
    monkeypatch.setattr(decoding, "SAMPLING_STREAM", decoding.SAMPLING_STREAM + 1)
    bumped = ids_by_strategy()
    assert set(now) == {"greedy", "beam", "sample"}
    assert now["greedy"] == bumped["greedy"] and now["beam"] == bumped["beam"]
    assert not now["sample"] & bumped["sample"] and len(now["sample"]) == len(bumped["sample"])
