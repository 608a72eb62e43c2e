"""A small document model for the reproduce report, rendered twice: Markdown (figures linked by relative path) and a
self-contained HTML page (figures embedded as base64 data URIs, inline CSS, no external resource).

The HTML page carries one inline script: on the window's load event it writes how many of its images the browser
decoded (``data-images-decoded="n/m"`` on ``<body>``), so a headless browser's DOM dump shows whether every embedded
figure rendered.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Bullets", "Code", "Details", "Document", "Figure", "Heading", "Table", "Text", "to_html", "to_markdown"]

MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


@dataclass(frozen=True)
class Heading:
    level: int  # 1..4
    text: str


@dataclass(frozen=True)
class Text:
    text: str
    kind: str = "p"  # "p", "note" (small print) or "warning" (a highlighted box)


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str | None = None
    strong_rows: frozenset[int] = frozenset()  # row indices shown in bold
    numeric: bool = True  # right-align every column but the first


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Details:
    summary: str
    blocks: tuple[object, ...]


@dataclass(frozen=True)
class Document:
    title: str
    blocks: list[object] = field(default_factory=list)

    def add(self, *blocks: object) -> None:
        self.blocks.extend(blocks)


# ---- Markdown -----------------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    lines = []
    if t.caption:
        lines += [f"*{t.caption}*", ""]
    lines.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
    lines.append("|" + "|".join(["---"] + [("---:" if t.numeric else "---")] * (len(t.header) - 1)) + "|")
    for k, row in enumerate(t.rows):
        cells = [_md_cell(c) for c in row]
        if k in t.strong_rows:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _md_blocks(blocks: Sequence[object], base: Path) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            prefix = {"warning": "> **", "note": "> "}.get(b.kind, "")
            suffix = "**" if b.kind == "warning" else ""
            out += [prefix + b.text + suffix, ""]
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            out += _md_table(b)
        elif isinstance(b, Figure):
            rel = Path(os.path.relpath(b.path, base)).as_posix()
            out += [f"![{b.caption}]({rel})", f"*{b.caption}*", ""]
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
        elif isinstance(b, Details):
            out += [f"**{b.summary}**", ""] + _md_blocks(b.blocks, base)
        else:
            raise TypeError(f"unknown report block {type(b).__name__}")
    return out


def to_markdown(doc: Document, base: str | os.PathLike[str]) -> str:
    """The document as Markdown; figure links are relative to `base` (the folder the .md file is written in)."""
    return "\n".join([f"# {doc.title}", ""] + _md_blocks(doc.blocks, Path(base))).rstrip("\n") + "\n"


# ---- HTML ---------------------------------------------------------------------------------------------------------
STYLE = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;
color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #c8c8c8;padding:.25em .6em}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}tr.strong td{font-weight:bold}
caption{caption-side:top;text-align:left;font-style:italic;padding-bottom:.3em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.warning{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em}.note{color:#555;font-size:.92em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.85em}details{margin:.5em 0}
"""
SCRIPT = ("window.addEventListener('load',function(){var m=document.images,n=0;for(var k=0;k<m.length;k++)"
          "{if(m[k].complete&&m[k].naturalWidth>0)n++;}"
          "document.body.setAttribute('data-images-decoded',n+'/'+m.length);});")


def _data_uri(path: Path) -> str:
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: only PNG and JPEG figures can be embedded in the report.")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_table(t: Table) -> list[str]:
    e = html.escape
    out = ["<table>"] + ([f"<caption>{e(t.caption)}</caption>"] if t.caption else [])
    out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
    for k, row in enumerate(t.rows):
        cls = ' class="strong"' if k in t.strong_rows else ""
        num = ' class="num"'
        cells = "".join(f"<td{num if (t.numeric and j) else ''}>{e(c)}</td>" for j, c in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    return out + ["</table>"]


def _html_blocks(blocks: Sequence[object]) -> list[str]:
    e = html.escape
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            cls = f' class="{b.kind}"' if b.kind != "p" else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out += ["<ul>"] + [f"<li>{e(i)}</li>" for i in b.items] + ["</ul>"]
        elif isinstance(b, Table):
            out += _html_table(b)
        elif isinstance(b, Figure):
            out.append(f'<figure><img src="{_data_uri(b.path)}" alt="{e(b.caption)}">'
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            out.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Details):
            out += [f"<details><summary>{e(b.summary)}</summary>"] + _html_blocks(b.blocks) + ["</details>"]
        else:
            raise TypeError(f"unknown report block {type(b).__name__}")
    return out


def to_html(doc: Document) -> str:
    """The document as one self-contained HTML page (figures embedded)."""
    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(doc.title)}</title>'
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>")
    body = [f"<h1>{html.escape(doc.title)}</h1>", *_html_blocks(doc.blocks), "</body></html>"]
    return "\n".join([head, *body]) + "\n"
