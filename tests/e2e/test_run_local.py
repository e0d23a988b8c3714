"""`lmsweep run` end to end on real models: equality with direct generate, batch invariance, resume."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmsweep
from helpers.cli import cli

PROMPTS = ["Shakespeare was a", "My dog really wanted to eat icecream because", "I skip across the",
           "Once upon a time there was", "The capital of France is", "No", "The animal didn't cross the street",
           "This game is great fun and I loved every level", "Search your feelings"]

SPEC = """
name: tiny
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - name: seeds
    items: {prompts}
task: generate
decoding:
  max_new_tokens: 12
  seeds: [0, 1]
  include: {include}
execution:
  batch_size: {batch}
"""


INCLUDE = ("[{}, {num_beams: 3}, {temperature: 0.8, top_k: 20}, {top_p: 0.9, num_return_sequences: 2}, "
           "{repetition_penalty: 1.3, no_repeat_ngram_size: 2}]")


def run_spec(tmp: Path, model: Path, batch: int, out: Path, prompts=PROMPTS) -> pd.DataFrame:
    spec = tmp / f"spec-b{batch}.yaml"
    spec.write_text(SPEC.format(model=model, prompts=list(prompts), batch=batch, include=INCLUDE))
    cli("run", str(spec), "--output-dir", str(out), "--quiet", check=True)
    return lmsweep.load(out / "tiny")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama):
    tmp = tmp_path_factory.mktemp("runs")
    return tmp, run_spec(tmp, tiny_llama, 8, tmp / "b8"), run_spec(tmp, tiny_llama, 1, tmp / "b1")


def test_every_unit_has_its_rows(runs):
    _, df, _ = runs
    # 9 prompts × (greedy + beam + rep) + 9 × 2 seeds × (1 + 2 sequences)
    assert len(df) == 9 * 3 + 9 * 2 * 3
    assert df.groupby(["unit_id", "sequence_index"]).size().max() == 1
    assert set(df["finish_reason"]) <= {"eos", "length"}
    assert (df["num_new_tokens"] == df["token_ids"].map(len)).all()


def test_greedy_equals_direct_generate_token_for_token(runs, tiny_llama):
    _, df, _ = runs
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    greedy = df[(df["decoding"] == "greedy")].set_index("prompt_text")
    for prompt in PROMPTS:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = out[0, enc["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[:expected.index(tok.eos_token_id)]
        assert list(greedy.loc[prompt, "token_ids"]) == expected, prompt


def test_batch_size_1_and_8_give_identical_outputs_including_sampling(runs):
    _, b8, b1 = runs
    key = ["unit_id", "sequence_index"]
    a = b8.set_index(key).sort_index()
    b = b1.set_index(key).sort_index()
    assert a.index.equals(b.index)
    assert (a["text"] == b["text"]).all()
    assert set(b1["batch_size"]) == {1} and b8["batch_size"].max() > 1
    sampled = a[a["do_sample"]]
    # sampling differs by seed and by sequence, so the seeds do something
    assert sampled.groupby("prompt_id")["text"].nunique().min() > 1


def test_rerun_executes_nothing_and_deleting_a_part_reruns_only_its_units(runs, tiny_llama):
    tmp, before, _ = runs
    out = tmp / "b8"
    parts_dir = out / "tiny" / "results" / "task=generate"
    parts = sorted(parts_dir.glob("part-*.parquet"))
    proc = cli("run", str(tmp / "spec-b8.yaml"), "--output-dir", str(out), "--quiet", check=True)
    assert "nothing to run" in proc.stdout
    assert sorted(parts_dir.glob("part-*.parquet")) == parts
    pd.testing.assert_frame_equal(lmsweep.load(out / "tiny"), before)

    victim = parts[len(parts) // 2]
    lost = set(pd.read_parquet(victim)["unit_id"])
    victim.unlink()
    proc = cli("run", str(tmp / "spec-b8.yaml"), "--output-dir", str(out), "--quiet", check=True)
    assert f"running {len(lost)} unit(s)" in proc.stdout
    new = set(parts_dir.glob("part-*.parquet")) - set(parts)
    assert set(pd.concat(pd.read_parquet(p) for p in new)["unit_id"]) == lost
    after = lmsweep.load(out / "tiny")
    cols = ["unit_id", "sequence_index", "text", "token_ids"]
    pd.testing.assert_frame_equal(after[cols], before[cols])


def test_a_unit_too_long_for_the_context_fails_alone(tmp_path, tiny_llama):
    long_prompt = "street " * 400        # > 256 positions of the tiny model
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(model=tiny_llama, prompts=["Shakespeare was a", long_prompt, "I skip"], batch=8,
                                include="[{}]"))
    proc = cli("run", str(spec), "--output-dir", str(tmp_path / "out"), "--quiet")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    st = lmsweep.status(tmp_path / "out" / "tiny")
    assert (st.done, st.failed, st.missing) == (2, 1, 0)
    assert "exceeds the model's context of 256" in st.failures["error"].iloc[0]
    assert "1 failed" in proc.stdout


@pytest.mark.slow
def test_quickstart_like_run_on_smollm2_matches_direct_generate(tmp_path, smollm2_dir):
    spec = tmp_path / "smol.yaml"
    prompts = ["Shakespeare was a", "My dog really wanted to eat icecream because", "I skip across the"]
    spec.write_text(f"name: smol\nmodels: [package:smollm2-135m-instruct]\nprompts: {prompts}\n"
                    "task: generate\ndecoding: {max_new_tokens: 16}\n")
    cli("run", str(spec), "--output-dir", str(tmp_path), "--quiet", check=True)
    df = lmsweep.load(tmp_path / "smol").set_index("prompt_text")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    for prompt in prompts:
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
        expected = out[0, enc["input_ids"].shape[1]:].tolist()
        expected = expected[:expected.index(2)] if 2 in expected else expected
        assert list(df.loc[prompt, "token_ids"]) == expected
        assert df.loc[prompt, "text"] == tok.decode(expected, skip_special_tokens=True)


def test_quiet_run_prints_no_tables(tmp_path, tiny_llama):
    """`--quiet` means no progress bar and no tables, the plan table included (it used to print)."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: quiet\nmodels:\n  - {{alias: tiny, source: {tiny_llama}}}\n"
                    "prompts: [Hello there, Good night]\ntask: tokenize\n")
    quiet = cli("run", str(spec), "--output-dir", str(tmp_path / "q"), "--quiet", check=True).stdout
    loud = cli("run", str(spec), "--output-dir", str(tmp_path / "l"), check=True).stdout
    assert "┏" in loud and "plan quiet" in loud
    assert "┏" not in quiet and "plan quiet" not in quiet
    assert len(lmsweep.load(tmp_path / "q" / "quiet")) == 2
