"""``report.html``: the report as one self-contained page.

Everything is inline (styles, figures as ``data:image/png;base64`` URIs, system fonts only), so
the page opens offline in any browser and can be sent as a single file. Every string that
comes from the run's files is escaped.
"""

from __future__ import annotations

import base64
from html import escape

from training.downstream.report_model import Code, Figure, Inline, Report, Strong, Table

STYLE = """
:root { color-scheme: light; --ink: #1d2327; --muted: #6b7278; --line: #d9dde1; --accent: #1f5f99; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 12px; word-break: break-all; }
h2 { font-size: 1.2em; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.notice { margin: 0 0 20px; padding: 10px 14px; border-left: 4px solid #c77700; background: #fff6e5; }
.headline { display: flex; flex-wrap: wrap; gap: 14px; margin: 0 0 18px; }
.metric { flex: 1 1 220px; padding: 12px 16px; border: 1px solid var(--line); border-radius: 6px; }
.metric .name { display: block; color: var(--muted); font-size: .9em; }
.metric .value { display: block; font-size: 2em; font-weight: 600; color: var(--accent); }
.metric .ci { display: block; color: var(--muted); font-size: .9em; }
ul.facts { padding-left: 20px; } ul.facts li { margin: 3px 0; }
code { font: .9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f0f2f4;
  padding: 1px 4px; border-radius: 3px; word-break: break-all; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: .92em; min-width: 60%; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td { white-space: nowrap; } td:last-child { white-space: normal; }
th { background: #eef1f4; font-weight: 600; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafbfc; }
tr.muted td { color: var(--muted); }
tr.strong td { font-weight: 600; }
figure { margin: 18px 0 28px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { margin-top: 6px; color: var(--muted); font-size: .92em; }
footer { margin-top: 36px; color: var(--muted); font-size: .85em; }
@media print { body { background: #fff; } main { padding: 0; } figure { break-inside: avoid; } }
"""


def render_html(report: Report) -> str:
    """The whole page; reads the figures' PNG files to embed them."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(report.title)}</title>",
        f"<style>{STYLE}</style></head>",
        "<body><main>",
        f"<h1>{escape(report.title)}</h1>",
        f'<p class="notice" role="note"><strong>{escape(report.notice)}</strong></p>',
        _headline(report.headline),
        '<ul class="facts">' + "".join(f"<li>{_inline(fact)}</li>" for fact in report.facts) + "</ul>",
        *(_table(table) for table in report.tables),
    ]
    if report.figures:
        parts += ["<h2>Figures</h2>", *(_figure(figure) for figure in report.figures)]
    parts += ["<footer>Written by <code>cxr-msn report</code>.</footer>", "</main></body></html>", ""]
    return "\n".join(parts)


def _headline(entries: list[tuple[str, str, str]]) -> str:
    cards = "".join(
        f'<div class="metric"><span class="name">{escape(name)}</span>'
        f'<span class="value">{escape(value)}</span>'
        f'<span class="ci">{"95 % CI " + escape(ci) if ci else "no CI"}</span></div>'
        for name, value, ci in entries
    )
    return f'<div class="headline">{cards}</div>'


def _inline(pieces: Inline) -> str:
    return "".join(
        f"<strong>{escape(p)}</strong>"
        if isinstance(p, Strong)
        else f"<code>{escape(p)}</code>"
        if isinstance(p, Code)
        else escape(p)
        for p in pieces
    )


def _table(table: Table) -> str:
    def cell(tag: str, text: str, align: str) -> str:
        return f'<{tag} class="{align}">{escape(text)}</{tag}>'

    head = "".join(cell("th", text, a) for text, a in zip(table.header, table.align, strict=True))
    rows = []
    for i, row in enumerate(table.rows):
        kind = "strong" if i in table.strong_rows else "muted" if i in table.muted_rows else ""
        cells = "".join(cell("td", text, a) for text, a in zip(row, table.align, strict=True))
        rows.append(f'<tr class="{kind}">{cells}</tr>' if kind else f"<tr>{cells}</tr>")
    body = "".join(rows)
    return (
        f"<h2>{escape(table.title)}</h2>"
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    caption = escape(figure.caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
        f"<figcaption><strong>{escape(figure.path.name)}</strong>: {caption}</figcaption></figure>"
    )
