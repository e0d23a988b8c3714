"""Helpers for the task tests: run a spec in-process (plan → worker → rows) and build tiny
classification-head models offline."""
from __future__ import annotations

from pathlib import Path

import pandas as pd


def run_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    """Plan a spec and run every element in this process, as `lmsweep run` would; the experiment dir."""
    from lmsweep.jobs.plan import plan_spec, write_plan
    from lmsweep.jobs.spec import load_spec
    from lmsweep.runner.worker import run_element

    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    spec = load_spec(path)
    plan = plan_spec(spec)
    exp = tmp_path / "runs" / spec.name
    write_plan(plan, exp)
    for element in plan.elements:
        assert run_element(exp, element.index) == 0, f"element {element.index} had failed units"
    return exp


def rows(exp: Path) -> pd.DataFrame:
    from lmsweep.results.load import load

    return load(exp)


def make_tiny_bert(path: Path, head: str, id2label: dict[int, str], seed: int = 0) -> Path:
    """A 2-layer random BERT with a classification head ("sequence", "token") or none ("encoder"),
    saved with the offline BPE tokenizer and the given id2label."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel

    from helpers.tiny_models import make_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(path)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                     id2label=id2label, label2id={v: k for k, v in id2label.items()}, initializer_range=0.5)
    torch.manual_seed(seed)
    cls = {"sequence": BertForSequenceClassification, "token": BertForTokenClassification,
           "encoder": BertModel}[head]
    cls(cfg).save_pretrained(path)
    return path


# Two prompts whose attention patterns differ (a short one and one with a long-range reference), as the attention
# tests' prompt set.
ATTENTION_PROMPTS = """
prompts:
  - name: seeds
    items:
      - {id: father, text: "No, I am your father"}
      - {id: animal, text: "The animal didn't cross the street because it was too tired"}
"""
