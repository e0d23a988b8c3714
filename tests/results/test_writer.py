"""The row writer keeps every column a task returns, or refuses: a column its schema lacks is an error
naming the task and the column, and nothing is written (pyarrow alone would drop it without a word)."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from lmsweep.results.writer import PartWriter, UnknownColumn, results_dir


def test_a_row_with_a_column_its_schema_lacks_is_refused_and_nothing_is_written(tmp_path):
    writer = PartWriter(tmp_path, "next_token", element=0, rank=0)
    row = {"unit_id": "u0", "topk_ids": [1, 2], "topk_probs": [0.6, 0.3], "entropy": 1.2, "top_logit": 7.5}
    with pytest.raises(UnknownColumn, match=r"task 'next_token' returned column 'top_logit', which its schema lacks"):
        writer.write([row])
    where = results_dir(tmp_path, "next_token")
    assert not where.exists() or not any(where.iterdir())


def test_one_unknown_column_in_any_row_refuses_the_whole_batch(tmp_path):
    writer = PartWriter(tmp_path, "tokenize", element=0, rank=0)
    good = {"unit_id": "u0", "num_tokens": 3}
    with pytest.raises(UnknownColumn, match="'attention'"):
        writer.write([good, {**good, "unit_id": "u1", "attention": [0.5]}])
    where = results_dir(tmp_path, "tokenize")
    assert not where.exists() or not any(where.iterdir())


def test_declared_columns_are_written_and_read_back(tmp_path):
    writer = PartWriter(tmp_path, "next_token", element=0, rank=0)
    part = writer.write([{"unit_id": "u0", "topk_ids": [1, 2], "topk_probs": [0.5, 0.25], "entropy": 1.5,
                          "num_prompt_tokens": 4}])
    table = pq.read_table(part)
    assert table.num_rows == 1 and table.schema.equals(writer.schema, check_metadata=False)
    got = table.to_pylist()[0]
    assert (got["unit_id"], got["topk_ids"], got["topk_probs"], got["entropy"], got["num_prompt_tokens"]) == \
        ("u0", [1, 2], [0.5, 0.25], 1.5, 4)
    assert got["model"] is None                                 # a column the row left out is null
