"""batch_size auto: a scoring batch (no decoding) is sized by tokens, rows × the longest prompt's estimated tokens
within runner.autobatch.TOKENS_PER_BATCH; a generation batch still starts at 256 rows."""
from __future__ import annotations

import pytest

from helpers.tiny_models import tiny_causal_lm
from lmsweep.jobs.decoding import DecodingPoint
from lmsweep.runner import autobatch
from lmsweep.runner.units import Unit


def unit(text: str, point: DecodingPoint | None = None) -> Unit:
    return Unit(unit_id="u", unit_key="u", element=0, variant=0, point_index=0 if point else None, point=point,
                seed=None, prompt={"prompt_text": text, "system_prompt": None})


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("qwen2", 97)


def test_scoring_batches_hold_a_token_budget(model):
    budget = autobatch.TOKENS_PER_BATCH["cpu"]
    long_text = "x" * 800                                       # ~200 tokens at 4 characters a token
    size, why = autobatch.start_size(model, [unit("short"), unit(long_text)], "cpu")
    assert size == budget // (800 // autobatch.CHARS_PER_TOKEN) and f"{budget} tokens a batch" in why
    assert autobatch.start_size(model, [unit("Once upon a time")] * 3, "cpu")[0] == 256      # short: rows cap it
    assert autobatch.start_size(model, [unit("x" * 10 * budget * 4)], "cpu")[0] == 1         # one long text a batch


def test_generation_batches_still_start_at_256_rows(model):
    point = DecodingPoint(max_new_tokens=64)
    assert autobatch.start_size(model, [unit("x" * 800, point)] * 3, "cpu")[0] == 256
