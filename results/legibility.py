"""Legibility of a generate experiment's outputs, with their perplexity under each scoring model.

The scores come from a second experiment, `task: loglikelihood`, whose prompt set is the first one's outputs
exported as context/continuation pairs with `lmsweep results GEN --csv --sql` (the query is `EXPORT_SQL`;
docs/homework.md runs it). Each exported pair's id is `<unit_id>/<sequence_index>` of the output it holds, so
every score joins back to the model and decoding point that wrote the text.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lmsweep.errors import UsageError
from lmsweep.jobs.errors import SpecError

# Outputs as loglikelihood pairs: the prompt is the context, the generated text the continuation (outputs
# that are empty or only whitespace have nothing to score and are left out).
EXPORT_SQL = ("SELECT unit_id || '/' || sequence_index AS id, prompt_text AS text, text AS continuation "
              "FROM results WHERE trim(text) <> '' ORDER BY id")
LEGIBILITY = ["mean_new_tokens", "distinct_1", "distinct_2", "repetition_rate"]


def legibility_table(generated: str | Path, scores: str | Path) -> pd.DataFrame:
    """Per (model, decoding) of `generated`: rows, the generate summary's legibility columns and
    `ppl_<scorer>`, the perplexity of those outputs under each model of `scores`: exp(−Σ logprob / Σ tokens)
    over the continuation tokens of the group's outputs (a corpus perplexity, as the loglikelihood summary's)."""
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load
    from lmsweep.runner.tasks.registry import get_task

    for exp, task in ((generated, "generate"), (scores, "loglikelihood")):
        found = read_plan(Path(exp)).task_type
        if found != task:
            raise SpecError(f"{exp} is a {found} experiment; expected {task}", field="experiment")
    gen = load(generated)
    summary = get_task("generate").summarize(gen)[["model", "decoding", "rows", *LEGIBILITY]]
    gen = gen.assign(id=gen["unit_id"] + "/" + gen["sequence_index"].astype(str))[["id", "model", "decoding"]]
    scored = load(scores, columns=["model", "prompt_id", "logprob", "num_scored_tokens"])
    joined = scored.merge(gen, left_on="prompt_id", right_on="id", suffixes=("_scorer", ""))
    if joined.empty:
        raise UsageError(f"no scored row of {scores} names an output of {generated}; export its outputs with "
                        f'lmsweep results {generated} --csv --sql "{EXPORT_SQL}"', field="experiment")
    ppl = (joined.groupby(["model", "decoding", "model_scorer"])
           .apply(lambda g: math.exp(-g["logprob"].sum() / g["num_scored_tokens"].sum()), include_groups=False)
           .unstack("model_scorer").add_prefix("ppl_").reset_index())
    ppl.columns.name = None
    return summary.merge(ppl, on=["model", "decoding"], how="left")
