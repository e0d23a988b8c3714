"""A model's files damaged after they were made: a converted GGUF in the lmsweep cache is checked before use
and rebuilt (one line on stderr says so and why), and a local model directory damaged after planning is one
line at load, not a traceback from the loader."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from test_concurrency import make_tiny_gguf

from lmsweep.errors import BadInput
from lmsweep.jobs.plan import ModelInfo
from lmsweep.runner import loading


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama) -> Path:
    return make_tiny_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def logits(loaded: loading.LoadedModel) -> torch.Tensor:
    ids = loaded.tokenizer("Shakespeare was a playwright", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return loaded.model(ids).logits


def truncate_weights(target: Path) -> str:
    f = target / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    return "model.safetensors is"


def config_a_list(target: Path) -> str:
    (target / "config.json").write_text(json.dumps([json.loads((target / "config.json").read_text())]))
    return "config.json holds an array, not a JSON object"


def trailing_bytes(target: Path) -> str:
    with (target / "model.safetensors").open("ab") as f:
        f.write(b"\0" * 100)
    return "100 bytes too many"


def weights_deleted_with_index_left(target: Path) -> str:
    (target / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model.safetensors"}}))
    (target / "model.safetensors").unlink()
    return "names the shard model.safetensors, which is missing"


DAMAGE = {"truncated_safetensors": truncate_weights, "config_not_an_object": config_a_list,
          "trailing_bytes": trailing_bytes, "weights_deleted": weights_deleted_with_index_left}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_a_damaged_conversion_is_rebuilt_on_the_next_load_with_the_same_logits(case, tiny_gguf, tmp_path,
                                                                              monkeypatch, capfd):
    monkeypatch.setenv("LMSWEEP_CACHE", str(tmp_path / "cache"))     # never the shared cache
    info = ModelInfo(alias="tiny", source=str(tiny_gguf), path=str(tiny_gguf), fingerprint="tiny-fp",
                     kind="package")
    first = loading.load(info, "AutoModelForCausalLM")
    target = Path(first.path)
    assert target.is_relative_to(tmp_path / "cache")
    assert capfd.readouterr().err.count("converting ") == 1
    expected = logits(first)
    del first

    why = DAMAGE[case](target)
    again = loading.load(info, "AutoModelForCausalLM")
    err = capfd.readouterr().err
    rebuilt = [line for line in err.splitlines() if "rebuilding" in line]
    assert len(rebuilt) == 1 and "converting " not in err, err
    assert rebuilt[0].startswith(f"rebuilding {target}: ") and why in rebuilt[0], rebuilt
    assert again.path == str(target)
    assert torch.equal(logits(again), expected)
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, target.name + ".lock"])

    loading.load(info, "AutoModelForCausalLM")                     # sound now: used as it is
    err = capfd.readouterr().err
    assert "rebuilding" not in err and "converting" not in err, err


def test_a_local_model_damaged_after_planning_is_one_line_at_load(tiny_llama, tmp_path):
    model = shutil.copytree(tiny_llama, tmp_path / "m")
    info = ModelInfo(alias="tiny", source=str(model), path=str(model), fingerprint="x", kind="dir")
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    os.truncate(weights, size - 10)
    with pytest.raises(BadInput) as raised:
        loading.load(info, "AutoModelForCausalLM")
    assert str(raised.value) == (f"model 'tiny': {weights} is {size - 10:,} bytes but its safetensors header "
                                 f"says {size:,}: truncated")
    assert loading.load(info, None).model is None                  # the tokenizer alone does not need them
