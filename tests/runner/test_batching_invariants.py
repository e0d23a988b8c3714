"""Batching must not change what a unit computes, and a rank loads each model once per element.

The worker runs in this process so every model load can be counted where it happens
(`PreTrainedModel.from_pretrained`); the reference is the seed-style loop the benchmark times:
`pipeline("text-generation")` once per prompt per setting, batch 1.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import transformers

from benchmarks.workload import Setting, make_pipeline, seed_loop
from helpers.tiny_models import make_tiny_llama
from lmsweep.jobs.plan import plan_spec, write_plan
from lmsweep.jobs.spec import load_spec
from lmsweep.results.load import load
from lmsweep.runner.worker import run_element

# Lengths from 3 to ~30 tokens, so every batch of 4 pads some prompts on the left.
PROMPTS = [
    "Once upon a time",
    "The capital of France is Paris, and the capital of Italy is",
    "My dog",
    "I skip across the street and the park every morning because the cat who lived in a house",
    "Shakespeare was a",
    "No, I am your father. Search your feelings,",
    "This game is great fun and I loved every level. Terrible controls,",
    "The animal didn't cross the street because it was too",
    "Rome",
    "Once upon a time there was a small cat who lived in a house and every morning",
]
SETTINGS = [
    Setting("greedy", {}, {"do_sample": False}),
    Setting("greedy rep=1.3", {"repetition_penalty": 1.3}, {"do_sample": False, "repetition_penalty": 1.3}),
    Setting("sample t=0.8", {"temperature": 0.8}, {"do_sample": True, "temperature": 0.8}),
]
MAX_NEW = 12
BATCH = 4


def write_spec(directory: Path, models: dict[str, Path], name: str, batch: int | str = BATCH) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    spec = directory / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        "models: [" + ", ".join(f"{{alias: {a}, source: '{p}'}}" for a, p in models.items()) + "]\n"
        f"prompts: {json.dumps(PROMPTS)}\n"
        "task: generate\n"
        f"decoding: {{max_new_tokens: {MAX_NEW}, seeds: [0, 1], "
        f"include: {json.dumps([s.decoding for s in SETTINGS])}}}\n"
        f"execution: {{batch_size: {batch}, threads_per_rank: 1}}\n")
    return spec


@pytest.fixture
def restore_environ():
    """The worker publishes its rank layout in os.environ (RANK, WORLD_SIZE, ...): keep it out of other tests."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def run_plan(spec: Path, out: Path, batch_size: int | None = None) -> tuple[Path, Counter]:
    """Plan and run every element in this process; count model loads per (element, model class, path)."""
    plan = plan_spec(load_spec(spec))
    exp = out / plan.experiment
    write_plan(plan, exp)
    loads: Counter = Counter()
    original = transformers.PreTrainedModel.__dict__["from_pretrained"]
    element = None

    def counting(cls, path, *args, **kwargs):
        loads[(element, str(path))] += 1
        return original.__func__(cls, path, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(counting))
    try:
        for e in plan.elements:
            element = e.index
            assert run_element(exp, e.index, batch_size=batch_size) == 0
    finally:
        mp.undo()
    return exp, loads


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching-models")
    return {"tiny-a": make_tiny_llama(root / "a", seed=0), "tiny-b": make_tiny_llama(root / "b", seed=1)}


def test_each_rank_loads_each_model_once_per_element(tmp_path, models, restore_environ):
    exp, loads = run_plan(write_spec(tmp_path, models, "loads"), tmp_path / "runs")
    elements = json.loads((exp / "plan.json").read_text())["elements"]
    assert [e["model"] for e in elements] == ["tiny-a", "tiny-b"]
    # one load per element (= per model here), of that element's model, though each ran several batches
    assert sorted(loads.items()) == [((0, str(models["tiny-a"])), 1), ((1, str(models["tiny-b"])), 1)]
    df = load(exp)
    assert df.groupby("element")["batch_latency_s"].nunique().min() > 1
    for e in (0, 1):
        meta = json.loads((exp / "meta" / f"element-{e:05d}-rank-0000.json").read_text())
        assert meta["model_loads"] == 1


def test_batched_greedy_outputs_equal_the_seed_loop(tmp_path, models, restore_environ):
    exp, _ = run_plan(write_spec(tmp_path, models, "greedy"), tmp_path / "runs")
    df = load(exp)
    assert df["batch_size"].max() == BATCH
    greedy = [s for s in SETTINGS if s.deterministic]
    for alias, path in models.items():
        tok = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
        reference = seed_loop(make_pipeline(model, tok), PROMPTS, greedy, MAX_NEW).outputs
        rows = df[(df["model"] == alias) & df["decoding"].isin([s.name for s in greedy])]
        got = {(d, int(p[1:])): list(ids) for d, p, ids in zip(rows["decoding"], rows["prompt_id"], rows["token_ids"])}
        assert len(got) == len(reference) == len(PROMPTS) * len(greedy)
        assert got == reference, alias


def test_sampled_outputs_do_not_depend_on_the_batch_size(tmp_path, models, restore_environ):
    one = {"tiny-a": models["tiny-a"]}
    batched, _ = run_plan(write_spec(tmp_path / "b4", one, "sampled"), tmp_path / "b4" / "runs")
    single, _ = run_plan(write_spec(tmp_path / "b1", one, "sampled"), tmp_path / "b1" / "runs", batch_size=1)
    a, b = (load(e).set_index("unit_id").sort_index() for e in (batched, single))
    assert a["batch_size"].max() == BATCH
    assert set(b["batch_size"]) == {1}
    sampled = a["do_sample"]
    assert sampled.sum() == len(PROMPTS) * 2          # two seeds
    assert a["token_ids"].map(list).equals(b["token_ids"].map(list))


def test_auto_batch_size_halves_on_out_of_memory_and_records_the_size_used(tmp_path, models, restore_environ):
    """A real OOM cannot be provoked reliably here: the generate task is wrapped to raise MemoryError on
    batches above 2 units, as an allocator would; the worker's back-off and the task itself are real."""
    from lmsweep.runner.tasks import generate, get_task

    def run(ctx, units):
        if len(units) > 2:
            raise MemoryError(f"can't allocate memory for {len(units)} sequences")
        return generate.run(ctx, units)

    one = {"tiny-a": models["tiny-a"]}
    reference, _ = run_plan(write_spec(tmp_path / "ref", one, "oom"), tmp_path / "ref" / "runs")
    mp = pytest.MonkeyPatch()
    mp.setattr(get_task("generate"), "run", run)        # the registered task's batch runner, this run only
    try:
        auto, _ = run_plan(write_spec(tmp_path / "auto", one, "oom", batch="auto"), tmp_path / "auto" / "runs")
    finally:
        mp.undo()
    a, ref = (load(e).set_index("unit_id").sort_index() for e in (auto, reference))
    assert set(a["batch_size"]) == {2}                 # 10 units per point: 10 → 5 → 2 (+ the rest in 2s)
    assert a["token_ids"].map(list).equals(ref["token_ids"].map(list))
    assert not (auto / "errors").exists() or not any((auto / "errors").iterdir())


def test_repetition_penalty_ignores_left_padding(smollm2_dir):
    """SmolLM2 pads with EOS. A penalty that counted the padding as seen text pushed padded rows away from
    EOS, so with repetition_penalty a batched prompt ran on where the same prompt alone stopped (4 of 32
    greedy units in the benchmark). This prompt stops after 19 tokens alone; batched, it is padded."""
    from benchmarks.workload import bench_prompts
    from lmsweep.jobs.decoding import DecodingPoint
    from lmsweep.runner.tasks import generate, get_task
    from lmsweep.runner.units import TaskContext, Unit

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ctx = TaskContext(model, tok, get_task("generate").variant({"type": "generate"}))
    point = DecodingPoint(repetition_penalty=1.3, max_new_tokens=24)
    texts = [bench_prompts(12)[11], bench_prompts(12)[11] + " Then it answers the question in plain words."]
    units = [Unit(unit_id=f"u{i}", unit_key=f"u{i}", element=0, variant=0, point_index=0, point=point, seed=None,
                  prompt={"prompt_set": "s", "prompt_id": f"q{i}", "prompt_text": t, "label": None, "meta": "{}",
                          "system_prompt": None, "chat_template": False}) for i, t in enumerate(texts)]
    alone = generate.run(ctx, units[:1])[0][0]
    batched = {r["unit_id"]: r for r in generate.run(ctx, units)[0]}["u0"]
    assert alone["finish_reason"] == "eos"
    assert batched["token_ids"] == alone["token_ids"]
