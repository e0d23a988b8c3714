"""Compare two experiments unit by unit: what changed, by how much, and whether it is within tolerance.

The core (`compare_frames`) is pure: two DataFrames in, a `Comparison` out. `compare` reads the two
experiment directories; `to_markdown`/`to_html` render. Rows are joined on `unit_id` when both sides
ran the same models, or on `unit_key` (the unit minus its model) when a model changed, so a re-saved
checkpoint or a second model is compared prompt for prompt instead of showing up as all-new units.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lmsweep.core.task_registry import get_task
from lmsweep.errors import UsageError
from lmsweep.jobs.gates import Gates
from lmsweep.jobs.spec import Tolerances
from lmsweep.results import gates as gate_rules
from lmsweep.results.schema import row_key

if TYPE_CHECKING:
    from lmsweep.core.task import Task

# Columns the comparison reads, when the task's schema has them (so big task columns stay on disk).
BASE_COLUMNS = ["unit_id", "unit_key", "model", "prompt_set", "prompt_id", "decoding", "do_sample",
                "batch_size", "batch_latency_s", "backend", "host", "model_fingerprint", "spec_hash", "reproducible"]
TIMING = {"batch_latency_s", "tokens_per_s", "finished_at", "batch_size", "load_seconds"}


@dataclass
class SideInfo:
    """Where one side of a comparison came from: enough to reproduce or blame it."""

    path: str
    experiment: str
    spec_hash: str
    task: str
    models: dict[str, dict]          # alias → source, fingerprint, dtype, revision
    backend: str
    planned: int
    done: int
    failed: int
    hosts: list[str] = field(default_factory=list)
    packages: dict[str, list[str]] = field(default_factory=dict)   # package → distinct versions seen
    accelerators: list[str] = field(default_factory=list)


@dataclass
class Check:
    name: str
    value: float | None
    limit: float | None
    op: str                  # ">=" or "<="
    detail: str = ""

    @property
    def active(self) -> bool:
        return self.limit is not None and self.value is not None

    @property
    def passed(self) -> bool:
        if not self.active:
            return True
        return self.value >= self.limit if self.op == ">=" else self.value <= self.limit


@dataclass
class Comparison:
    baseline: SideInfo
    current: SideInfo
    task: str
    by: str                              # "id" | "key"
    reason: str                          # why that join
    matched: int                         # rows present on both sides
    checks: list[Check]
    unmatched: pd.DataFrame              # side, unit_id, model, prompt_id, decoding, why
    diffs: pd.DataFrame                  # flagged rows with task-specific detail
    info_diffs: pd.DataFrame             # differences that no tolerance covers (e.g. sampled text)
    perf: pd.DataFrame                   # per model pair: latency and throughput, both sides and ratio
    tolerances: Tolerances
    statistics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=gate_rules.COLUMNS))
    gates: Gates = field(default_factory=Gates)   # the regression gates' settings (gating if regression.gates)
    samples: list = field(default_factory=list)   # the task's Samples behind `statistics` (for the report's plots)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]


# ---- reading -------------------------------------------------------------------------------------------

def side_info(exp: Path) -> SideInfo:
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import status

    plan = read_plan(exp)
    st = status(exp)
    models = {alias: {k: m.get(k) for k in ("source", "fingerprint", "dtype", "revision")}
              for alias, m in plan.meta["models"].items()}
    hosts, packages, accelerators = set(), {}, set()
    for meta in sidecars(exp):
        hosts.add(str(meta.get("host")))
        accelerators.add(str(meta.get("accelerator")))
        for name, version in (meta.get("packages") or {}).items():
            packages.setdefault(name, set()).add(str(version))
    return SideInfo(path=str(exp), experiment=plan.experiment, spec_hash=plan.meta["spec_hash"],
                    task=plan.meta["task"]["type"], models=models,
                    backend=plan.meta["spec"]["execution"]["backend"], planned=st.planned, done=st.done,
                    failed=st.failed, hosts=sorted(hosts),
                    packages={k: sorted(v) for k, v in sorted(packages.items())}, accelerators=sorted(accelerators))


def sidecars(exp: Path) -> list[dict]:
    """The workers' metadata files (package versions, host, load time), one per element and rank."""
    out = []
    for f in sorted((Path(exp) / "meta").glob("element-*-rank-*.json")):
        try:
            out.append(json.loads(f.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def read_rows(exp: Path, task: str) -> pd.DataFrame:
    from lmsweep.results.load import load
    from lmsweep.results.schema import schema_for

    names = schema_for(task).names
    own = get_task(task).compare_columns
    wanted = BASE_COLUMNS + (list(own) if own is not None else [c for c in names if c not in BASE_COLUMNS])
    for extra in ("correct", "predicted_label", "label"):
        if extra in names:
            wanted.append(extra)
    return load(exp, columns=[c for c in dict.fromkeys(wanted) if c in names])


def plan_units(exp: Path) -> pd.DataFrame:
    from lmsweep.jobs.plan import read_plan

    return read_plan(exp).units(columns=["unit_id", "unit_key", "model"]).to_pandas()


def compare(baseline: str | Path, current: str | Path, *, by: str = "auto",
            tolerances: Tolerances | None = None, gates: Gates | None = None) -> Comparison:
    """Read two experiment directories and compare them (UsageError if they cannot be compared)."""
    baseline, current = Path(baseline), Path(current)
    base, cur = side_info(baseline), side_info(current)
    if base.task != cur.task:
        raise UsageError(f"cannot compare a {base.task} experiment with a {cur.task} experiment",
                        file=str(current))
    return compare_frames(read_rows(baseline, base.task), read_rows(current, cur.task), base, cur,
                          by=by, tolerances=tolerances or Tolerances(), gates=gates,
                          base_plan=plan_units(baseline), cur_plan=plan_units(current))


# ---- the pure core -------------------------------------------------------------------------------------

def choose_join(base: SideInfo, cur: SideInfo, by: str) -> tuple[str, str]:
    """(join, reason). unit_id covers the model's weights, so a changed model needs the unit_key."""
    changed = []
    for alias in sorted(set(base.models) | set(cur.models)):
        a, b = base.models.get(alias), cur.models.get(alias)
        if a != b:
            if a is None or b is None:
                changed.append(f"model {alias} only in {'current' if a is None else 'baseline'}")
            else:
                what = [f"{k} {a[k]} → {b[k]}" for k in a if a[k] != b[k]]
                changed.append(f"model {alias}: " + ", ".join(what))
    backend = f"; backend {base.backend} → {cur.backend} (not part of unit ids)" \
        if base.backend != cur.backend else ""
    if by == "id":
        return "id", "joined on unit_id (requested)" + backend
    if by == "key":
        return "key", "joined on unit_key, models paired (requested)" + backend
    if not changed:
        return "id", "same models on both sides: joined on unit_id" + backend
    return "key", "; ".join(changed) + ": joined on unit_key, models paired" + backend


def pair_models(base_models: list[str], cur_models: list[str]) -> dict[str, str]:
    """Map current aliases to baseline aliases for a unit_key join."""
    if set(base_models) == set(cur_models):
        return {m: m for m in cur_models}
    if len(base_models) == 1 and len(cur_models) == 1:
        return {cur_models[0]: base_models[0]}
    raise UsageError(f"cannot pair models for a unit_key join: baseline has {sorted(base_models)}, current has "
                    f"{sorted(cur_models)}; use the same aliases on both sides or compare one model each",
                    field="--by")


def compare_frames(base_df: pd.DataFrame, cur_df: pd.DataFrame, base: SideInfo, cur: SideInfo, *,
                   by: str = "auto", tolerances: Tolerances | None = None, gates: Gates | None = None,
                   base_plan: pd.DataFrame | None = None, cur_plan: pd.DataFrame | None = None) -> Comparison:
    """`gates` (regression.gates) makes the statistical gates fail the comparison; without them the same
    statistics are computed at the default settings and reported only."""
    tol = tolerances or Tolerances()
    task = base.task
    join, reason = choose_join(base, cur, by)
    base_df, cur_df = base_df.copy(), cur_df.copy()
    if join == "id":
        pairs = {m: m for m in cur.models}
        base_df["_unit"], cur_df["_unit"] = base_df["unit_id"], cur_df["unit_id"]
    else:
        pairs = pair_models(sorted(base.models), sorted(cur.models))
        base_df["_unit"] = base_df["model"] + "/" + base_df["unit_key"]
        cur_df["_unit"] = cur_df["model"].map(pairs) + "/" + cur_df["unit_key"]
    row = ["_unit"] + [k for k in row_key(task) if k != "unit_id"]
    merged = base_df.merge(cur_df, on=row, how="outer", suffixes=("_b", "_c"), indicator=True)
    both = merged[merged["_merge"] == "both"].reset_index(drop=True)
    unmatched = _unmatched(merged, join, pairs, base_plan, cur_plan)

    checks: list[Check] = []
    own = get_task(task).compare(both, tol, checks)                 # the task's own rule, if it has one
    diffs, info = own if own is not None else compare_outputs(both, get_task(task), tol, checks)
    expected = expectations(both, base, cur)
    diffs, info = with_expectation(diffs, expected), with_expectation(info, expected)
    broken = [frame["expected"].astype(str).str.startswith("no").sum() for frame in (diffs, info)
              if "expected" in frame]
    if broken:
        n = int(sum(broken))
        checks.append(Check("differences the engine promised not to make", n, None, "<=",
                            "rows differing although both sides ran the same software and machine and the engine "
                            "promises them bit-identical (column `expected`); reported only"))
    checks.append(Check("units on one side only", len(unmatched), tol.max_unmatched, "<=",
                        _unmatched_detail(unmatched)))
    perf = _perf(base_df, cur_df, pairs)
    _perf_checks(perf, tol, checks)
    settings = gates or Gates()
    samples, table = _statistics(base_df, cur_df, both, pairs, task, settings, gates is not None, checks)
    return Comparison(baseline=base, current=cur, task=task, by=join, reason=reason, matched=len(both),
                      checks=checks, unmatched=unmatched, diffs=diffs, info_diffs=info, perf=perf, tolerances=tol,
                      statistics=table, gates=settings, samples=samples)


def expectations(both: pd.DataFrame, base: SideInfo, cur: SideInfo) -> dict[str, tuple[str, str]]:
    """Per current unit_id: (whether a difference of its tokens is expected, whether a difference of its float
    values alone is), from the rows' `reproducible` promise (lmsweep.core.engine.PROMISES) and what else
    differs between the sides. A promise holds for the same model on the same machine and software only, so
    another model, host, accelerator or package version expects differences. "Same batch" is judged by the
    batch size."""
    if "reproducible_b" not in both or both.empty:
        return {}
    other = [what for what, b, c in (("models", base.models, cur.models), ("software", base.packages, cur.packages),
                                     ("host", base.hosts, cur.hosts),
                                     ("accelerator", base.accelerators, cur.accelerators)) if b != c]
    out = {}
    for uid, pb, pc, nb, nc in zip(both["unit_id_c"], both["reproducible_b"], both["reproducible_c"],
                                   both["batch_size_b"], both["batch_size_c"]):
        if other:
            both_ways = f"yes: other {' and '.join(other)}"
            out[uid] = (both_ways, both_ways)
        elif not (isinstance(pb, str) and isinstance(pc, str)):
            unknown = "unknown: a side written before rows recorded their promise (schema 1)"
            out[uid] = (unknown, unknown)
        elif "none" in (pb, pc):
            no_promise = "yes: the engine promises no bit-for-bit rerun here"
            out[uid] = (no_promise, no_promise)
        elif nb == nc:
            broken = f"no: promised bit-identical in the same batch (batch size {nb} both)"
            out[uid] = (broken, broken)
        elif pb == pc == "any_batch":
            out[uid] = (f"no: the same tokens are promised at any batch size ({nb} → {nc})",
                        f"yes: float rounding at batch size {nb} → {nc}")
        else:
            beyond = f"yes: batch size {nb} → {nc}, beyond the promise ({pb.replace('_', ' ')})"
            out[uid] = (beyond, beyond)
    return out


def with_expectation(frame: pd.DataFrame, expected: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """`frame` with an `expected` column, where it has rows of units. A row differs in its tokens where it
    names exact columns (`differs_in`, compare_outputs) or a first differing token (generate); a task's own
    frame without either is read as a token difference, the stricter reading."""
    if not expected or "unit_id" not in frame:
        return frame
    if "differs_in" in frame:
        tokens = frame["differs_in"].astype(str) != ""
    elif "first_diff_token" in frame:
        tokens = frame["first_diff_token"].notna()
    else:
        tokens = pd.Series(True, index=frame.index)
    column = [expected[u][0 if t else 1] if u in expected else "unknown"
              for u, t in zip(frame["unit_id"], tokens)]
    return frame.assign(expected=column)


def _statistics(base_df: pd.DataFrame, cur_df: pd.DataFrame, both: pd.DataFrame, pairs: dict[str, str],
                task_name: str, settings: Gates, gating: bool, checks: list[Check]) -> tuple[list, pd.DataFrame]:
    """The task's samples (`Task.statistics`; each side's rows with `model_pair`, the baseline alias) judged by
    results.gates; one Check counting regressions, failing on any when gating, off otherwise."""
    task = get_task(task_name)
    samples = task.statistics(base_df.assign(model_pair=base_df["model"]),
                              cur_df.assign(model_pair=cur_df["model"].map(pairs).fillna(cur_df["model"])), both)
    if not samples:
        return [], pd.DataFrame(columns=gate_rules.COLUMNS)
    table = gate_rules.evaluate(samples, {m.name: m for m in task.metrics}, settings)
    regressions = table[table["verdict"] == gate_rules.REGRESSION]
    detail = gate_rules.summary(table, settings, gating)
    if not regressions.empty:
        detail = "; ".join(f"{r.metric} at {r.group}: {r.difference:+.4g}" for r in regressions.itertuples()) + \
            "; " + detail
    checks.append(Check("significant shifts beyond threshold", len(regressions), 0 if gating else None, "<=", detail))
    return samples, table


def _unmatched(merged: pd.DataFrame, join: str, pairs: dict[str, str], base_plan: pd.DataFrame | None,
               cur_plan: pd.DataFrame | None) -> pd.DataFrame:
    """Rows on one side only, with why: not in the other side's plan, or planned there but not done."""
    cols = ["side", "unit_id", "model", "prompt_id", "decoding", "why"]
    rows = []
    for side, flag, sfx, other, other_plan, alias in (
            ("baseline only", "left_only", "_b", "current", cur_plan, pairs),
            ("current only", "right_only", "_c", "baseline", base_plan, None)):
        part = merged[merged["_merge"] == flag].drop_duplicates("_unit")
        if part.empty:
            continue
        planned = _identities(other_plan, join, alias)
        for d in part.to_dict("records"):
            if planned is None:
                why = ""
            elif d["_unit"] in planned:
                why = f"planned in {other} but not done (failed or missing)"
            else:
                why = f"not in the {other} plan (different decoding, prompt, task or model)"
            rows.append({"side": side, "unit_id": d["unit_id" + sfx], "model": d["model" + sfx],
                         "prompt_id": d["prompt_id" + sfx], "decoding": d["decoding" + sfx], "why": why})
    return pd.DataFrame(rows, columns=cols)


def _identities(plan: pd.DataFrame | None, join: str, alias: dict[str, str] | None) -> set[str] | None:
    """A plan's units as join identities (current aliases mapped to their baseline partners)."""
    if plan is None:
        return None
    if join == "id":
        return set(plan["unit_id"])
    models = plan["model"].map(alias) if alias is not None else plan["model"]
    return {f"{m}/{k}" for m, k in zip(models, plan["unit_key"])}


def _unmatched_detail(unmatched: pd.DataFrame) -> str:
    if unmatched.empty:
        return ""
    counts = unmatched.groupby(["side", "decoding"], dropna=False).size()
    return "; ".join(f"{side}: {n} × {dec}" for (side, dec), n in counts.items())


def compare_outputs(both: pd.DataFrame, task: Task, tol: Tolerances, checks: list[Check],
                    skip: frozenset[str] | set[str] = frozenset()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The compare rule of tasks without their own (`Task.compare`), and a part of others': the task's
    exact columns must be equal; float columns holding probabilities (attention weights, token scores) are
    judged by max_prob_delta, other floats only reported. Columns in `skip` are left to the caller.
    Rows are shown with their row key (e.g. layer and head)."""
    exact, numeric = [], []
    for name, typ in task.columns:
        if name in TIMING or f"{name}_b" not in both.columns or name in skip:
            continue
        if both[f"{name}_b"].isna().all() and both[f"{name}_c"].isna().all():
            continue                       # a column this configuration does not fill (e.g. pipeline-only)
        base_type = typ
        while hasattr(base_type, "value_type"):
            base_type = base_type.value_type
        (numeric if str(base_type).startswith(("float", "double", "halffloat")) else exact).append(name)
    probs = [c for c in numeric if c in task.probability_columns]
    cols = ["unit_id", "model", "prompt_id", "differs_in", "max_abs_dp", "max_abs_delta"]
    if both.empty:
        return pd.DataFrame(columns=cols), pd.DataFrame(columns=cols)
    differs, dps, deltas = [], [], []
    for r in both.to_dict("records"):
        differs.append(", ".join(c for c in exact if not _equal(r[f"{c}_b"], r[f"{c}_c"])))
        dps.append(max([_max_abs(r[f"{c}_b"], r[f"{c}_c"]) for c in probs], default=0.0))
        deltas.append(max([_max_abs(r[f"{c}_b"], r[f"{c}_c"]) for c in numeric if c not in probs], default=0.0))
    key = [k for k in task.row_key if k != "unit_id"]
    out = pd.DataFrame({"unit_id": both["unit_id_c"], "model": both["model_c"], "prompt_id": both["prompt_id_c"],
                        **{k: both[k] for k in key},
                        "differs_in": differs, "max_abs_dp": dps, "max_abs_delta": deltas})
    same = (out["differs_in"] == "").to_numpy()
    if exact:
        checks.append(Check(f"{task.name} outputs identical", float(same.mean()), tol.min_exact_match, ">=",
                            f"{int(same.sum())}/{len(out)} rows equal in {', '.join(exact)}"))
    bad = ~same
    if probs:
        checks.append(Check(f"{task.name} max |Δp|", float(out["max_abs_dp"].max()), tol.max_prob_delta, "<=",
                            f"over {', '.join(probs)}"))
        if tol.max_prob_delta is not None:
            bad |= (out["max_abs_dp"] > tol.max_prob_delta).to_numpy()
    if len(numeric) > len(probs):
        checks.append(Check(f"{task.name} max |Δ|", float(out["max_abs_delta"].max()), None, "<=",
                            f"over {', '.join(c for c in numeric if c not in probs)}; reported only"))
    changed = (out["max_abs_dp"] > 0) | (out["max_abs_delta"] > 0)
    return out[bad].reset_index(drop=True), out[~bad & changed].reset_index(drop=True)


def _equal(a, b) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return a is not None and b is not None and np.array_equal(np.asarray(a, dtype=object),
                                                                   np.asarray(b, dtype=object))
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) == \
            (b is None or (isinstance(b, float) and math.isnan(b)))
    return bool(a == b)


def _max_abs(a, b) -> float:
    a_none, b_none = _missing(a), _missing(b)
    if a_none or b_none:
        return 0.0 if a_none and b_none else math.inf
    try:
        x = np.asarray(_dense(a), dtype=float)
        y = np.asarray(_dense(b), dtype=float)
        return float(np.nanmax(np.abs(x - y))) if x.shape == y.shape and x.size else (0.0 if x.shape == y.shape
                                                                                      else math.inf)
    except (TypeError, ValueError):
        return math.inf


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _dense(v):
    if isinstance(v, np.ndarray) and v.dtype == object:
        return [_dense(x) for x in v]
    return v


def _perf(base_df: pd.DataFrame, cur_df: pd.DataFrame, pairs: dict[str, str]) -> pd.DataFrame:
    """Per model pair: median per-unit latency (batch wall time / batch size) and median tokens/s."""
    rows = []
    for cur_alias, base_alias in sorted(pairs.items()):
        b = base_df[base_df["model"] == base_alias].drop_duplicates("unit_id")
        c = cur_df[cur_df["model"] == cur_alias].drop_duplicates("unit_id")
        if b.empty or c.empty:
            continue
        lat_b = float((b["batch_latency_s"] / b["batch_size"]).median())
        lat_c = float((c["batch_latency_s"] / c["batch_size"]).median())
        row = {"model": cur_alias if cur_alias == base_alias else f"{base_alias} → {cur_alias}",
               "baseline_latency_s": lat_b, "current_latency_s": lat_c,
               "latency_ratio": lat_c / lat_b if lat_b > 0 else None}
        if "tokens_per_s" in b.columns:
            tps_b, tps_c = float(b["tokens_per_s"].median()), float(c["tokens_per_s"].median())
            row |= {"baseline_tokens_per_s": tps_b, "current_tokens_per_s": tps_c,
                    "throughput_ratio": tps_c / tps_b if tps_b > 0 else None}
        rows.append(row)
    return pd.DataFrame(rows)


def _perf_checks(perf: pd.DataFrame, tol: Tolerances, checks: list[Check]) -> None:
    if perf.empty:
        return
    lat = perf["latency_ratio"].dropna()
    if not lat.empty:
        worst = perf.loc[lat.idxmax()]
        checks.append(Check("latency ratio (current / baseline)", float(lat.max()), tol.max_latency_ratio, "<=",
                            f"worst: {worst['model']}; median per-unit latency "
                            f"{worst['baseline_latency_s']:.4g}s → {worst['current_latency_s']:.4g}s"))
    if "throughput_ratio" in perf.columns and not perf["throughput_ratio"].dropna().empty:
        tp = perf["throughput_ratio"].dropna()
        worst = perf.loc[tp.idxmin()]
        checks.append(Check("throughput ratio (current / baseline)", float(tp.min()), tol.min_throughput_ratio,
                            ">=", f"worst: {worst['model']}; median tokens/s "
                            f"{worst['baseline_tokens_per_s']:.4g} → {worst['current_tokens_per_s']:.4g}"))


# ---- rendering ---------------------------------------------------------------------------------------

MAX_LISTED = 500


def verdict(c: Comparison) -> str:
    if c.passed:
        return "PASS: within tolerance"
    return "FAIL: " + "; ".join(f"{k.name} {_fmt(k.value)} (limit {k.op} {_fmt(k.limit)})" for k in c.failed_checks)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def checks_frame(c: Comparison) -> pd.DataFrame:
    return pd.DataFrame([{"check": k.name, "value": _fmt(k.value),
                          "limit": f"{k.op} {_fmt(k.limit)}" if k.limit is not None else "off",
                          "result": ("ok" if k.passed else "EXCEEDED") if k.active else "–", "detail": k.detail}
                         for k in c.checks])


def sides_frame(c: Comparison) -> pd.DataFrame:
    def describe(s: SideInfo) -> dict:
        return {"path": s.path, "experiment": s.experiment, "spec hash": s.spec_hash, "backend": s.backend,
                "models": "; ".join(f"{a}: {m['source']} ({m['fingerprint']})" for a, m in s.models.items()),
                "units done": f"{s.done}/{s.planned}" + (f", {s.failed} failed" if s.failed else ""),
                "hosts": ", ".join(s.hosts) or "–", "accelerator": ", ".join(s.accelerators) or "–",
                "packages": ", ".join(f"{k} {'/'.join(v)}" for k, v in s.packages.items()) or "–"}
    b, cu = describe(c.baseline), describe(c.current)
    return pd.DataFrame({"": list(b), "baseline": list(b.values()), "current": list(cu.values())})


def sections(c: Comparison) -> list[tuple[str, pd.DataFrame, str]]:
    """(title, table, note) in report order; shared by the Markdown and HTML renderings."""
    out = [("Runs", sides_frame(c), c.reason), ("Checks", checks_frame(c), f"{c.matched} rows matched")]
    if not c.statistics.empty:
        out.append(("Statistics", gate_rules.for_report(c.statistics), _statistics_note(c)))
    task = get_task(c.task)
    out.append((task.diffs_title, c.diffs, ""))
    if not c.unmatched.empty:
        out.append(("Units on one side only", c.unmatched, ""))
    if not c.info_diffs.empty:
        out.append(("Other differences (informational)", c.info_diffs, task.info_note))
    if not c.perf.empty:
        out.append(("Latency and throughput", c.perf, "medians; timings on shared machines are noisy"))
    return out


def _statistics_note(c: Comparison) -> str:
    g = c.gates
    return (f"difference = current − baseline with its 95% bootstrap CI ({g.resamples} resamples, seed {g.seed}); "
            f"p adjusted by {g.correction} over the {len(c.statistics)} rows; REGRESSION = p_adjusted < {g.alpha:g} "
            f"and beyond the threshold; mde = smallest shift this sample finds at power {g.power:g} (inf: none)"
            + ("" if any(k.name == "significant shifts beyond threshold" and k.limit is not None for k in c.checks)
               else "; reported only: add regression.gates to the spec to gate on these"))


def md_table(df: pd.DataFrame, limit: int = MAX_LISTED) -> str:
    if df.empty:
        return "_none_\n"
    shown = df.head(limit)

    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(str(c) for c in shown.columns) + " |",
             "|" + "|".join("---" for _ in shown.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if len(df) > limit:
        lines.append(f"\n… and {len(df) - limit} more (all in the CSV beside this report)")
    return "\n".join(lines) + "\n"


def to_markdown(c: Comparison) -> str:
    parts = [f"# Compare: {c.current.experiment} vs baseline {c.baseline.experiment}\n",
             f"**{verdict(c)}**\n"]
    for title, table, note in sections(c):
        parts.append(f"## {title} ({len(table)})\n" if title not in ("Runs", "Checks") else f"## {title}\n")
        if note:
            parts.append(f"{note}\n")
        parts.append(md_table(table))
    return "\n".join(parts)


def to_html(c: Comparison) -> str:
    from lmsweep.results.report import html_table, page

    body = [f"<p class='verdict {'pass' if c.passed else 'fail'}'>{_esc(verdict(c))}</p>"]
    for title, table, note in sections(c):
        count = "" if title in ("Runs", "Checks") else f" ({len(table)})"
        body.append(f"<h2>{_esc(title)}{count}</h2>")
        if note:
            body.append(f"<p class='note'>{_esc(note)}</p>")
        body.append(html_table(table, limit=MAX_LISTED))
        if title == "Statistics":
            body += gate_rules.overlays(c.samples)
    return page(f"Compare: {c.current.experiment} vs {c.baseline.experiment}", "\n".join(body))


def _esc(s: str) -> str:
    import html

    return html.escape(str(s))


def flagged_frame(c: Comparison) -> pd.DataFrame:
    """Every flagged unit, for the CSV beside the report (the Markdown lists at most MAX_LISTED)."""
    parts = []
    if not c.diffs.empty:
        parts.append(c.diffs.assign(kind="differs"))
    if not c.unmatched.empty:
        parts.append(c.unmatched.assign(kind=c.unmatched["side"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["unit_id", "kind"])


def write_reports(c: Comparison, out_dir: Path, stem: str = "compare") -> dict[str, Path]:
    """compare.md, compare.html and compare-units.csv (every flagged unit) in out_dir, atomically."""
    from lmsweep.results.writer import write_text_atomic

    paths = {"markdown": out_dir / f"{stem}.md", "html": out_dir / f"{stem}.html",
             "csv": out_dir / f"{stem}-units.csv"}
    texts = {"markdown": to_markdown(c), "html": to_html(c), "csv": flagged_frame(c).to_csv(index=False)}
    for kind, path in paths.items():
        write_text_atomic(path, texts[kind])
    return paths


def tolerances_from(regression: dict | None, overrides: dict[str, Any]) -> tuple[Tolerances, str]:
    """(tolerances, by) from a spec's `regression` block (as a dict) with command-line overrides on top."""
    from pydantic import ValidationError

    reg = regression or {}
    values = {**(reg.get("tolerances") or {}), **overrides}
    try:
        tol = Tolerances.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "tolerances"
        raise UsageError(f"{err['msg']}, got {err.get('input')!r}", field="--" + name.replace("_", "-")) from None
    return tol, reg.get("by") or "auto"


def gates_from(regression: dict | None) -> Gates | None:
    """The `regression.gates` block as Gates; None when the spec has none (statistics reported, not gating)."""
    from pydantic import ValidationError

    block = (regression or {}).get("gates")
    if block is None:
        return None
    try:
        return Gates.model_validate(block)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise UsageError(f"{err['msg']}, got {err.get('input')!r}", field=f"regression.gates.{where}") from None
