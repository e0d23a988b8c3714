"""`lmsweep plot attention`'s choices and names: a colour bar on the PNG grid; files named by prompt id (unique
and filesystem-safe); `--unit` and `--prompt-id`, several at once; and a one-line error (exit 2) that lists
what there is when a unit, prompt id, layer or head asked for is not there, with nothing written."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from helpers.cli import cli
from helpers.task_runs import ATTENTION_PROMPTS as PROMPTS
from helpers.task_runs import rows, run_spec


@pytest.fixture(scope="module")
def experiment(tiny_llama, tmp_path_factory):
    exp = run_spec(tmp_path_factory.mktemp("views"), f"name: att\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\n"
                                                     f"{PROMPTS}task: attention\n")
    units = rows(exp).drop_duplicates("unit_id").set_index("prompt_id")["unit_id"]
    return exp, units


def plot(exp, *args):
    return cli("plot", "attention", str(exp), *args)


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_the_grid_has_a_colour_bar(experiment, tmp_path):
    """The colour bar is the one strip of the image whose pixels run through the whole viridis scale (a
    heatmap column of a 5-token prompt holds at most 5 colours)."""
    import matplotlib
    from matplotlib.image import imread

    exp, units = experiment
    plot(exp, "--prompt-id", "father", "--out", str(tmp_path))
    image = imread(tmp_path / "attention-father.png")[:, :, :3]
    lut = matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3]
    shades = 0
    for x in range(image.shape[1]):                     # the distinct colours of each column that are viridis'
        colours = np.unique(image[:, x].round(3), axis=0)
        shades = max(shades, int((np.abs(colours[:, None] - lut[None]).max(-1).min(-1) < 0.01).sum()))
    assert shades >= 100


def test_files_are_named_by_prompt_id_and_prompt_ids_are_chosen_several_at_once(experiment, tmp_path):
    exp, units = experiment
    proc = plot(exp, "--prompt-id", "father", "animal", "--out", str(tmp_path))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert proc.returncode == 0 and names == ["attention-animal.html", "attention-animal.png",
                                              "attention-father.html", "attention-father.png"]
    assert proc.stdout.count("wrote ") == 4


def test_units_are_chosen_several_at_once_and_with_prompt_ids(experiment, tmp_path):
    exp, units = experiment
    for args in (["--unit", units["father"][:8], units["animal"][:8]],           # several after one flag
                 ["--unit", units["father"], "--unit", units["animal"]],          # the flag repeated
                 ["--unit", units["father"], "--prompt-id", "animal", "father"]):  # both flags; father once
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        proc = plot(exp, *args, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        assert sorted(p.name for p in out.glob("*.png")) == ["attention-animal.png", "attention-father.png"]


def test_a_prompt_id_given_as_a_unit_is_refused_listing_the_units(experiment, tmp_path):
    exp, units = experiment
    line = one_error_line(plot(exp, "--unit", "animal", "--out", str(tmp_path)))
    assert "--unit: no attention rows for unit 'animal'" in line and "use --prompt-id animal" in line
    assert f"{units['animal'][:10]} (tiny, animal)" in line and f"{units['father'][:10]} (tiny, father)" in line
    line = one_error_line(plot(exp, "--prompt-id", "dog", "--out", str(tmp_path)))
    assert "--prompt-id: no attention rows for prompt id 'dog'" in line and "prompt ids: animal, father" in line
    line = one_error_line(plot(exp, "--out", str(tmp_path)))
    assert "--unit: name what to draw" in line
    assert not tmp_path.joinpath("attention-animal.png").exists()


def test_a_layer_or_head_not_stored_is_refused_naming_the_stored_ones(experiment, tmp_path):
    exp, units = experiment
    line = one_error_line(plot(exp, "--prompt-id", "father", "animal", "--layers", "5", "--out", str(tmp_path)))
    assert re.search(r"--layers: layer 5 is not stored for unit \w{10} \(prompt father\); stored layers: 0, 1$", line)
    line = one_error_line(plot(exp, "--unit", units["animal"], "--heads", "0,7", "--out", str(tmp_path)))
    assert line.endswith(f"--heads: head 7 is not stored for unit {units['animal'][:10]} (prompt animal); "
                         "stored heads: 0-3")
    assert list(tmp_path.iterdir()) == []                                   # checked before anything is written


def test_summary_only_and_head_mean_units_say_what_they_hold(tiny_llama, tmp_path):
    exp = run_spec(tmp_path / "s", f"name: s\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\n{PROMPTS}"
                                   "task: {type: attention, store: summary}\n")
    line = one_error_line(plot(exp, "--prompt-id", "father"))
    assert "stores summaries only (store: summary)" in line
    report = tmp_path / "report.html"
    cli("report", str(exp), "-o", str(report), check=True)              # the summaries are drawn instead
    assert "Attention summaries by layer and head (model tiny, mean over 2 unit(s))" in report.read_text()
    exp = run_spec(tmp_path / "m", f"name: m\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\n{PROMPTS}"
                                   "task: {type: attention, head_mean: true, layers: [-1]}\n")
    line = one_error_line(plot(exp, "--prompt-id", "father", "--heads", "0"))
    assert line.endswith("stored heads: -1 (-1: the head mean)")
    assert "stored layers: 1" in one_error_line(plot(exp, "--prompt-id", "father", "--layers", "0"))


def test_file_stems_are_unique_and_safe_whatever_the_prompt_ids():
    from lmsweep.runner.tasks.attention_views import file_stems

    index = pd.DataFrame([
        ("u01", "a", "animal"), ("u02", "b", "animal"),            # one prompt, two models: the model says which
        ("u03", "a", "twice"), ("u04", "a", "twice"),              # one prompt and model (variants): the unit
        ("u05", "a", "a/b c"), ("u06", "a", "a_b_c"),              # unsafe characters, and what they become
        ("u07", "a", "animal-b"), ("u08", "a", "../up"), ("u09", "a", "x" * 200), ("u10", "a", ".hidden"),
    ], columns=["unit_id", "model", "prompt_id"])
    stems = file_stems(index)
    assert stems["u01"] == "attention-animal-a" and stems["u03"] == "attention-twice-u03"
    assert stems["u06"] == "attention-a_b_c" and stems["u05"].startswith("attention-a_b_c-")
    assert len(set(stems.values())) == len(index)
    assert all(re.fullmatch(r"attention-[A-Za-z0-9._-]{1,80}", s) for s in stems.values()), stems
    # "animal" of model b and the prompt "animal-b" would both be attention-animal-b: the unit breaks the tie
    assert {stems["u02"], stems["u07"]} == {"attention-animal-b-u02", "attention-animal-b-u07"}


def test_the_reports_summary_grids_are_the_means_by_layer_and_head():
    from lmsweep.runner.tasks.attention_views import summary_grids

    df = pd.DataFrame({"model": ["m"] * 4 + ["other"], "unit_id": ["u1", "u1", "u2", "u2", "u3"],
                       "layer": [0, 1, 0, 1, 0], "head": [0] * 5, "sink_mass": [0.2, 0.4, 0.6, 0.8, 9.0],
                       "row_entropy": [None] * 5})
    model, units, grids = summary_grids(df)
    assert (model, units, list(grids)) == ("m", 2, ["sink_mass"])              # the first model; stored columns
    assert grids["sink_mass"].loc[0, 0] == pytest.approx(0.4) and grids["sink_mass"].loc[1, 0] == pytest.approx(0.6)
    assert summary_grids(df.drop(columns="sink_mass")) is None
