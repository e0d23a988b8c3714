"""The one packer (jobs.plan.ElementPacker): build_plan feeds it a block of units at a time, submit a model's
units at once; both must give the same elements, and each element but a model's last is full."""
from __future__ import annotations

import numpy as np
import pytest

from lmsweep.jobs.plan import ElementPacker, element_budget, model_copies


def feed(models: list[tuple[str, np.ndarray]], budget: float, max_units: int | None, blocks: int, rng):
    packer = ElementPacker(budget, max_units, 50.0)
    out = []
    for alias, costs in models:
        packer.start(alias)
        cuts = np.sort(rng.choice(np.arange(1, len(costs)), size=min(blocks, len(costs) - 1), replace=False))
        out += [packer.add(part) for part in np.split(costs, cuts)]
    return np.concatenate(out), packer.close()


@pytest.mark.parametrize("seed", range(20))
def test_blocks_and_whole_models_pack_alike(seed):
    rng = np.random.default_rng(seed)
    models = [(f"m{i}", rng.integers(1, 300, size=int(rng.integers(2, 400)))) for i in range(int(rng.integers(1, 4)))]
    budget = float(rng.uniform(300, 5000))
    max_units = [None, int(rng.integers(1, 50))][seed % 2]
    whole, whole_elements = feed(models, budget, max_units, 0, rng)
    blocked, blocked_elements = feed(models, budget, max_units, int(rng.integers(1, 30)), rng)
    assert whole.tolist() == blocked.tolist() and whole_elements == blocked_elements
    assert [e.index for e in whole_elements] == list(range(len(whole_elements)))
    costs = np.concatenate([c for _, c in models])
    model_of = np.concatenate([[a] * len(c) for a, c in models])
    for e in whole_elements:
        mine = np.flatnonzero(whole == e.index)
        assert set(model_of[mine]) == {e.model} and len(mine) == e.n_units
        assert costs[mine].sum() <= budget or len(mine) == 1
        assert e.est_seconds == costs[mine].sum() / 50.0
        after = mine[-1] + 1
        if after < len(costs) and model_of[after] == e.model:      # not its model's last: full
            assert costs[mine].sum() + costs[after] > budget or (max_units and len(mine) == max_units)


def test_float_costs_pack_like_their_integer_values():
    """submit's costs are float64 (plan_unit_costs); the plan's are int64: same values, same elements."""
    costs = np.random.default_rng(1).integers(1, 200, size=1000)
    ints = ElementPacker(element_budget(300, model_copies(4, 1), 2.5), 40, 2.5)
    floats = ElementPacker(element_budget(300, model_copies(4, 1), 2.5), 40, 2.5)
    ints.start("m")
    floats.start("m")
    assert ints.add(costs).tolist() == floats.add(costs.astype(np.float64)).tolist()
    assert ints.close() == floats.close()
