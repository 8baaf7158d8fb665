"""The two renderings of a document (document.py): a self-contained HTML page (inline CSS,
plots as base64 PNG, no scripts, no URLs) and Markdown with the same tables and no images.
Rendering both from one model keeps the numbers in the two files identical."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from typing import Any

from cvfp.analysis.report.document import (
    Block,
    Code,
    Figure,
    Heading,
    Link,
    Para,
    RunMeta,
    Section,
    Table,
)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;margin:24px auto;
padding:0 16px;color:#1d232a;line-height:1.45}
h1{font-size:1.7em;margin-bottom:4px}h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:36px}
h3{margin-top:22px;font-size:1.1em}
table{border-collapse:collapse;margin:8px 0 14px;font-size:0.9em}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
p.caption{color:#57606a;font-size:0.9em;margin:10px 0 2px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:10px;overflow-x:auto;font-size:0.82em}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:0.88em}
.note{color:#57606a}.ref{background:#fff8c5;border-left:4px solid #d4a72c;padding:6px 10px}
nav a{margin-right:14px}.sub{color:#57606a;margin-top:0}
#warnings table td:first-child{white-space:nowrap}
""".strip()


def _inline_html(parts: Iterable[str | Link]) -> str:
    out = []
    for p in parts:
        if isinstance(p, Link):
            out.append(f'<a href="{html.escape(p.href, quote=True)}">{html.escape(p.text)}</a>')
        else:
            out.append(html.escape(str(p)))
    return "".join(out)


def _block_html(b: Block) -> str:
    e = html.escape
    if isinstance(b, Heading):
        return f"<h3>{e(b.text)}</h3>"
    if isinstance(b, Para):
        cls = f' class="{b.kind}"' if b.kind else ""
        return f"<p{cls}>{_inline_html(b.parts)}</p>"
    if isinstance(b, Table):
        # Caption as a paragraph: a <caption> wraps to the width of a narrow table.
        cap = f'<p class="caption">{e(b.caption)}</p>' if b.caption else ""
        head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b.rows
        )
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(b, Figure):
        data = base64.b64encode(b.png).decode("ascii")
        return (
            f'<figure><img alt="{e(b.caption, quote=True)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(b.caption)}</figcaption></figure>"
        )
    if isinstance(b, Code):
        return f"<pre><code>{e(b.text)}</code></pre>"
    raise TypeError(f"unknown block {type(b).__name__}")


def _git_line(meta: RunMeta) -> str:
    """The page's origin. The pipeline's report leaves the time and revision out (the same
    inputs give the same bytes: a DVC output); a caller that passes them sees them."""
    if not meta.generated_utc and meta.git_revision == "unknown":
        return "made by the report stage from its DVC dependencies"
    return (
        f"git {meta.git_revision}{' (dirty)' if meta.git_dirty else ''}, "
        f"generated {meta.generated_utc} UTC"
    )


def render_html(title: str, sections: list[Section], meta: RunMeta) -> str:
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.key}">\n<h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_block_html(b) for b in s.blocks)
        + "\n</section>"
        for s in sections
    )
    sub = html.escape(_git_line(meta))
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="sub">{sub}</p>\n<nav>{nav}</nav>\n'
        f"{body}\n</body>\n</html>\n"
    )


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _inline_md(parts: Iterable[str | Link]) -> str:
    return "".join(f"[{p.text}]({p.href})" if isinstance(p, Link) else str(p) for p in parts)


def _block_md(b: Block, html_name: str) -> str:
    if isinstance(b, Heading):
        return f"### {b.text}"
    if isinstance(b, Para):
        text = _inline_md(b.parts)
        return f"> {text}" if b.kind == "ref" else (f"_{text}_" if b.kind == "note" else text)
    if isinstance(b, Table):
        lines = [f"_{b.caption}_", ""] if b.caption else []
        lines.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
        lines.append("|" + "|".join("---" for _ in b.headers) + "|")
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
        return "\n".join(lines)
    if isinstance(b, Figure):
        # Images stay out of the Markdown (readable as text); the numbers are in the tables.
        return f"_Figure (in {html_name}): {b.caption}_"
    if isinstance(b, Code):
        return f"```{b.lang}\n{b.text}\n```"
    raise TypeError(f"unknown block {type(b).__name__}")


def render_md(
    title: str, sections: list[Section], meta: RunMeta, html_name: str = "report.html"
) -> str:
    """html_name: the HTML twin that holds the plots."""
    out = [
        f"# {title}",
        "",
        f"{_git_line(meta)}. Plots are in {html_name}; every plotted number is in the tables here.",
        "",
    ]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            out += [_block_md(b, html_name), ""]
    return "\n".join(out).rstrip() + "\n"
