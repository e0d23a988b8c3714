"""`lmsweep report EXP`: one self-contained HTML page (no external files, plots inlined as PNG).

Builds from what the other results functions return (plan, status, summary, sidecars), so the page
shows exactly what `lmsweep status` and `lmsweep results --summary` print.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
     color:#1d2330;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:2px solid #d8dee9}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th{background:#2e5c8a;color:#fff;text-align:left;padding:4px 8px;white-space:nowrap}
.scroll{overflow-x:auto}
td{border-bottom:1px solid #d8dee9;padding:3px 8px;vertical-align:top;max-width:480px;overflow-wrap:anywhere}
tr:nth-child(even) td{background:#f3f6fa}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.note{color:#5b6475;font-size:13px} .verdict{font-weight:bold;padding:8px 12px;border-radius:4px}
.pass{background:#dff3e4;color:#13652b} .fail{background:#fbe1e1;color:#9b1c1c}
figure{margin:12px 0} figcaption{color:#5b6475;font-size:13px}
img.plot{max-width:100%;border:1px solid #d8dee9}
"""


# ---- HTML building blocks (also used by compare's report) ---------------------------------------------

def page(title: str, body: str) -> str:
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class='note'>made {made} by lmsweep</p>\n{body}\n</body></html>\n")


def _cell(v: Any) -> tuple[str, bool]:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–", False
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), False
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}", True
    if isinstance(v, (int, np.integer)):
        return str(v), True
    if isinstance(v, (list, tuple, np.ndarray)):
        text = ", ".join(str(x) for x in list(v)[:12]) + (" …" if len(v) > 12 else "")
        return text, False
    return str(v), False


def html_table(df: pd.DataFrame | None, limit: int = 200) -> str:
    if df is None or df.empty:
        return "<p class='note'>none</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for row in df.head(limit).itertuples(index=False):
        cells = []
        for v in row:
            text, num = _cell(v)
            cells.append(f"<td class='num'>{html.escape(text)}</td>" if num else f"<td>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f"<p class='note'>… {len(df) - limit} more rows</p>" if len(df) > limit else ""
    return (f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"</div>{more}")


def png_img(fig, alt: str) -> str:
    """A matplotlib figure as an inline base64 PNG <img>; closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f"<figure><img class='plot' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- plots ------------------------------------------------------------------------------------------

def plot_throughput(df: pd.DataFrame) -> list[str]:
    """Throughput by decoding point (per model) and by batch size, from the rows' own timings."""
    if df.empty or "batch_latency_s" not in df.columns:
        return []
    plt = pyplot()
    out = []
    units = df.drop_duplicates("unit_id").copy()
    if "tokens_per_s" in units.columns and units["tokens_per_s"].notna().any():
        metric, label = "tokens_per_s", "tokens/s (median over batches)"
    else:
        units["units_per_s"] = units["batch_size"] / units["batch_latency_s"]
        metric, label = "units_per_s", "units/s (median over batches)"
    by = "decoding" if units["decoding"].notna().any() else "variant"
    if units[by].nunique(dropna=False) <= 1:        # nothing varies: a bar per model, not one `variant 0`
        by, units = "model", units.assign(_all="all")
        table = units.pivot_table(index="model", columns="_all", values=metric, aggfunc="median")
    else:
        table = units.pivot_table(index=by, columns="model", values=metric, aggfunc="median")
    if table.dropna(how="all").empty:                # no timings (tokenize times nothing)
        return out
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.45 * len(table) + 1)))
    table.plot.barh(ax=ax, width=0.8)
    ax.set_xlabel(label)
    ax.set_ylabel(by)
    ax.set_title(f"Throughput by {by}")
    if by == "model":
        ax.get_legend().remove()
    else:
        ax.legend(title="model", fontsize=8)
    out.append(png_img(fig, f"Throughput by {by}" + ("" if by == "model" else " and model")))
    sizes = units["batch_size"].dropna().unique()
    if len(sizes) > 1:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        for key, g in units.groupby(["model"] if by == "model" else ["model", by], sort=True):
            s = g.groupby("batch_size")[metric].median()
            ax.plot(s.index, s.values, marker="o", label=" · ".join(map(str, key)))
        ax.set_xlabel("batch size (units in the batch)")
        ax.set_ylabel(label)
        ax.set_title("Throughput by batch size")
        ax.legend(fontsize=7, ncol=2)
        out.append(png_img(fig, "Throughput by batch size"))
    return out


# ---- the page ---------------------------------------------------------------------------------------

def spec_tables(meta: dict) -> str:
    from lmsweep.jobs.model_sources import model_quantization

    spec = meta["spec"]
    # quantisation: every number of the page comes from these weights (a packaged GGUF's 4-bit ones, dequantised)
    models = pd.DataFrame([{"alias": a, "source": m.get("source"), "fingerprint": m.get("fingerprint"),
                            "dtype": m.get("dtype"), "revision": m.get("revision"),
                            "quantization": model_quantization(str(m.get("source")), m.get("path")) or "none"}
                           for a, m in meta["models"].items()])
    points = pd.DataFrame(meta.get("points") or [])
    if not points.empty:
        from lmsweep.jobs.decoding import DecodingPoint, point_labels

        points.insert(0, "label", point_labels([DecodingPoint(**p) for p in meta["points"]]))
    ex = spec.get("execution", {})
    overview = pd.DataFrame([
        ("experiment", meta["experiment"]), ("description", spec.get("description") or "–"),
        ("spec hash", meta["spec_hash"]), ("spec file", meta.get("spec_file")),
        ("task", json.dumps(meta["task"])), ("task variants", len(meta.get("variants") or [1])),
        ("prompt sets", ", ".join(p.get("name", "?") for p in spec.get("prompts", []))),
        ("units", meta.get("n_units")), ("elements", len(meta.get("elements", []))),
        ("execution", ", ".join(f"{k}={ex[k]}" for k in ("backend", "system", "batch_size", "ranks_per_element",
                                                          "walltime") if k in ex)),
        ("planned at", datetime.fromtimestamp(meta.get("created", 0), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
    ], columns=["", "value"])
    return (html_table(overview) + "<h3>Models</h3>" + html_table(models)
            + (("<h3>Decoding points</h3>" + html_table(points)) if not points.empty else ""))


def provenance(exp: Path) -> pd.DataFrame:
    """One row per worker sidecar: where and with what each element ran."""
    from lmsweep.results.compare import sidecars

    rows = []
    for m in sidecars(exp):
        pk = m.get("packages") or {}
        backend = m.get("backend")
        rows.append({"element": m.get("element"), "rank": m.get("rank"), "host": m.get("host"),
                     "accelerator": m.get("accelerator"), "backend": backend,
                     "load_s": m.get("load_seconds"), "units_run": m.get("units_run"),
                     "failed": m.get("units_failed"), "python": m.get("python"),
                     **{k: pk.get(k) for k in ("torch", "transformers")},
                     # the version of the package named like the backend, when the sidecar lists one
                     "backend_version": pk.get(backend) if isinstance(backend, str) else None,
                     "lmsweep": pk.get("lmsweep")})
    return pd.DataFrame(rows)


def sidecar_history(exp: Path) -> list[dict]:
    """Every run's rank sidecar (meta/history/), plus the current ones for runs from before history was kept."""
    out, seen = [], set()
    for f in sorted((Path(exp) / "meta" / "history").glob("element-*-rank-*.json")) + \
            sorted((Path(exp) / "meta").glob("element-*-rank-*.json")):
        try:
            m = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        key = (m.get("element"), m.get("rank"), m.get("finished_at"))
        if key not in seen:
            seen.add(key)
            out.append({**m, "_file": str(f)})
    return out


def _absent(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def trace(exp: str | Path, unit_id: str) -> pd.DataFrame:
    """Everything known about how one unit's row was made: the plan's spec and model, the row's own
    columns, and the sidecar of the run that wrote it (same element and rank, the first to finish after
    the row was written)."""
    from lmsweep.errors import UsageError
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load, unit_from_prefix

    exp = Path(exp)
    plan = read_plan(exp)
    unit_id = unit_from_prefix(exp, unit_id, "--trace")     # a prefix, as `plot --unit` takes
    rows = load(exp, filters=[("unit_id", "=", unit_id)])
    if rows.empty:
        raise UsageError(f"no result row for unit {unit_id!r} in {exp}", field="--trace")
    r = rows.iloc[0]
    model = plan.meta["models"].get(r["model"], {})
    written = r["finished_at"].timestamp() if pd.notna(r["finished_at"]) else 0.0
    runs = [m for m in sidecar_history(exp) if m.get("element") == r["element"] and m.get("rank") == r["rank"]
            and (m.get("finished_at") or 0) >= written]
    side = min(runs, key=lambda m: m["finished_at"]) if runs else {}
    facts = [
        ("unit_id", r["unit_id"]), ("unit_key", r["unit_key"]),
        ("spec_hash", r["spec_hash"] + ("" if r["spec_hash"] == plan.meta["spec_hash"] else
                                        f" (the plan is now {plan.meta['spec_hash']})")),
        ("spec file", plan.meta.get("spec_file")), ("model", r["model"]), ("model_source", r["model_source"]),
        ("model_fingerprint", r["model_fingerprint"]), ("dtype / revision", f"{model.get('dtype')} / "
                                                                            f"{model.get('revision')}"),
        ("model_quantization", _quantization(side, model)),
        ("model path", model.get("path")), ("task", json.dumps(plan.meta["task"])),
        ("decoding", r.get("decoding")), ("seed", r.get("seed")), ("prompt", f"{r['prompt_set']}/{r['prompt_id']}"),
        ("backend / device", f"{r['backend']} / {r.get('device')}"), ("host", r["host"]),
        ("element / rank", f"{r['element']} / {r['rank']}"), ("finished_at", str(r["finished_at"])),
        ("sidecar", side.get("_file", "none found (the run that wrote this row did not finish)")),
    ]
    facts = [(k, v) for k, v in facts if k not in ("decoding", "seed") or not _absent(v)]   # tasks without them
    if side:
        facts += [("python", side.get("python")), ("accelerator", side.get("accelerator")),
                  ("cuda / gpus", f"{side.get('cuda')} / {', '.join(side.get('gpus') or []) or '–'}"),
                  ("lmsweep commit", side.get("lmsweep_commit")),
                  ("packages", ", ".join(f"{k} {v}" for k, v in (side.get("packages") or {}).items())),
                  ("backend config", json.dumps(side.get("backend_config"))),
                  ("model load s", side.get("load_seconds"))]
    return pd.DataFrame(facts, columns=["", "value"])


def _quantization(side: dict, model: dict) -> str:
    """The sidecar's record of the weights' quantisation; the plan's model, for a run from before it was kept."""
    if "model_quantization" in side:
        return side["model_quantization"] or "none"
    from lmsweep.jobs.model_sources import model_quantization

    return model_quantization(str(model.get("source")), model.get("path")) or "none"


def build_report(exp: str | Path) -> str:
    from lmsweep.core.task_registry import get_task
    from lmsweep.jobs.plan import read_plan
    from lmsweep.results.load import load, status
    from lmsweep.results.summary import summarize, task_examples

    exp = Path(exp)
    plan = read_plan(exp)
    meta = plan.meta
    task = meta["task"]["type"]
    st = status(exp)
    df = load(exp)
    body = ["<h2>Spec</h2>", spec_tables(meta)]
    state = "pass" if st.complete else "fail"
    body += ["<h2>Status</h2>",
             f"<p class='verdict {state}'>{html.escape(st.counts(units=True))}</p>",
             "<h3>Per model</h3>", html_table(st.per_model),
             "<h3>Per element</h3>", html_table(st.per_element, limit=100)]
    if not st.failures.empty:
        body += ["<h3>Failures</h3>", html_table(st.failures, limit=50)]
    body += ["<h2>Summary</h2>", html_table(summarize(df, task))]
    if (shown := task_examples(df, task)) is not None:
        body += ["<h3>Examples</h3>", html_table(shown)]
    plots = plot_throughput(df) + (get_task(task).report_plots(df) if not df.empty else [])
    body += ["<h2>Plots</h2>"] + (plots or ["<p class='note'>no rows to plot yet</p>"])
    body += ["<h2>Provenance</h2>", "<p class='note'>every row also carries spec_hash, unit_id, model_source, "
             "model_fingerprint, backend, host, element and rank; these are the workers' sidecars "
             "(meta/element-*-rank-*.json)</p>", html_table(provenance(exp))]
    if not df.empty:
        have = {(m.get("element"), m.get("rank")) for m in sidecar_history(exp)}
        pairs = df[["element", "rank"]].drop_duplicates()
        orphans = pairs[[(int(e), int(r)) not in have for e, r in zip(pairs["element"], pairs["rank"])]]
        if not orphans.empty:
            body += ["<p class='note'>rows without a sidecar (a run stopped before it could write one; "
                     "their rows still carry host, device and model fingerprint):</p>", html_table(orphans)]
    return page(f"lmsweep report: {meta['experiment']}", "\n".join(body))


def write_report(exp: str | Path, out: str | Path | None = None) -> Path:
    from lmsweep.results.writer import write_text_atomic

    exp = Path(exp)
    out = Path(out) if out else exp / "report.html"
    return write_text_atomic(out, build_report(exp))
