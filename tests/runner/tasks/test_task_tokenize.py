"""The tokenize task: stored ids equal the tokenizer's, counts and special tokens are right, and the
model's weights are never read."""
from __future__ import annotations

import shutil

from transformers import AutoTokenizer

from helpers.task_runs import rows, run_spec
from lmsweep.jobs.model_sources import resolve

PROMPTS = """
prompts:
  - name: seeds
    items:
      - {id: zoom, text: "Counselor, please adjust your Zoom filter to appear as a human, rather than as a cat"}
      - {id: excited, text: "I'm so excited to be learning about large language models."}
"""


def test_ids_match_the_tokenizer_and_weights_are_never_loaded(tiny_llama, smollm2_dir, tmp_path):
    # A copy of the tiny model whose weights file is garbage: loading it would fail.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    minilm = resolve("package:all-minilm-l6-v2").path
    # SmolLM2 is a GGUF package: its tokenizer is read from the GGUF header, not the converted weights.
    models = (f"[{{alias: tiny, source: {broken}}}, {{alias: minilm, source: 'package:all-minilm-l6-v2'}}, "
              "{alias: smollm2, source: 'package:smollm2-135m-instruct'}]")
    df = rows(run_spec(tmp_path, f"name: tok\nmodels: {models}\n{PROMPTS}\ntask: tokenize\n"))
    assert len(df) == 6
    toks = {"tiny": AutoTokenizer.from_pretrained(tiny_llama), "minilm": AutoTokenizer.from_pretrained(minilm),
            "smollm2": AutoTokenizer.from_pretrained(smollm2_dir)}
    for _, r in df.iterrows():
        tok = toks[r["model"]]
        ids = tok(r["prompt_text"])["input_ids"]
        assert list(r["token_ids"]) == ids and r["num_tokens"] == len(ids)
        assert list(r["tokens"]) == tok.convert_ids_to_tokens(ids)
        assert r["vocab_size"] == len(tok)
    minilm_rows = df[df["model"] == "minilm"]
    assert (minilm_rows["num_special_tokens"] == 2).all()                 # [CLS] ... [SEP]
    assert all(list(t) == ["[CLS]", "[SEP]"] for t in minilm_rows["special_tokens"])
    assert (df[df["model"] == "tiny"]["num_special_tokens"] == 0).all()
    assert set(df[df["model"] == "minilm"]["vocab_size"]) == {30522}
    assert set(df[df["model"] == "smollm2"]["vocab_size"]) == {49152}
