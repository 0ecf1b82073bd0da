"""A self-contained HTML evaluation report (no external assets)."""
from __future__ import annotations

import html
import json

COLS = ["recall@10", "recall@20", "recall@50", "ndcg@10", "mrr@50", "coverage@10", "ild@10", "novelty@10",
        "cold_share@10"]


def render(manifest: dict, result: dict) -> str:
    methods = result["methods"]
    best = {c: max(v[c] for v in methods.values()) for c in COLS}
    rows = []
    for m, v in methods.items():
        cells = "".join(
            f"<td{' class=best' if v[c] == best[c] and c not in ('cold_share@10',) else ''}>{v[c]:.4f}</td>"
            for c in COLS)
        rows.append(f"<tr><th>{html.escape(m)}</th>{cells}</tr>")
    tr = manifest.get("training", {})
    summary = {
        "version": manifest.get("version"), "created_at": manifest.get("created_at"),
        "counts": manifest.get("counts"), "dim": manifest.get("dim"), "index": manifest.get("index"),
        "params": manifest.get("params"), "ranker": tr.get("ranker"), "tuning": tr.get("tuning"),
        "timings_s": tr.get("timings"),
    }
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>recserve bundle {html.escape(str(manifest.get('version')))}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}th{{text-align:left}}.best{{background:#d8f0d8;font-weight:bold}}pre{{background:#f6f6f6;
padding:1em;overflow:auto}}</style></head><body>
<h1>Bundle {html.escape(str(manifest.get('version')))}</h1>
<p>Held-out newest interactions after {result.get('cut')} (unix s); {result['users']} users evaluated,
{result.get('held_out_interactions', '?')} held-out interactions. History items are excluded from recommendations
and from the truth.</p>
<table><tr><th>method</th>{''.join(f'<th>{c}</th>' for c in COLS)}</tr>{''.join(rows)}</table>
<h2>Build</h2><pre>{html.escape(json.dumps(summary, indent=1))}</pre></body></html>
"""
