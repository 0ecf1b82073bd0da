"""A self-contained HTML evaluation report (no external assets): the metrics table, inline SVG plots of
Recall@K per method and of the popularity of recommended items against the catalogue, the build summary."""
from __future__ import annotations

import html
import json
import re

from trainer.io import EXTRA_MAX
from trainer.plots import line_chart

COLS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "mrr@50", "coverage@10", "ild@10", "novelty@10",
        "cold_share@10"]


def _mean_len(v: dict) -> str:
    """The list length a row's recall@50 is at (evaluations recorded before it was measured have none)."""
    return f"<td>{v['mean_len']:.1f}</td>" if "mean_len" in v else "<td>-</td>"


def _when(cut) -> str:
    """The cut as a UTC time with its unix seconds."""
    import datetime as dt

    if not isinstance(cut, (int, float)):
        return f"{html.escape(str(cut))} (unix s)"
    return f"{dt.datetime.fromtimestamp(cut, dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC ({cut} unix s)"


def columns_not_used(data_report: dict) -> dict[str, list[str]]:
    """The input columns a build did not use, {table: [column, ...]} (tables with none left out): text
    columns, numeric ones past a table's first :data:`EXTRA_MAX`, and any other column of interactions."""
    out = {}
    for table in ("items", "users", "interactions"):
        names = data_report.get(f"extra_{table[:-1]}_columns_not_used")
        if names:
            out[table] = list(names)
    return out


def not_used_text(unused: dict[str, list[str]]) -> str:
    """``columns_not_used`` as one line, each name quoted: "items: 'title', 'tags'; users: 'bio'"."""
    return "; ".join(f"{table}: {', '.join(map(repr, names))}" for table, names in unused.items())


NOT_USED = (f"not used as features (text, numeric past the first {EXTRA_MAX} of the items or users table, "
            "any other column of interactions)")


def recall_chart(methods: dict) -> str:
    """Recall@K against K, one line per method, for every cut-off the evaluation has."""
    ks = sorted({int(m.group(1)) for v in methods.values() for c in v
                 if (m := re.fullmatch(r"recall@(\d+)", c))})
    series = {name: [v.get(f"recall@{k}", 0.0) for k in ks] for name, v in methods.items()}
    return line_chart("Recall@K on the held-out window", [str(k) for k in ks], series, "K", "recall@K")


def popularity_chart(deciles: dict) -> str:
    """Share of each method's top-k per item-popularity decile, against the catalogue's items and the
    training interactions in the same deciles."""
    labels = [str(d + 1) for d in range(len(deciles["items"]))]
    return line_chart(f"Popularity of recommended items (top {deciles['k']}) vs the catalogue", labels,
                      deciles["methods"], "item popularity decile (1 = most popular)", "share",
                      references={"catalogue items": deciles["items"],
                                  "training interactions": deciles["interactions"]})


def render(manifest: dict, result: dict) -> str:
    methods = result["methods"]         # none for logs of new users only (their table is below)
    plots = [recall_chart(methods)] if methods else []
    if "popularity_deciles" in result:      # evaluations recorded before the deciles existed have none
        plots.append(popularity_chart(result["popularity_deciles"]))
    best = {c: max(v[c] for v in methods.values()) for c in COLS} if methods else {}
    rows = []
    for m, v in methods.items():
        cells = "".join(
            f"<td{' class=best' if v[c] == best[c] and c not in ('cold_share@10',) else ''}>{v[c]:.4f}</td>"
            for c in COLS)
        rows.append(f"<tr><th>{html.escape(m)}</th>{cells}{_mean_len(v)}</tr>")
    tr = manifest.get("training", {})
    summary = {
        "version": manifest.get("version"), "created_at": manifest.get("created_at"),
        "counts": manifest.get("counts"), "dim": manifest.get("dim"), "index": manifest.get("index"),
        "params": manifest.get("params"), "ranker": tr.get("ranker"), "tuning": tr.get("tuning"),
        "timings_s": tr.get("timings"),
    }
    version = html.escape(str(manifest.get('version')))
    unused = columns_not_used(tr.get("data_report", {}))
    sample = (f" (at most {result['eval_users']}, drawn with seed {result['seed']})"
              if "eval_users" in result and "seed" in result else "")
    cold = result.get("cold_users")
    cold_html = ""
    if cold:        # the users new after the cut (trainer/cold.py), answered from the cold-start path
        crow = "".join(f"<tr><th>{html.escape(m)}</th>{''.join(f'<td>{v[c]:.4f}</td>' for c in COLS)}</tr>"
                       for m, v in cold["methods"].items())
        cold_html = (f"<h2>New users</h2><p>{cold['users']} of the {cold['new_users']} users with no interaction "
                     f"before the cut, answered from the cold-start path ({cold['users_with_country_list']} from "
                     f"a country with a trending list; cold order {html.escape(cold['cold_order'])}, trending "
                     f"{html.escape(cold['cold_trending'])}), against the global trending list's head.</p>\n"
                     f"<table><tr><th>method</th>{''.join(f'<th>{c}</th>' for c in COLS)}</tr>{crow}</table>\n")
    main_table = (f"<table><tr><th>method</th>{''.join(f'<th>{c}</th>' for c in COLS)}<th>mean_len</th></tr>"
                  f"{''.join(rows)}</table>"
                  if rows else "<p>No held-out user has a training history and a new item: the new users' table "
                               "below is the evaluation.</p>")
    unused_html = (f"<h2>Input columns not used</h2><p>Columns {NOT_USED}: {html.escape(not_used_text(unused))}"
                   "</p>\n" if unused else "")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recserve bundle {version}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{text-align:left}}
.best{{background:#d8f0d8;font-weight:bold}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head><body>
<h1>Bundle {version}</h1>
<p>Held-out newest interactions after {_when(result.get('cut'))}; {result['users']} users evaluated{sample},
{result.get('held_out_interactions', '?')} held-out interactions. History items are excluded from recommendations
and from the truth, and so are items created after the cut (not in the bundle's catalogue yet:
{result.get('truth_not_released', 0)} held-out (user, item) pairs).</p>
{main_table}
{cold_html}{unused_html}<h2>Plots</h2>
{''.join(f'<figure>{p}</figure>' for p in plots)}
<h2>Build</h2><pre>{html.escape(json.dumps(summary, indent=1))}</pre></body></html>
"""
