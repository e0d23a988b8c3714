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

# Outputs as loglikelihood pairs: the prompt is the context, the generated text the continuation (outputs
# that are empty or only whitespace have nothing to score and are left out).
EXPORT_SQL = ("SELECT unit_id || '/' || sequence_index AS id, prompt_text AS text, text AS continuation "
              "FROM results WHERE trim(text) <> '' ORDER BY id")


def scoring_task():
    """The task that scores another's outputs (`Task.legibility`, declared by the scoring task)."""
    from lmsweep.core.task_registry import all_tasks

    return next(t for t in all_tasks() if t.legibility is not None)


def legibility_table(generated: str | Path, scores: str | Path) -> pd.DataFrame:
    """Per output group (model, decoding) of `generated`: the generate summary's legibility columns (rows,
    mean_new_tokens, distinct_1, distinct_2, repetition_rate) and `ppl_<scorer>`, the perplexity of those
    outputs under each model of `scores`: exp(−Σ logprob / Σ tokens) over the continuation tokens of the
    group's outputs (a corpus perplexity, as the loglikelihood summary's). Which tasks and columns: the
    scoring task's `Legibility` declaration (lmsweep/core/task.py)."""
    from lmsweep.core.task_registry import get_task
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load

    scorer = scoring_task()
    join = scorer.legibility
    for exp, task in ((generated, join.outputs_task), (scores, scorer.name)):
        found = read_plan(Path(exp)).task_type
        if found != task:
            raise UsageError(f"{exp} is a {found} experiment; expected {task}", field="experiment")
    by = list(join.by)
    gen = load(generated)
    summary = get_task(join.outputs_task).summarize(gen)[[*by, *join.outputs_columns]]
    gen = gen.assign(id=gen["unit_id"] + "/" + gen["sequence_index"].astype(str))[["id", *by]]
    scored = load(scores, columns=["model", "prompt_id", join.loglikelihood, join.tokens])
    joined = scored.merge(gen, left_on="prompt_id", right_on="id", suffixes=("_scorer", ""))
    if joined.empty:
        raise UsageError(f"no scored row of {scores} names an output of {generated}; export its outputs with "
                        f'lmsweep results {generated} --csv --sql "{EXPORT_SQL}"', field="experiment")
    ppl = (joined.groupby([*by, "model_scorer"])
           .apply(lambda g: math.exp(-g[join.loglikelihood].sum() / g[join.tokens].sum()), include_groups=False)
           .unstack("model_scorer").add_prefix("ppl_").reset_index())
    ppl.columns.name = None
    return summary.merge(ppl, on=by, how="left")
