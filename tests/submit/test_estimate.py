"""Time to results (submit/estimate.py): the arithmetic, unit by unit, and the 81-element debug case of issue 25
as `submit --dry-run` prints it for a PBS (Polaris) and a Slurm (Perlmutter) profile, model load included."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers.cli import cli, write_spec
from lmsweep.console import hms
from lmsweep.jobs.plan import prompt_token_estimate, unit_cost
from lmsweep.submit import estimate as est
from lmsweep.submit.systems import load_system


def packing(n: int, work: float, *, groups: int = 4, units: int = 4, throttle: int | None = 1, nodes: int = 1,
            walltime: str = "00:30:00", queue: str = "debug", model: str = "m", arrays=None):
    """What estimate() reads of a submit/packing.Packing: n elements of `work` seconds of one model copy."""
    elements = [SimpleNamespace(model=model, est_seconds=work * groups, n_units=units) for _ in range(n)]
    return SimpleNamespace(elements=elements, groups=groups, throttle=throttle, nodes=nodes, walltime=walltime,
                           queue=queue, arrays=arrays or (tuple(range(n)),))


def test_makespan_starts_tasks_in_order_as_slots_free():
    assert est.makespan([10.0] * 5, 2) == 30.0
    assert est.makespan([5.0, 1.0, 1.0, 1.0], 2) == 5.0
    assert est.makespan([1.0, 1.0, 1.0, 5.0], 2) == 6.0
    assert est.makespan([3.0, 4.0], 10) == 4.0 and est.makespan([], 3) == 0.0


def test_concurrency_is_the_smallest_limit():
    debug = load_system("polaris").queue("debug")
    prod = load_system("polaris").queue("prod")
    assert est.concurrency(81, 1, debug) == 1
    assert est.concurrency(81, 10, prod) == 10 and est.concurrency(9, 10, prod) == 9
    assert est.concurrency(81, None, load_system("perlmutter").queue("debug")) == 2   # the QOS's run limit
    assert est.concurrency(5, None, None) == 5 and est.concurrency(5, None, None, one_machine=True) == 1


def test_the_81_element_debug_case_runs_one_at_a_time_with_load_included():
    """Issue 25: 81 one-node elements on Polaris debug (%1), each 21:20 of work plus a 5.8 s load."""
    loads = {"m": est.LoadTime(5.8, "measured")}
    e = est.estimate(packing(81, 1280.0), loads, queue=load_system("polaris").queue("debug"))
    assert (e.elements, e.concurrency, e.serial, e.over_walltime) == (81, 1, True, False)
    assert e.node_hours == pytest.approx(81 * 1 * 0.5)                        # 40.5, the figure
    assert e.longest_s == pytest.approx(1280.0 + 5.8)
    assert e.wall_s == pytest.approx(81 * (1280.0 + 5.8))                     # 104,149.8 s: 28.9 h
    prod = est.estimate(packing(9, 1280.0, groups=40, units=40, throttle=10, nodes=10, queue="prod"), loads,
                        queue=load_system("polaris").queue("prod"))
    assert prod.wall_s == pytest.approx(1285.8) and prod.node_hours == pytest.approx(45.0)
    lines = est.describe(e, [prod], [], loads)
    assert "recommended: queue prod (~0:21:26 instead of ~1d 4:55:50; --queue prod)" in lines
    assert any(x.startswith("warning: queue debug runs these 81 elements one at a time (%1): ~1d 4:55:50")
               for x in lines)


def test_split_arrays_run_one_after_another():
    p = packing(6, 100.0, throttle=3, arrays=((0, 1, 2, 3), (4, 5)))
    e = est.estimate(p, {"m": est.LoadTime(0.0, "x")})
    assert e.wall_s == pytest.approx(200.0 + 100.0)     # array 0: 4 tasks on 3 slots; array 1 after it


def test_a_copy_without_units_does_not_speed_an_element_up():
    """4 units on 40 copies: each copy takes at most one unit, so the element lasts one unit's time."""
    p = packing(1, 0.0, groups=40, units=4)
    p.elements[0].est_seconds = 4 * 100.0
    assert est.estimate(p, {}).longest_s == pytest.approx(100.0)


def test_an_element_past_its_walltime_is_warned_about_and_not_recommended():
    loads = {"m": est.LoadTime(400.0, "estimated")}
    e = est.estimate(packing(2, 1500.0, throttle=None), loads)         # 1500 + 400 > 1800
    assert e.over_walltime
    lines = est.describe(e, [], [], loads)
    assert lines[-1].startswith("warning: the longest element is estimated at 0:31:40 (model load 0:06:40 + work), "
                                "past its walltime 0:30:00")


def test_a_small_gain_recommends_nothing():
    loads = {"m": est.LoadTime(5.0, "x")}
    a = est.estimate(packing(1, 100.0, queue="a"), loads)
    b = est.estimate(packing(1, 80.0, queue="b"), loads)        # 20 s sooner: within the estimate's noise
    assert est.recommend(a, [b]) is None
    slow = est.estimate(packing(1, 1440.0, queue="batch"), loads)
    debug = est.estimate(packing(1, 1280.0, queue="debug"), loads)    # 2:40 sooner, but only 11%
    assert est.recommend(slow, [debug]) is None
    quick = est.estimate(packing(1, 1000.0, queue="quick"), loads)    # 30% sooner
    assert est.recommend(slow, [debug, quick]) == quick


def test_load_time_from_size_and_engine():
    assert est.estimated_load(16_000_000_000, "vllm").seconds == pytest.approx(60.0 + 80.0)
    hf = est.estimated_load(514_000_000, "hf")
    assert hf.seconds == pytest.approx(5.0 + 2.57) and "0.51 GB read at 200 MB/s" in hf.source
    assert est.estimated_load(None, "hf").source == "estimated: hf start 5 s; model size unknown here"


def test_measured_load_comes_from_the_sidecars_and_is_named(tmp_path):
    history = tmp_path / "meta" / "history"
    history.mkdir(parents=True)
    for i, seconds in enumerate([4.0, 6.0, 5.0]):
        (history / f"element-{i:05d}-rank-0000-1.json").write_text(json.dumps(
            {"model": "tiny", "accelerator": "cpu", "timers": {"load_s": seconds}}))
    (history / "element-00009-rank-0000-1.json").write_text(json.dumps(
        {"model": "tiny", "accelerator": "cuda", "timers": {"load_s": 99.0}}))      # another kind of device
    measured = est.measured_loads(est.read_history(tmp_path), accelerated=False)
    assert measured == {"tiny": (5.0, 3)}
    loads = est.model_loads({"tiny": {"path": None}, "other": {"path": str(tmp_path)}}, "hf", measured)
    assert loads["tiny"] == est.LoadTime(5.0, "measured: median of 3 rank load(s) of this experiment")
    assert loads["other"].source.startswith("estimated: hf start 5 s + ")


# ---- the CLI: what submit --dry-run prints ----------------------------------------------------------------

PROMPT = "Once upon a time"


def spec(tmp: Path, model: Path, seeds: int) -> Path:
    return write_spec(tmp / "big.yaml", f"""\
name: big
output_dir: {tmp / "runs"}
models:
  - {{alias: tiny, source: {model}}}
prompts:
  - {{name: p, items: ["{PROMPT}"]}}
task: generate
decoding: {{max_new_tokens: 64, temperature: 0.7, seeds: {list(range(seeds))}}}
execution:
  walltime: "00:30:00"
  tokens_per_second: 0.05
""")


def per_unit() -> float:
    """One unit's work on one model copy: the plan's cost model (prompt tokens / 8 + new tokens) at 0.05 tokens/s."""
    return unit_cost(prompt_token_estimate(PROMPT), 64) / 0.05


def load(model: Path) -> float:
    """The model's load, estimated from its size on disk: the hf engine's 5 s start + the read at 200 MB/s."""
    return 5.0 + est.size_on_disk(model) / 200e6


def dur(seconds: float) -> str:
    s = int(round(seconds))
    return "~" + (f"{s // 86400}d " if s >= 86400 else "") + hms(s % 86400)


def test_dry_run_prints_the_81_element_debug_case_on_polaris(tmp_path, tiny_llama):
    """324 units, each 1280 s of one copy's work. Debug: 81 one-node elements (4 copies, 4 units each: 1280 s)
    one at a time. Each element's capacity is 80% x 1800 s x 0.05 tokens/s per copy: preemptable (20 queued)
    needs 4-node elements of 18 units (1440 s), 18 of them at once; prod 10-node ones of 45, 8 of them."""
    proc = cli("submit", str(spec(tmp_path, tiny_llama, 324)), "--system", "polaris", "--queue", "debug",
               "--account", "p", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out, unit, first = proc.stdout, per_unit(), load(tiny_llama)
    assert unit == 1280.0
    serial, wide = 81 * (unit + first), 18 * unit / 16 + first
    assert (f"debug (chosen): 1 array(s), 81 element(s) x 1 node(s), at most 40.5 node-hours; one at a time: "
            f"{dur(serial)}") in out
    assert (f"preemptable: 1 array(s), 18 element(s) x 4 node(s), at most 36.0 node-hours; 18 at once: "
            f"{dur(wide)}") in out
    assert f"prod: 1 array(s), 8 element(s) x 10 node(s), at most 40.0 node-hours; 8 at once: {dur(wide)}" in out
    # as soon as prod and fewer node-hours: preemptable
    assert f"recommended: queue preemptable ({dur(wide)} instead of {dur(serial)}; --queue preemptable" in out
    assert f"warning: queue debug runs these 81 elements one at a time (%1): {dur(serial)} of wall clock" in out
    assert f"model tiny: load {hms(first)} per element (estimated: hf start 5 s + " in out
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_time_to_results_on_a_slurm_profile(tmp_path, tiny_llama):
    """Perlmutter's debug QOS: 5 jobs queued and 2 running per user. 36 units do not fit 9 one-node elements
    into 5 queued jobs, so they pack into 4 two-node elements of 9 units (1440 s), 2 at a time: 2 rounds.
    Regular has no such limits: 9 one-node elements of 4 units (1280 s), all at once."""
    proc = cli("submit", str(spec(tmp_path, tiny_llama, 36)), "--system", "perlmutter", "--queue", "debug",
               "--dry-run")
    assert proc.returncode == 0, proc.stderr
    unit, first = per_unit(), load(tiny_llama)
    debug, regular = 2 * (9 * unit / 8 + first), unit + first
    assert (f"debug (chosen): 1 array(s), 4 element(s) x 2 node(s), at most 4.0 node-hours; 2 at once: "
            f"{dur(debug)}") in proc.stdout
    assert (f"regular: 1 array(s), 9 element(s) x 1 node(s), at most 4.5 node-hours; 9 at once: {dur(regular)}"
            in proc.stdout)
    assert f"recommended: queue regular ({dur(regular)} instead of {dur(debug)}; --queue regular)" in proc.stdout
