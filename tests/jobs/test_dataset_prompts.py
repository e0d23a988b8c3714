"""Hugging Face datasets as prompt sets (issue 26): a save_to_disk folder, a dataset in the offline datasets cache
by name and config, and .arrow/.parquet shards, all built offline here in tmp_path. Split, column mapping,
filter, limit and seeded sample; errors at the spec's file:line like the other sources; nothing downloaded."""
from __future__ import annotations

import json
import os
import shutil

import pytest

datasets = pytest.importorskip("datasets")

from helpers.cli import REPO, cli  # noqa: E402
from lmsweep.errors import SpecError  # noqa: E402
from lmsweep.jobs.plan import load_prompts  # noqa: E402
from lmsweep.jobs.spec import load_spec  # noqa: E402

SENTIMENT = datasets.ClassLabel(names=["negative", "positive"])
FEATURES = datasets.Features({"rid": datasets.Value("string"), "review": datasets.Value("string"),
                              "sentiment": SENTIMENT, "stars": datasets.Value("int32")})
TRAIN = {"rid": [f"r{i}" for i in range(10)], "review": [f"review number {i}" for i in range(10)],
         "sentiment": [i % 2 for i in range(10)], "stars": [1 + i % 5 for i in range(10)]}
TEST = {"rid": ["t0", "t1"], "review": ["fine", "dull"], "sentiment": [1, -1], "stars": [4, 2]}


def dataset_dict():
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(TRAIN, features=FEATURES),
                                 "test": datasets.Dataset.from_dict(TEST, features=FEATURES)})


def spec(tmp_path, dataset: str, columns: str = "    text_column: review\n    id_column: rid\n"
                                                "    label_column: sentiment\n"):
    path = tmp_path / "spec.yaml"
    path.write_text("name: d\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: reviews\n"
                    f"    dataset: {dataset}\n{columns}task: tokenize\n")
    return path


def prompts(path):
    return load_prompts(load_spec(path))


@pytest.fixture
def disk(tmp_path):
    dataset_dict().save_to_disk(str(tmp_path / "reviews"))
    return tmp_path


def test_a_save_to_disk_folder_is_a_prompt_set_with_its_columns_mapped_and_class_labels_named(disk):
    got = prompts(spec(disk, "{path: reviews, split: test}"))
    assert [(p.id, p.text, p.label) for p in got] == [("t0", "fine", "positive"), ("t1", "dull", None)]
    assert [json.loads(p.meta) for p in got] == [{"stars": 4}, {"stars": 2}]
    assert {p.set for p in got} == {"reviews"}


def test_filter_limit_and_a_seeded_sample_select_rows(disk):
    kept = prompts(spec(disk, "{path: reviews, split: train, filter: {sentiment: positive, stars: [2, 4]}}"))
    assert [p.id for p in kept] == ["r1", "r3"]          # the odd rows have stars 2, 4, 1, 3, 5
    assert [p.id for p in prompts(spec(disk, "{path: reviews, split: train, limit: 3}"))] == ["r0", "r1", "r2"]
    drawn = [p.id for p in prompts(spec(disk, "{path: reviews, split: train, sample: 4, seed: 1}"))]
    assert drawn == [p.id for p in prompts(spec(disk, "{path: reviews, split: train, sample: 4, seed: 1}"))]
    assert drawn != [p.id for p in prompts(spec(disk, "{path: reviews, split: train, sample: 4, seed: 2}"))]
    assert len(set(drawn)) == 4 and drawn == sorted(drawn, key=lambda r: int(r[1:]))   # in dataset order


def test_rows_without_an_id_column_are_numbered_by_their_place_in_the_split(disk):
    got = prompts(spec(disk, "{path: reviews, split: train, filter: {sentiment: 1}, limit: 2}",
                       columns="    text_column: review\n"))
    assert [p.id for p in got] == ["p1", "p3"]


def test_arrow_and_parquet_shards(tmp_path):
    ds = datasets.Dataset.from_dict(TRAIN, features=FEATURES)
    ds.to_parquet(str(tmp_path / "shard.parquet"))
    dataset_dict().save_to_disk(str(tmp_path / "saved"))
    shutil.copy(next((tmp_path / "saved" / "train").glob("*.arrow")), tmp_path / "shard.arrow")
    for shard in ("shard.parquet", "shard.arrow"):
        got = prompts(spec(tmp_path, f"{{path: {shard}, limit: 2}}"))
        assert [(p.id, p.text, p.label) for p in got] == [("r0", "review number 0", "negative"),
                                                            ("r1", "review number 1", "positive")]


def cache_entry(cache_dir, name: str, config: str):
    """What `load_dataset(name, config)` leaves in the datasets cache (<namespace>___<name>/<config>/<version>/
    <hash>/), written by datasets' own Json builder from a local file: no network."""
    from datasets.packaged_modules.json.json import Json

    source = cache_dir.parent / "rows.jsonl"
    source.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}"}) + "\n" for i in range(5)))
    namespace, short = name.split("/")
    builder = Json(cache_dir=str(cache_dir), dataset_name=short, config_name=config, config_id=config,
                   hash="0123456789abcdef", data_files={"validation": [str(source)]})
    builder.download_and_prepare()
    os.rename(cache_dir / short, cache_dir / f"{namespace}___{short}")


def test_a_dataset_in_the_offline_cache_by_name_and_config(tmp_path):
    cache_entry(tmp_path / "hf", "org/qa", "en")
    path = spec(tmp_path, "{name: org/qa, config: en, cache_dir: hf, sample: 2, seed: 0}",
                columns="    text_column: question\n")
    got = prompts(path)
    assert len(got) == 2 and all(p.text.startswith("q") and json.loads(p.meta)["answer"] for p in got)
    proc = cli("validate", str(spec(tmp_path, "{name: org/qa, config: fr, cache_dir: hf}",
                                    columns="    text_column: question\n")))
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith(f"error: {tmp_path / 'spec.yaml'}:5: prompts[0].dataset.config: dataset 'org/qa' "
                          "(config 'fr') is not in the datasets cache") and "never downloads" in err
    assert "'en'" in err and len(err.splitlines()) == 1


def test_a_dataset_missing_from_the_cache_is_an_error_never_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    proc = cli("validate", str(spec(tmp_path, "{name: org/never-seen}", columns="    text_column: q\n")))
    assert proc.returncode == 2
    assert f"prompts[0].dataset.name: dataset 'org/never-seen' is not in the datasets cache {tmp_path / 'empty'}; " \
           "lmsweep never downloads" in proc.stderr
    with pytest.raises(SpecError, match="never downloads"):            # in this process, not the CLI's
        prompts(spec(tmp_path, "{name: org/never-seen}", columns="    text_column: q\n"))
    assert "HF_DATASETS_OFFLINE" not in os.environ          # set while datasets is imported, then restored


@pytest.mark.parametrize("dataset, line, expected", [
    ("{path: reviews, split: tran}", 5, "prompts[0].dataset.split: no split 'tran' (did you mean 'train'?)"),
    ("{path: reviews}", 5, "prompts[0].dataset.split: {dir}/reviews has the splits test, train; choose one"),
    ("{path: reviews, split: train, filter: {sentimnt: 1}}", 5,
     "prompts[0].dataset.filter: filter on 'sentimnt', a column {dir}/reviews[train] does not have "
     "(did you mean 'sentiment'?)"),
    ("{path: reviews, split: train, filter: {stars: 9}}", 5,
     "prompts[0].dataset.filter: filter stars = 9 keeps no row of {dir}/reviews[train]; its stars values: 1, 2, 3"),
    ("{path: reviews, split: train, sample: 11}", 5,
     "prompts[0].dataset.sample: sample: 11 rows asked for, {dir}/reviews[train] has 10"),
    ("{path: nowhere}", 5, "prompts[0].dataset.path: dataset not found: {dir}/nowhere"),
    ("{path: reviews, limit: 2, sample: 2}", 5, "prompts[0].dataset: give `limit`"),
    ("{path: reviews, name: org/x}", 5, "prompts[0].dataset: give exactly one of `path`"),
])
def test_a_wrong_dataset_key_is_one_error_at_its_spec_line(disk, dataset, line, expected):
    proc = cli("validate", str(spec(disk, dataset)))
    assert proc.returncode == 2, proc.stdout
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {disk / 'spec.yaml'}:{line}: {expected.format(dir=disk)}"), err


def test_a_row_error_names_the_dataset_and_row(disk):
    proc = cli("validate", str(spec(disk, "{path: reviews, split: train}", columns="    text_column: reveiw\n")))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {disk}/reviews[train]: row 1: missing `reveiw` (the text_column) "
                                  "(did you mean 'review'?)")


def test_specs_without_a_dataset_keep_their_canonical_form(tmp_path):
    """The new key is left out of the spec hash's canonical JSON when unset, so no existing id moves."""
    (tmp_path / "s.yaml").write_text("name: s\nmodels: [package:smollm2-135m-instruct]\nprompts: [a]\n"
                                     "task: generate\n")
    assert "dataset" not in load_spec(tmp_path / "s.yaml").canonical()["prompts"][0]


def test_the_shipped_example_reads_its_save_to_disk_folder():
    got = prompts(REPO / "configs" / "hf_dataset.yaml")
    assert len(got) == 8 and {p.label for p in got} <= {"positive", "negative"}
    assert all(p.id.startswith("r") for p in got)


def test_a_dataset_column_is_loglikelihoods_continuation(tmp_path):
    """Columns not mapped stay in meta, where loglikelihood's continuation_column reads them: a dataset of
    (context, ending) rows is a multiple-choice set."""
    datasets.Dataset.from_dict({"ctx": ["The sky is", "The sky is"], "ending": [" blue", " green"]}) \
        .save_to_disk(str(tmp_path / "mc"))
    path = tmp_path / "spec.yaml"
    path.write_text("name: d\nmodels: [package:smollm2-135m-instruct]\nprompts:\n  - name: mc\n"
                    "    dataset: {path: mc}\n    text_column: ctx\n"
                    "task: {type: loglikelihood, continuation_column: ending}\n")
    import lmsweep

    plan = lmsweep.plan(lmsweep.load_spec(path))
    assert plan.n_units == 2 and len(set(plan.units.column("unit_id").to_pylist())) == 2
    assert [json.loads(p.meta)["ending"] for p in plan.prompts] == [" blue", " green"]


def test_lmsweep_examples_copies_the_dataset_folder_with_the_spec(tmp_path):
    proc = cli("examples", "hf_dataset", "--to", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prompts" / "game_reviews_hf" / "test" / "dataset_info.json").is_file()
    assert cli("validate", str(tmp_path / "hf_dataset.yaml")).returncode == 0
