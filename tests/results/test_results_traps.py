"""Results that say what they hold (issue 26b): a filter value the experiment does not have warns with the values
it has, an unknown column is one line pointing at docs/results.md, `lmsweep run EXP_DIR` says what EXP_DIR is,
`--trace` takes a unit-id prefix and leaves out what the task does not have, `run --batch-size` overrides."""
from __future__ import annotations

import pytest

import lmsweep
from helpers.cli import cli
from helpers.task_runs import run_spec
from lmsweep.errors import UsageError
from lmsweep.results.load import FilterWarning, unit_from_prefix


@pytest.fixture(scope="module")
def exp(tiny_llama, tmp_path_factory):
    return run_spec(tmp_path_factory.mktemp("traps"),
                    f"name: nt\nmodels: [{{alias: tiny-llama-base, source: {tiny_llama}}}]\n"
                    "prompts: [\"a cat\", \"a dog\"]\ntask: tokenize\n")


def test_a_filter_value_the_experiment_does_not_have_warns_with_the_values_it_has(exp):
    with pytest.warns(FilterWarning) as caught:
        df = lmsweep.load(exp, filters=[("model", "=", "tiny-llama")])
    assert df.empty and len(caught) == 1
    assert str(caught[0].message) == (f"filter ('model', '=', 'tiny-llama') matches no row: {exp} has no model "
                                      "'tiny-llama' (did you mean 'tiny-llama-base'?); its model values: "
                                      "'tiny-llama-base'")


def test_a_filter_that_matches_rows_is_silent(exp, recwarn):
    assert len(lmsweep.load(exp, filters=[("model", "=", "tiny-llama-base")])) == 2
    assert not [w for w in recwarn if issubclass(w.category, FilterWarning)]


@pytest.mark.parametrize("kwargs, field", [({"columns": ["unit_id", "txet"]}, "columns"),
                                           ({"filters": [("modle", "=", "x")]}, "filters")])
def test_an_unknown_column_is_one_line_pointing_at_the_column_reference(exp, kwargs, field):
    with pytest.raises(UsageError) as e:
        lmsweep.load(exp, **kwargs)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"{field}: unknown column ")
    assert line.endswith("a tokenize experiment's columns are listed in docs/results.md#column-reference")


def test_results_columns_points_at_docs_not_the_readme(exp):
    proc = cli("results", str(exp), "--columns", "unit_id,txet")
    assert proc.returncode == 2 and "docs/results.md#column-reference" in proc.stderr


def test_run_on_an_experiment_directory_says_what_it_is_and_what_to_run(exp):
    proc = cli("run", str(exp))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: spec: {exp} is an experiment directory, not a spec: `lmsweep status "
                                   f"{exp}` and `lmsweep results {exp} --summary` read it; `lmsweep run "
                                   f"{exp.parent.parent / 'spec.yaml'}` runs (or resumes) it")


def test_trace_takes_a_unit_id_prefix_and_omits_what_the_task_does_not_have(exp):
    unit = lmsweep.load(exp, columns=["unit_id"])["unit_id"].iloc[0]
    proc = cli("results", str(exp), "--trace", unit[:10])
    assert proc.returncode == 0, proc.stderr
    assert unit in proc.stdout
    assert "decoding" not in proc.stdout and "seed" not in proc.stdout.replace("seeds", "")


def test_an_ambiguous_prefix_asks_for_more_and_an_unknown_one_says_so(exp):
    with pytest.raises(UsageError, match="unit prefix '' matches 2 units"):
        unit_from_prefix(exp, "", "--trace")
    proc = cli("results", str(exp), "--trace", "zzz")
    assert proc.returncode == 2 and "--trace: no result row for unit 'zzz'" in proc.stderr


def test_run_batch_size_overrides_the_spec(tiny_llama, tmp_path):
    (tmp_path / "spec.yaml").write_text(f"name: b\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\n"
                                        "prompts: [\"a\", \"b\", \"c\"]\ntask: tokenize\n"
                                        "execution: {batch_size: 8}\n")
    proc = cli("run", str(tmp_path / "spec.yaml"), "--output-dir", str(tmp_path / "runs"), "--batch-size", "1",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert set(lmsweep.load(tmp_path / "runs" / "b")["batch_size"]) == {1}
    bad = cli("run", str(tmp_path / "spec.yaml"), "--batch-size", "0")
    assert bad.returncode == 2 and "--batch-size" in bad.stderr


def test_the_report_plots_no_variant_axis_when_no_variant_varies(exp, tiny_llama, tmp_path):
    from lmsweep.results.report import build_report

    assert "Throughput by" not in build_report(exp)          # tokenize has no timings: no plot (it raised)
    ll = run_spec(tmp_path, f"name: ll\nmodels: [{{alias: tiny, source: {tiny_llama}}}]\nprompts: [\"a cat\"]\n"
                            "task: loglikelihood\n")
    page = build_report(ll)
    assert "Throughput by variant" not in page and "alt='Throughput by model'" in page
