"""A decoding parameter is declared once (jobs/decoding.py PARAMS): the spec's keys, the point, the labels, the
result columns and the engines' refusals follow from the table, and a parameter added to it moves no unit id,
no sampled stream and no spec hash (docs/adding-a-decoding-parameter.md)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lmsweep
from helpers.cli import FIXTURES, REPO, cli, write_spec
from lmsweep.jobs import decoding
from lmsweep.jobs.decoding import PARAMS, DecodingPoint, DecodingValues

RECORDED = json.loads((FIXTURES / "unit_ids.json").read_text())
HERE = Path(__file__).resolve().parent

PROBE = """name: probe
models:
  - alias: smollm2
    source: package:smollm2-135m-instruct
prompts:
  - name: p
    items: [Once upon a time, The capital of France is]
task: generate
decoding:
  max_new_tokens: 8
  seeds: [0, 1]
  include:
    - {do_sample: false}
    - {temperature: 0.7}
    - {num_beams: 2}
"""
ADDED_POINTS = "    - {temperature: 0.7, min_p: 0.05}\n    - {num_beams: 2, length_penalty: 0.5}\n"


def test_the_models_the_labels_and_the_columns_come_from_the_table():
    from lmsweep.results.schema import COMMON

    names = [p.name for p in PARAMS]
    assert list(DecodingValues.model_fields) == names == list(DecodingPoint.model_fields)
    assert decoding.SAMPLING_PARAMS == ("temperature", "top_k", "top_p")
    assert DecodingPoint().model_dump() == {p.name: p.default for p in PARAMS}
    common = [name for name, _ in COMMON]
    assert common[common.index("do_sample"):common.index("do_sample") + len(names)] == names
    assert {name: str(t) for name, t in COMMON if name in names} == \
        {"do_sample": "bool", "num_beams": "int32", "temperature": "double", "top_k": "int32", "top_p": "double",
         "repetition_penalty": "double", "no_repeat_ngram_size": "int32", "max_new_tokens": "int32",
         "num_return_sequences": "int32"}
    point = DecodingPoint(do_sample=True, temperature=0.7, top_k=50, repetition_penalty=1.3,
                          no_repeat_ngram_size=3, num_return_sequences=2, max_new_tokens=48)
    assert point.label(show_length=True) == "sample t=0.7 k=50 rep=1.3 nrng=3 n=2 max_new=48"
    assert decoding.table_problems(PARAMS) == []
    assert decoding.table_problems(PARAMS + (PARAMS[2],)) == ["a parameter is declared twice: ['temperature']",
                                                              "two parameters share a label name: ['t']"]


def test_the_legacy_parameters_serialise_as_they_always_did():
    """identity() and stream_fields() of today's nine parameters: every one, default or not (the recorded ids)."""
    point = DecodingPoint(do_sample=True, temperature=0.7)
    assert point.identity() == (
        '{"do_sample":true,"max_new_tokens":32,"no_repeat_ngram_size":0,"num_beams":1,"num_return_sequences":1,'
        '"repetition_penalty":1.0,"sampling_stream":2,"temperature":0.7,"top_k":null,"top_p":null}')
    assert set(point.stream_fields()) == decoding.LEGACY - {"max_new_tokens"}
    assert DecodingValues(top_p=0.5).model_dump() == {name: (0.5 if name == "top_p" else None) for name in
                                                      decoding.LEGACY}


def test_the_hf_engines_mapping_is_what_hf_declares_it_serves():
    """hf (and deepspeed) serve exactly the parameters their processors and the decode loop apply."""
    from lmsweep.core.engine import get_engine
    from lmsweep.runner.engines import transformers_batch
    from lmsweep.runner.sampling import WARPERS

    loop = {"do_sample", "num_beams", "max_new_tokens", "num_return_sequences"}
    assert get_engine("hf").decoding == loop | set(transformers_batch.PENALTIES) | set(WARPERS)
    assert set(WARPERS) == set(decoding.SAMPLING_PARAMS)
    assert get_engine("deepspeed").decoding == get_engine("hf").decoding


def test_an_added_parameter_moves_no_unit_id_and_a_set_one_makes_new_ids(tmp_path):
    """Two parameters added to the table (tests/jobs/added_parameter.py, its own process): every spec of configs/
    plans to its recorded ids, units and spec hash; a point setting one has new ids and a new random stream,
    the other points keep theirs; an engine that does not serve it refuses it at plan time, by name."""
    from test_unit_ids_stable import _uninstalled_packages

    specs = [str(p) for p in sorted((REPO / "configs").glob("*.yaml")) if not _uninstalled_packages(p)]
    assert len(specs) >= len(RECORDED) - 1
    before = write_spec(tmp_path / "before.yaml", PROBE)
    probe = write_spec(tmp_path / "probe.yaml", PROBE + ADDED_POINTS + "execution:\n  backend: extended\n")
    probe_hf = write_spec(tmp_path / "probe_hf.yaml", PROBE + ADDED_POINTS)
    args = {"specs": specs, "probe": str(probe), "probe_hf": str(probe_hf), "out": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, str(HERE / "added_parameter.py"), json.dumps(args)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)

    for path in specs:                                             # configs/: ids, keys, elements, spec hash
        assert found["specs"][Path(path).name] == RECORDED[Path(path).name], path

    plan = lmsweep.plan(lmsweep.load_spec(before))                 # the probe without the new parameters, here
    ids = {}
    for uid, point in zip(plan.units.column("unit_id").to_pylist(), plan.units.column("point").to_pylist()):
        ids.setdefault(decoding.point_labels(plan.points)[point], []).append(uid)
    probe = found["probe"]
    assert set(probe) == {"greedy", "sample t=0.7", "beam2", "sample t=0.7 minp=0.05", "beam2 lp=0.5"}, probe
    for label in ids:                                              # points that leave them at default: unmoved
        assert probe[label]["ids"] == ids[label], label
    assert not set(probe["sample t=0.7 minp=0.05"]["ids"]) & set(probe["sample t=0.7"]["ids"])
    assert probe["sample t=0.7 minp=0.05"]["stream"] != probe["sample t=0.7"]["stream"]
    assert not set(probe["beam2 lp=0.5"]["ids"]) & set(probe["beam2"]["ids"])
    assert len(probe["sample t=0.7 minp=0.05"]["ids"]) == 4 and len(probe["beam2 lp=0.5"]["ids"]) == 2

    assert found["sampling_params"] == ["temperature", "top_k", "top_p", "min_p"]
    assert found["columns"] == {"min_p": "double", "length_penalty": "double"}
    refused = found["plan_with_hf"]
    assert refused["code"] == 2, refused
    assert "probe_hf.yaml" in refused["stderr"] and "decoding parameter min_p is not served by backend hf; use " \
        "execution.backend: extended (min_p: 0.05)" in refused["stderr"], refused["stderr"]
    assert not (tmp_path / "runs").exists()                        # nothing partial written


@pytest.fixture
def no_penalty_engine():
    """An engine (registered from a test) that serves every decoding parameter but repetition_penalty."""
    from lmsweep.core.engine import register_engine, unregister_engine
    from lmsweep.runner.engines.hf import HF

    @register_engine("no-penalty")
    class NoPenalty(HF):
        decoding = HF.decoding - {"repetition_penalty"}

    yield "no-penalty"
    unregister_engine("no-penalty")


def _spec(tmp_path, decoding_block: str, backend: str) -> Path:
    head = PROBE.split("decoding:")[0]
    return write_spec(tmp_path / "s.yaml", f"{head}decoding:\n{decoding_block}execution:\n  backend: {backend}\n")


def test_a_parameter_an_engine_does_not_serve_is_refused_at_plan_time_naming_it(tmp_path, no_penalty_engine):
    path = _spec(tmp_path, "  repetition_penalty: [1.0, 1.3]\n", no_penalty_engine)
    proc = cli("plan", str(path), "--output-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "s.yaml:" in err and "decoding" in err, err
    assert (f"decoding parameter repetition_penalty is not served by backend {no_penalty_engine}; use "
            "execution.backend: hf, deepspeed or vllm (repetition_penalty: 1.3)") in err, err
    assert not (tmp_path / "runs").exists()
    # at its default the parameter does nothing, so the engine serves the point
    path = _spec(tmp_path, "  repetition_penalty: 1.0\n  temperature: [0.7, 1.0]\n", no_penalty_engine)
    assert cli("plan", str(path), "--output-dir", str(tmp_path / "runs")).returncode == 0


def test_vllm_refuses_what_it_does_not_map_with_its_own_words(tmp_path):
    from lmsweep.runner.engines import vllm

    assert vllm.DECODING == {"do_sample", "num_return_sequences", "max_new_tokens", "repetition_penalty",
                             "temperature", "top_k", "top_p"}
    point = DecodingPoint(no_repeat_ngram_size=3)
    from lmsweep.core.engine import get_engine
    from lmsweep.jobs.decoding import engine_refusal

    assert engine_refusal(get_engine("vllm"), point).startswith("no_repeat_ngram_size is not served by backend vllm")
    assert engine_refusal(get_engine("vllm"), DecodingPoint(do_sample=True, top_k=5)) is None
