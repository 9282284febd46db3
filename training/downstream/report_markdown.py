"""``report.md``: the report as GitHub-flavoured markdown (figures linked beside it)."""

from __future__ import annotations

from training.downstream.report_model import Code, Inline, Report, Strong, Table


def report_markdown(report: Report) -> str:
    lines = [f"# {report.title}", "", f"> {report.notice}", ""]
    lines += ["- " + _markdown_inline(fact) for fact in report.facts]
    for table in report.tables:
        lines += ["", f"## {table.title}", "", *_markdown_table(table)]
    lines += ["", "## Figures", ""]
    for figure in report.figures:
        lines += [f"![{figure.path.name}]({figure.path.name})", "", f"*{figure.caption}*", ""]
    return "\n".join(lines)


def _markdown_inline(pieces: Inline) -> str:
    return "".join(
        f"**{p}**" if isinstance(p, Strong) else f"`{p}`" if isinstance(p, Code) else p for p in pieces
    )


def _markdown_table(table: Table) -> list[str]:
    lines = [
        "| " + " | ".join(table.header) + " |",
        "|" + "|".join("---:" if a == "r" else "---" for a in table.align) + "|",
    ]
    for i, row in enumerate(table.rows):
        cells = (f"**{row[0]}**", *row[1:]) if i in table.strong_rows else row
        lines.append("| " + " | ".join(cells) + " |")
    return lines
