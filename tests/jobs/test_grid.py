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


def test_include_points_follow_the_axes_they_do_not_set():
    """An include point is crossed with every axis it leaves open (it used to get the default
    max_new_tokens: 32 silently); sampling-only axes skip points that do not sample."""
    points = DecodingGrid.model_validate({"max_new_tokens": [16, 48], "temperature": [0.7, 1.5],
                                          "include": [{"do_sample": False}, {"num_beams": 2},
                                                      {"top_k": 5, "max_new_tokens": 8}]}).points()
    got = sorted((p.strategy, p.max_new_tokens, p.temperature, p.top_k) for p in points)
    assert got == [("beam", 16, None, None), ("beam", 48, None, None),
                   ("greedy", 16, None, None), ("greedy", 48, None, None),
                   ("sample", 8, 0.7, 5), ("sample", 8, 1.5, 5),
                   ("sample", 16, 0.7, None), ("sample", 16, 1.5, None),
                   ("sample", 48, 0.7, None), ("sample", 48, 1.5, None)]
    assert DecodingGrid.model_validate({"max_new_tokens": [16, 48], "temperature": [0.7, 1.5],
                                        "include": [{"do_sample": False}, {"num_beams": 2},
                                                    {"top_k": 5, "max_new_tokens": 8}]}).point_count() == 10


def test_zip_axes_cross_include_points_pair_by_pair():
    points = DecodingGrid.model_validate({"sweep": "zip", "max_new_tokens": [8, 16], "top_p": [0.8, 0.9],
                                          "include": [{}]}).points()
    assert sorted((p.strategy, p.max_new_tokens, p.top_p) for p in points) == [
        ("greedy", 8, None), ("greedy", 16, None), ("sample", 8, 0.8), ("sample", 16, 0.9)]


def test_labels_name_every_swept_parameter():
    from lmsweep.jobs.decoding import point_labels

    points = DecodingGrid.model_validate({"max_new_tokens": [16, 48], "temperature": [0.7],
                                          "include": [{}]}).points()
    labels = point_labels(points)
    assert labels == ["sample t=0.7 max_new=16", "sample t=0.7 max_new=48", "greedy max_new=16",
                      "greedy max_new=48"]
    assert len(set(labels)) == len(points)
    assert point_labels(DecodingGrid.model_validate({"max_new_tokens": 16, "temperature": [0.7, 1]}).points()) \
        == ["sample t=0.7", "sample t=1"]
