"""How the worker cuts its units into batches (runner/batches.py): by variant and the task's batch key, by prompt
length, and with the units that share a context (a question's answers, `Task.context_key`) kept together."""
from __future__ import annotations

import lmsweep
from helpers.task_runs import run_spec
from lmsweep.core.task_registry import get_task
from lmsweep.runner import shared_context
from lmsweep.runner.batches import make_batches
from lmsweep.runner.units import Unit

# six questions of one length in characters (so the length sort does not separate them), three answers each
QUESTIONS = [f"Question {i}: is it so? Answer:" for i in range(6)]
ANSWERS = [" yes", " no", " maybe"]


def unit(i: int, text: str, answer: str) -> Unit:
    prompt = {"prompt_set": "qa", "prompt_id": f"p{i}", "prompt_text": text, "label": None,
              "meta": {"continuation": answer}, "system_prompt": None, "chat_template": False}
    return Unit(f"{i:02d}", f"{i:02d}", 0, 0, None, None, None, prompt)


def test_answers_stay_together_and_units_without_a_shared_context_batch_as_before():
    # unit ids interleave the questions, as content hashes do
    units = [unit(a * len(QUESTIONS) + q, text, ans) for q, text in enumerate(QUESTIONS)
             for a, ans in enumerate(ANSWERS)]
    batches = make_batches(get_task("loglikelihood"), units, 4)
    assert sorted(len(b) for b in batches) == [3] * 6                    # 3 + 3 > 4: each batch ends early
    assert all(len({u.prompt["prompt_text"] for u in b}) == 1 for b in batches)
    assert sorted(u.unit_id for b in batches for u in b) == sorted(u.unit_id for u in units)
    # more answers than a batch holds: full batches of that question, the rest joins the next one
    many = [unit(i, QUESTIONS[0], f" a{i}") for i in range(10)] + [unit(10 + i, QUESTIONS[1], " b") for i in range(2)]
    split = make_batches(get_task("loglikelihood"), many, 4)
    assert [[u.prompt["prompt_text"][:10] for u in b] for b in split] == [
        ["Question 0"] * 4, ["Question 0"] * 4, ["Question 0"] * 2 + ["Question 1"] * 2]
    # a task without shared contexts: length order, then id, in full batches
    plain = make_batches(get_task("next_token"), units, 4)
    assert [len(b) for b in plain] == [4, 4, 4, 4, 2]
    assert [u.unit_id for b in plain for u in b] == sorted(u.unit_id for u in units)


SPEC = """name: qa
models: [{{alias: tiny, source: {model}}}]
prompts:
  - name: qa
    items:
{items}
task: loglikelihood
execution: {{batch_size: 4}}
"""


def test_a_questions_answers_share_one_batch_and_its_context_runs_once(tmp_path, tiny_llama, monkeypatch):
    """Six questions × three answers at batch size 4: each question's context runs once (six contexts in all),
    where batches of four answers in id order had split questions and run some twice."""
    seen = []
    real = shared_context.score

    def counting(model, pad_id, contexts, pairs, device="cpu"):
        seen.append(len(contexts))
        return real(model, pad_id, contexts, pairs, device)

    monkeypatch.setattr(shared_context, "score", counting)
    items = "\n".join(f'      - {{id: q{q}-{a}, text: "{text}", meta: {{continuation: "{ans}"}}}}'
                      for q, text in enumerate(QUESTIONS) for a, ans in enumerate(ANSWERS))
    df = lmsweep.load(run_spec(tmp_path, SPEC.format(model=tiny_llama, items=items)))
    assert len(df) == 18 and df["logprob"].notna().all()
    assert sum(seen) == len(QUESTIONS), seen
