"""Many writers, two runs of one spec, two first users of the model cache: no collisions, no double writes."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_kill_resume import PRELOAD, PROMPTS, raw_rows, write_spec

import lmsweep


@pytest.fixture(scope="module", autouse=True)
def forkserver_preload():
    """Children forked from a forkserver that imported torch/transformers once start in milliseconds."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)


# ---- part files: unique names, atomic renames -----------------------------------------------------------


def _writer(exp: str, element: int, rank: int, n: int, go: str) -> None:
    from lmsweep.results.writer import PartWriter

    writer = PartWriter(Path(exp), "tokenize", element, rank)
    while not os.path.exists(go):          # start together
        time.sleep(0.001)
    for i in range(n):
        writer.write([{"unit_id": f"e{element}-r{rank}-p{os.getpid()}-{i}-{j}", "element": element, "rank": rank}
                      for j in range(3)])


def test_concurrent_writers_of_one_experiment_never_collide(tmp_path):
    """Four processes write 40 parts each at once, two of them as the same (element, rank): 160 distinct,
    complete files, every row readable, no temp file left."""
    ctx = multiprocessing.get_context("forkserver")
    go = tmp_path / "go"
    who = [(0, 0), (0, 0), (0, 1), (1, 0)]
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), e, r, 40, str(go))) for e, r in who]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.touch()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    parts = sorted((tmp_path / "results" / "task=tokenize").iterdir())
    assert len(parts) == 160 and all(p.name.startswith("part-e0000") for p in parts)
    ids = [u for p in parts for u in pq.read_table(p, columns=["unit_id"]).column("unit_id").to_pylist()]
    assert len(ids) == len(set(ids)) == 160 * 3


# ---- two `lmsweep run` of the same spec at once ---------------------------------------------------------


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.slow
def test_two_lmsweep_runs_of_one_spec_at_once_do_not_double_write(tmp_path, tiny_llama):
    """Run A's worker is frozen (SIGSTOP, via the test hook) holding element 0's lock after computing a
    batch; run B starts and its worker waits for the lock; A resumes and finishes; B then finds every
    unit done and writes nothing. Every unit exactly once."""
    spec = write_spec(tmp_path / "spec.yaml", tiny_llama)
    out = tmp_path / "runs"
    exp = out / "kill"
    cmd = [sys.executable, "-m", "lmsweep", "run", str(spec), "--output-dir", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = subprocess.Popen(cmd, env={**env, "LMSWEEP_TEST_KILL_AT": "batch:1@STOP"}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lock = exp / "locks" / "element-00000.lock"
    deadline = time.monotonic() + 300
    worker = None
    while worker is None or _proc_state(worker) != "T":
        assert a.poll() is None and time.monotonic() < deadline, a.stdout.read() if a.poll() is not None else ""
        text = lock.read_text() if lock.exists() else ""
        worker = int(text.split()[1]) if text.startswith("pid ") else None
        time.sleep(0.1)
    b = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = exp / "logs" / "element-00000.log"
    while "waiting for it to finish" not in (log.read_text() if log.exists() else ""):
        assert b.poll() is None and time.monotonic() < deadline, b.stdout.read() if b.poll() is not None else ""
        time.sleep(0.1)
    # A is frozen before writing any rows (its pre-load check of results/ may have made the directory)
    assert not list((exp / "results").rglob("*.parquet"))
    os.kill(worker, signal.SIGCONT)
    out_a, _ = a.communicate(timeout=300)
    out_b, _ = b.communicate(timeout=300)
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    text = log.read_text()
    assert f"is being run by pid {worker}" in text and "lock acquired; skipping" in text
    raw = raw_rows(exp)
    assert len(raw) == len(PROMPTS) and raw["unit_id"].is_unique
    assert lmsweep.status(exp).complete


# ---- the model conversion cache -------------------------------------------------------------------------


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (transformers undoes it when reading GGUF)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def make_tiny_gguf(model_dir: Path, out: Path) -> Path:
    """The tiny Llama as an F32 GGUF file with its BPE tokenizer, as llama.cpp would write it."""
    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    weights = load_file(model_dir / "model.safetensors")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    vocab = tok["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {t["id"] for t in tok.get("added_tokens", [])}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
                       for i in range(len(tokens))])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_pad_token_id(cfg["pad_token_id"])
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
                 "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg["num_hidden_layers"]):
        names |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}.weight" for hf, g in per_layer.items()}
    for hf, name in names.items():
        t = weights[hf].astype(np.float32)
        if name.endswith("attn_q.weight"):
            t = _permute(t, cfg["num_attention_heads"])
        elif name.endswith("attn_k.weight"):
            t = _permute(t, cfg["num_key_value_heads"])
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_llama) -> Path:
    return make_tiny_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def _materialize(gguf_path: str, cache: str, go: str, log: str, kill_at: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.environ.update(LMSWEEP_CACHE=cache, LMSWEEP_TEST_KILL_AT=kill_at)
    from lmsweep.jobs.model_cache import materialize

    while not os.path.exists(go):
        time.sleep(0.001)
    print(f"result {materialize(gguf_path, 'tiny-gguf-fingerprint')}", file=sys.stderr, flush=True)
    os._exit(0)


def _run_materialize(ctx, gguf: Path, cache: Path, n: int, kill_at: str = "") -> list[tuple[int, str]]:
    go = cache.parent / f"go-{time.time_ns()}"
    logs = [cache.parent / f"m-{time.time_ns()}-{i}.log" for i in range(n)]
    procs = [ctx.Process(target=_materialize, args=(str(gguf), str(cache), str(go), str(log), kill_at))
             for log in logs]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.touch()
    for p in procs:
        p.join(300)
    return [(p.exitcode, log.read_text()) for p, log in zip(procs, logs)]


def test_model_cache_is_safe_under_concurrent_first_use(tmp_path, tiny_gguf, tiny_llama):
    """Two processes materialize one GGUF into an empty cache at once: one converts, the other waits and
    gets the finished directory; the converted model computes what the original does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("forkserver")
    runs = _run_materialize(ctx, tiny_gguf, cache, 2)
    assert [rc for rc, _ in runs] == [0, 0], runs
    logs = "".join(text for _, text in runs)
    assert logs.count("converting ") == 1, logs
    paths = {line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("result ")}
    assert len(paths) == 1
    target = Path(paths.pop())
    assert (target / ".complete").exists() and list(target.glob("*.safetensors"))
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, target.name + ".lock"])
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids = tok("Shakespeare was a playwright", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        got = AutoModelForCausalLM.from_pretrained(target)(ids).logits
        want = AutoModelForCausalLM.from_pretrained(tiny_llama)(ids).logits
    assert torch.equal(got, want)


def test_a_killed_conversion_leaves_no_half_cache_and_the_next_use_converts(tmp_path, tiny_gguf):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("forkserver")
    [(rc, log)] = _run_materialize(ctx, tiny_gguf, cache, 1, kill_at="convert")
    assert rc == -9, log
    models = cache / "models"
    leftovers = [p.name for p in models.iterdir()]
    assert not any(p.endswith("fingerprint") for p in leftovers)           # no target directory
    assert any(".tmp-" in p for p in leftovers)                             # only the killed one's temp
    [(rc, log)] = _run_materialize(ctx, tiny_gguf, cache, 1)
    assert rc == 0 and "converting " in log, log
    assert not [p.name for p in models.iterdir() if ".tmp-" in p.name]    # the stale temp was cleared
    assert (models / "tiny-gguf-fingerprint" / ".complete").exists()
