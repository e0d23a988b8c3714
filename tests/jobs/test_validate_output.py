"""`lmsweep validate` and `lmsweep plan` list the decoding points with every parameter, labelled so that
no two points look alike (the label used to hide max_new_tokens, and plan listed no points)."""
from __future__ import annotations

from helpers.cli import cli, write_spec

SPEC = """name: points
models: [package:smollm2-135m-instruct]
prompts: ["a", "b"]
task: generate
decoding: {max_new_tokens: [16, 48], temperature: [0.7, 1.5], include: [{do_sample: false}]}
"""


def test_validate_and_plan_list_every_decoding_point(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    for args in (("validate", str(spec)), ("plan", str(spec), "--output-dir", str(tmp_path / "runs"))):
        out = cli(*args, cwd=tmp_path, check=True, env={"COLUMNS": "120"}).stdout
        assert "6 decoding point(s)" in out or "decoding points (6)" in out
        for label in ("sample t=0.7 max_new=16", "sample t=1.5 max_new=48", "greedy max_new=16",
                      "greedy max_new=48"):
            assert label in out, out
        header = next(line for line in out.splitlines() if "label" in line)
        assert "temperature" in header and "max_new_tokens" in header and "do_sample" in header
        assert "every point: num_beams: 1, top_k: null, top_p: null, repetition_penalty: 1" in out
