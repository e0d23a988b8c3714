"""Packing: every element fits the walltime, every submission fits the queue — or a clear refusal."""
from __future__ import annotations

import math

import numpy as np
import pytest

from lmsweep.jobs.plan import ELEMENT_FILL
from lmsweep.submit.base import scheduler_for
from lmsweep.submit.packing import PackingError, PackRequest, pack, split_arrays
from lmsweep.submit.systems import load_system, walltime_seconds


def request(system: str, queue: str | None, **kw) -> PackRequest:
    p = load_system(system)
    q = p.queue(queue) if queue else None
    base = dict(system=system, one_machine=scheduler_for(p).one_machine, queue=q, ranks_per_node=p.ranks_per_node,
                walltime="01:00:00", tokens_per_second=50.0, max_array_size=p.max_array_size,
                other_queues=tuple(v for k, v in p.queues.items() if k != queue))
    return PackRequest(**(base | kw))


def units(n: int, models: int = 1, cost: float = 300.0):
    return np.array([f"m{i % models}" for i in range(n)], dtype=object), np.full(n, cost)


def check_invariants(packing, models, costs, req):
    """Every unit in exactly one element; one model per element; each element within its walltime."""
    el = packing.element_of_unit
    assert el.min() == 0 and el.max() == len(packing.elements) - 1
    assert np.bincount(el).tolist() == [e.n_units for e in packing.elements]
    for e in packing.elements:
        assert set(models[el == e.index]) == {e.model}
    per_element_wall = np.bincount(el, weights=costs) / req.tokens_per_second / packing.groups
    assert per_element_wall.max() <= walltime_seconds(packing.walltime) * ELEMENT_FILL + 1e-6
    tasks = [i for a in packing.arrays for i in a]
    assert tasks == list(range(len(packing.elements)))


def test_a_million_units_on_polaris_prod_stay_within_100_queued_jobs():
    models, costs = units(1_000_000, models=3)
    req = request("polaris", "prod")
    packing = pack(models, costs, req)
    check_invariants(packing, models, costs, req)
    assert len(packing.elements) <= 100 and len(packing.arrays) == 1
    assert packing.nodes == 10 and packing.ranks == 40 and packing.throttle == 10


def test_polaris_prod_grows_nodes_rather_than_exceed_the_queue():
    models, costs = units(1_000_000, models=3)
    req = request("polaris", "prod", tokens_per_second=5.0)      # 10x the work per unit
    packing = pack(models, costs, req)
    check_invariants(packing, models, costs, req)
    assert len(packing.elements) <= 100 and 10 < packing.nodes <= 496
    assert any("raised from 10" in n for n in packing.notes)


def test_polaris_prod_refuses_what_no_node_count_fits():
    models, costs = units(1_000_000)
    with pytest.raises(PackingError, match=r"more than the 100 jobs polaris queue prod"):
        pack(models, costs, request("polaris", "prod", tokens_per_second=0.2))


def test_one_gpu_per_array_element_is_refused_on_polaris_prod():
    models, costs = units(1000)
    with pytest.raises(PackingError) as e:
        pack(models, costs, request("polaris", "prod", ranks=1))
    msg = str(e.value)
    assert "one GPU per array element" in msg and "10-496 nodes" in msg
    assert "10 nodes x 4 ranks each" in msg and "debug" in msg and "preemptable" in msg


def test_explicit_nodes_outside_the_queue_are_refused():
    models, costs = units(10)
    with pytest.raises(PackingError, match="above the maximum"):
        pack(models, costs, request("polaris", "debug", nodes=3))
    with pytest.raises(PackingError, match="below the minimum"):
        pack(models, costs, request("aurora", "prod", nodes=16))


def test_walltime_above_the_queue_is_refused():
    with pytest.raises(PackingError, match="walltime 02:00:00 is above"):
        pack(*units(10), request("polaris", "debug", walltime="02:00:00"))


def test_a_unit_longer_than_the_walltime_is_refused():
    with pytest.raises(PackingError, match="one unit is estimated"):
        pack(*units(3, cost=1e9), request("polaris", "debug"))


def test_throttle_above_the_queue_limit_is_refused():
    with pytest.raises(PackingError, match="array limit %11 is above the 10 subjobs"):
        pack(*units(1_000_000), request("polaris", "prod", array_limit=11))


def test_slurm_arrays_stay_within_max_array_size():
    """2,500 one-unit elements on a MaxArraySize=1001 cluster: three arrays of <= 1001 tasks each."""
    models, costs = units(2500)
    req = request("slurm-generic", "debug", max_units_per_element=1, array_limit=4)
    packing = pack(models, costs, req)
    check_invariants(packing, models, costs, req)
    assert [len(a) for a in packing.arrays] == [1001, 1001, 498]
    assert packing.throttle == 4 and any("split into 3 arrays" in n for n in packing.notes)


def test_slurm_live_max_array_size_wins():
    packing = pack(*units(300), request("slurm-generic", "debug", max_units_per_element=1, max_array_size=101))
    assert [len(a) for a in packing.arrays] == [101, 101, 98]


def test_slurm_max_job_count_is_a_hard_limit():
    with pytest.raises(PackingError, match="more than the 10000 jobs"):
        pack(*units(10_001), request("slurm-generic", "debug", max_units_per_element=1))


def test_elements_are_filled_in_order_and_hold_one_model():
    """The plan's greedy packer (it was cost-balanced runs here, so `validate` and `submit` disagreed): an element
    takes units in order until the next would not fit its capacity; only a model's last element has room left."""
    models, costs = units(10_000, models=2)
    costs[::7] = 3000.0                          # some long generations
    req = request("polaris", "debug", walltime="00:10:00")
    packing = pack(models, costs, req)
    check_invariants(packing, models, costs, req)
    el = packing.element_of_unit
    for m in ("m0", "m1"):
        ix = np.flatnonzero(models == m)
        assert (np.diff(el[ix]) >= 0).all()                  # in order
        mine = [e.index for e in packing.elements if e.model == m]
        for i in mine[:-1]:                                  # full: the next unit would not have fitted
            last = ix[el[ix] == i][-1]
            nxt = ix[np.searchsorted(ix, last) + 1]
            assert costs[el == i].sum() + costs[nxt] > packing.capacity >= costs[el == i].sum()
        # so every element but the last holds more than capacity - one unit: few elements
        assert len(mine) <= 1 + math.floor(costs[ix].sum() / (packing.capacity - costs.max()))


def test_max_units_per_element_is_respected():
    packing = pack(*units(10), request("slurm-generic", "debug", max_units_per_element=3))
    assert [e.n_units for e in packing.elements] == [3, 2, 3, 2] or max(e.n_units for e in packing.elements) <= 3
    assert len(packing.elements) == 4


def test_tensor_parallel_must_divide_ranks():
    with pytest.raises(PackingError, match="not a multiple of tensor_parallel=8"):
        pack(*units(10), request("polaris", "debug", tensor_parallel=8))
    packing = pack(*units(10), request("polaris", "debug", tensor_parallel=8, nodes=2))
    assert packing.groups == 1


def test_resubmit_subsets_split_like_fresh_arrays():
    arrays, throttle, _ = split_arrays([3, 7, 9], request("polaris", "prod"), 10)
    assert arrays == ((3, 7, 9),) and throttle == 3
    with pytest.raises(PackingError, match="more than the 100 jobs"):
        split_arrays(list(range(101)), request("polaris", "prod"), 10)


def test_local_runs_without_a_queue():
    packing = pack(*units(20), request("local", None, ranks=2, max_units_per_element=5, array_limit=2))
    assert packing.queue is None and (packing.nodes, packing.ranks_per_node) == (1, 2)
    assert len(packing.elements) == 4 and packing.throttle == 2


def test_every_element_has_its_own_index():
    """Element i of the packing is `elements[i]` and its units are those with element_of_unit == i (a model cut
    into several elements once gave them all the index of its first)."""
    models, costs = units(20, models=2)
    packing = pack(models, costs, request("local", None, max_units_per_element=3))
    assert [e.index for e in packing.elements] == list(range(len(packing.elements))) == list(range(8))
    assert [e.n_units for e in packing.elements] == np.bincount(packing.element_of_unit).tolist()
