"""Decoding grid expansion: lists are axes, scalars fixed, product/zip, include/exclude, seeds."""
from __future__ import annotations

import pytest

from lmsweep.jobs.decoding import DecodingGrid


def labels(grid: dict) -> list[str]:
    return [p.label() for p in DecodingGrid.model_validate(grid).points()]


def test_scalars_only_is_one_greedy_point():
    points = DecodingGrid.model_validate({"max_new_tokens": 8}).points()
    assert len(points) == 1 and points[0].strategy == "greedy" and points[0].max_new_tokens == 8


def test_product_of_axes():
    assert labels({"temperature": [0.5, 1.5], "top_k": [5, 10]}) == [
        "sample t=0.5 k=5", "sample t=0.5 k=10", "sample t=1.5 k=5", "sample t=1.5 k=10"]


def test_zip_pairs_axes():
    assert labels({"sweep": "zip", "temperature": [0.5, 1.5], "top_k": [5, 10]}) == [
        "sample t=0.5 k=5", "sample t=1.5 k=10"]


def test_include_only_grid_is_exactly_the_include_points_over_fixed_values():
    grid = DecodingGrid.model_validate({"max_new_tokens": 16, "include": [{}, {"num_beams": 4}, {"top_p": 0.9}]})
    points = grid.points()
    assert [p.label() for p in points] == ["greedy", "beam4", "sample p=0.9"]
    assert all(p.max_new_tokens == 16 for p in points)


def test_include_adds_to_axes_and_exclude_removes():
    got = labels({"temperature": [0.5, 1.0, 2.0], "exclude": [{"temperature": 2.0}],
                  "include": [{"num_beams": 2}]})
    assert got == ["sample t=0.5", "sample t=1", "beam2"]


def test_sampling_params_imply_sampling_and_duplicates_collapse():
    got = labels({"include": [{"temperature": 1.0}, {"do_sample": True, "temperature": 1.0}]})
    assert got == ["sample t=1"]


def test_explicit_greedy_with_temperature_is_rejected():
    with pytest.raises(ValueError, match="temperature applies only when sampling") as e:
        DecodingGrid.model_validate({"do_sample": [False, True], "temperature": 0.7}).points()
    assert "do_sample: false" in str(e.value) and "False" not in str(e.value)    # YAML, not Python
    with pytest.raises(ValueError, match="temperature and top_p apply only when sampling"):
        DecodingGrid.model_validate({"do_sample": False, "temperature": 0.7, "top_p": 0.9}).points()


def test_num_return_sequences_needs_sampling_or_beams():
    with pytest.raises(ValueError, match="needs sampling or at least 3 beams"):
        DecodingGrid.model_validate({"num_return_sequences": 3}).points()
    assert labels({"num_return_sequences": 3, "num_beams": 3}) == ["beam3 n=3"]


def test_exclude_everything_is_an_error():
    with pytest.raises(ValueError, match="no decoding points left"):
        DecodingGrid.model_validate({"top_k": [5], "exclude": [{"top_k": 5}]}).points()


def test_point_count_matches_expansion_before_rules():
    grid = DecodingGrid.model_validate({"top_k": [1, 2, 3], "temperature": [0.5, 1.0], "include": [{}]})
    assert grid.point_count() == 7 == len(grid.points())
