"""What backend vllm cannot serve is refused at plan time, with the line and the backend that can (no vLLM
needed: planning never imports it); what it can serve plans."""
from __future__ import annotations

import os

import pytest

from helpers.cli import cli, write_spec
from lmsweep.runner import engines
from lmsweep.runner.engines import vllm

HEAD = ("name: v\nmodels:\n  - alias: smollm2\n    source: package:smollm2-135m-instruct\n"
        "prompts:\n  - name: p\n    items: [Once upon a time]\n")


def spec(tmp_path, task: str, decoding: str = "", backend: str = "vllm", model_extra: str = ""):
    text = HEAD.replace("package:smollm2-135m-instruct\n", "package:smollm2-135m-instruct\n" + model_extra)
    return write_spec(tmp_path / "s.yaml", f"{text}task: {task}\n{decoding}execution:\n  backend: {backend}\n")


@pytest.mark.parametrize("decoding, needle, line", [
    ("decoding:\n  num_beams: 4\n", "beam search is not served by backend vllm", 9),
    ("decoding:\n  no_repeat_ngram_size: 3\n", "no_repeat_ngram_size is not served by backend vllm", 9),
])
def test_decoding_vllm_cannot_serve_is_refused_at_plan_time(tmp_path, decoding, needle, line):
    proc = cli("plan", str(spec(tmp_path, "generate", decoding)), "--output-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert needle in err and "execution.backend: hf" in err, err
    assert f"s.yaml:{line}:" in err, err
    assert not (tmp_path / "runs").exists()                  # nothing partial written


def test_a_task_vllm_cannot_serve_names_the_backends_that_can(tmp_path):
    proc = cli("plan", str(spec(tmp_path, "attention")), "--output-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "vllm" in proc.stderr and "hf" in proc.stderr, proc.stderr


def test_what_vllm_serves_plans(tmp_path):
    decoding = "decoding:\n  include:\n    - {}\n    - {temperature: 0.7, num_return_sequences: 2}\n" \
               "    - {repetition_penalty: 1.3}\n  seeds: [0]\n"
    proc = cli("plan", str(spec(tmp_path, "generate", decoding, model_extra="    tensor_parallel: 4\n")),
               "--output-dir", str(tmp_path / "runs"))
    assert proc.returncode == 0, proc.stdout + proc.stderr   # TP lives inside a rank's engine: 1 rank is fine
    proc = cli("plan", str(spec(tmp_path, "{type: next_token, top_k: 200}")), "--output-dir", str(tmp_path / "r2"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_vllm_settings_keep_ranks_data_parallel():
    from lmsweep.jobs.spec import ModelSpec

    model = ModelSpec(alias="m", source="package:smollm2-135m-instruct", tensor_parallel=4)
    settings = engines.resolve("vllm", model, "cuda")
    assert (settings.backend, settings.tp, settings.group_size) == ("vllm", 4, 1)
    assert engines.resolve("deepspeed", model, "cuda").group_size == 4
    with pytest.raises(Exception, match="float16 with backend vllm needs a CUDA GPU"):
        engines.resolve("vllm", ModelSpec(alias="m", source="x", dtype="float16"), "cpu")
    with pytest.raises(Exception, match="kernel_inject needs execution.backend: deepspeed"):
        engines.resolve("vllm", ModelSpec(alias="m", source="x", dtype="float16", kernel_inject=True), "cuda",
                        where="models[0]")


@pytest.mark.parametrize("visible, local_rank, local_size, tp, gpus", [
    ("0,1,2,3", 1, 2, 2, ["2", "3"]),      # a Polaris node, 2 ranks of TP=2: each takes its pair
    ("0,1,2,3", 0, 1, 4, ["0", "1", "2", "3"]),
    ("3", 1, 4, 1, ["3"]),                 # the profile's gpu_bind gave this rank its one GPU already
])
def test_vllm_rank_takes_its_tensor_parallel_gpus(monkeypatch, visible, local_rank, local_size, tp, gpus):
    from lmsweep.runner.distributed import World

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    binding = vllm.bind(World(rank=local_rank, size=local_size, local_rank=local_rank, local_size=local_size),
                        "cuda", tp, threads=8)
    assert binding["gpus"] == gpus and binding["label"] == "cuda:" + ",".join(gpus)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(gpus)


def test_vllm_rank_without_enough_gpus_is_told_how_to_launch(monkeypatch):
    from lmsweep.runner.distributed import World

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")            # narrowed to one GPU, but TP=4 asked
    with pytest.raises(Exception, match="needs tensor_parallel=4 GPUs but sees 1"):
        vllm.bind(World(rank=0, size=4, local_rank=0, local_size=4), "cuda", 4, threads=8)


def test_elements_are_sized_for_one_engine_per_rank_under_vllm(tmp_path):
    """deepspeed's tensor-parallel groups span ranks (4 ranks at TP=2: 2 model copies); a vLLM rank runs
    its own engine over its TP devices (4 ranks: 4 copies), so a vllm element holds twice the units."""
    from lmsweep.jobs.plan import plan_spec
    from lmsweep.jobs.spec import load_spec

    def units_per_element(backend: str) -> int:
        path = write_spec(tmp_path / f"{backend}.yaml",
                          HEAD.replace("items: [Once upon a time]", "items: [" + ", ".join(f"p{i}" for i in range(400))
                                       + "]").replace("package:smollm2-135m-instruct\n",
                                                      "package:smollm2-135m-instruct\n    tensor_parallel: 2\n")
                          + "task: generate\ndecoding: {max_new_tokens: 64}\nexecution:\n"
                          f"  backend: {backend}\n  ranks_per_element: 4\n  walltime: '00:02:00'\n"
                          "  tokens_per_second: 20\n")
        return max(e.n_units for e in plan_spec(load_spec(path)).elements)

    assert units_per_element("vllm") == 2 * units_per_element("deepspeed")


def test_a_small_element_starts_vllm_eager_on_cpu_and_a_large_one_compiles(monkeypatch):
    """Compiling pays off only for enough new tokens (runner/engines/vllm.py COMPILE_FROM_TOKENS): the choice
    counts max_new_tokens per returned sequence of the rank's units, one per unit without decoding."""
    from types import SimpleNamespace

    from lmsweep.jobs.decoding import DecodingPoint

    monkeypatch.delenv("LMSWEEP_VLLM_COMPILE", raising=False)
    two = DecodingPoint(do_sample=True, temperature=1.0, max_new_tokens=100, num_return_sequences=2)
    for cache, limit in vllm.COMPILE_FROM_TOKENS["cpu"].items():
        units = [SimpleNamespace(point=two)] * (limit // 200 - 1) + [SimpleNamespace(point=None)] * 199
        assert vllm.planned_new_tokens(units) == limit - 1
        eager, why = vllm.compile_choice(units, "cpu", cache)
        assert eager and f"{limit - 1} new tokens" in why and f"({cache} compile cache)" in why
        eager, why = vllm.compile_choice(units + [SimpleNamespace(point=None)], "cpu", cache)
        assert not eager and f"{limit} new tokens" in why
    warm, cold = (vllm.COMPILE_FROM_TOKENS["cpu"][c] for c in ("warm", "cold"))
    assert vllm.compile_choice([SimpleNamespace(point=None)] * warm, "cpu", "warm")[0] is False
    assert vllm.compile_choice([SimpleNamespace(point=None)] * warm, "cpu", "cold")[0] is True
    assert warm < cold
    assert vllm.compile_choice(units, "cuda") == (False, "vLLM's default on cuda (compile)")
    monkeypatch.setenv("LMSWEEP_VLLM_COMPILE", "0")
    assert vllm.compile_choice(units * 10, "cpu") == (True, "LMSWEEP_VLLM_COMPILE=0 (cold compile cache)")


def test_the_compile_cache_reads_warm_once_a_compiled_start_left_its_function(tmp_path, monkeypatch):
    """`compile_cache` guesses from lmsweep's marker, which a compiled start that saved or loaded the compiled
    function leaves (`remember_compiled`): per model path, dtype and tensor parallel size, under $VLLM_CACHE_ROOT."""
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm"))
    model = tmp_path / "model"
    assert vllm.compile_cache(model, "float32", 1) == "cold"
    vllm.remember_compiled(model, "float32", 1, {"aot_saved": 1})
    assert vllm.compile_cache(model, "float32", 1) == "warm"
    assert vllm.compile_cache(model, "bfloat16", 1) == "cold"
    assert vllm.compile_cache(model, "float32", 2) == "cold"
    assert vllm.compile_cache(tmp_path / "other", "float32", 1) == "cold"
    assert not list((tmp_path / "vllm").rglob("*.tmp"))


def test_a_chunk_is_grouped_by_the_sampler_paths_its_points_switch_on():
    """vLLM samples a step's whole batch at once: top-p sorts every row, top-k and a repetition penalty touch
    every row. A chunk's requests are grouped so that greedy and temperature-only ones share the plain path
    and each costly path runs over its own requests only (one engine call per group, rows kept in order)."""
    from lmsweep.jobs.decoding import DecodingPoint

    points = [DecodingPoint(), DecodingPoint(do_sample=True, temperature=0.7), DecodingPoint(do_sample=True, top_p=0.9),
              DecodingPoint(do_sample=True, top_k=10), DecodingPoint(repetition_penalty=1.3),
              DecodingPoint(do_sample=True, top_p=1.0, top_k=10, repetition_penalty=1.3), DecodingPoint(do_sample=True)]
    assert [vllm.sampler_path(p) for p in points] == ["plain", "plain", "top_p", "top_k", "penalty", "top_k+penalty",
                                                      "plain"]
    assert vllm.sampler_paths(points) == {"plain": [0, 1, 6], "top_p": [2], "top_k": [3], "penalty": [4],
                                          "top_k+penalty": [5]}
