"""Facts to Markdown (a Jinja2 template) and Markdown to one self-contained HTML page.

``templates/report.md.j2`` holds the prose; :mod:`neuralcodes.report.analysis` decides what it
may claim. python-markdown turns the Markdown into HTML; raw HTML in the Markdown is not passed
through (it is shown as text), and every image is read from the run directory and embedded as a
``data:`` URI, so ``report.html`` needs nothing but itself.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from neuralcodes.report import analysis

log = logging.getLogger(__name__)

STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
         "padding:0 1rem;line-height:1.5;color:#222}table{border-collapse:collapse;"
         "margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
         "code{background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere}"
         # wide tables scroll inside their box on a phone instead of widening the page
         "table{display:block;max-width:100%;overflow-x:auto}")


# --------------------------------------------------------------------------- Jinja2 filters


def fmt(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` decimals; a dash when missing."""
    return "—" if x is None else f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 3) -> str:
    """A difference with its sign (``+0.012``, ``-0.004``); a dash when missing."""
    return "—" if x is None else f"{x:+.{digits}f}"


def thousands(n: int | None) -> str:
    return "—" if n is None else f"{int(n):,}"


def cell(text: Any) -> str:
    """A Markdown table cell (a ``|`` inside would end the cell)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def interval(lo: float, hi: float, digits: int = 3) -> str:
    return f"95% CI {lo:+.{digits}f} to {hi:+.{digits}f}"


def _environment(base: Path) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("neuralcodes.report", "templates"),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(fmt=fmt, signed=signed, thousands=thousands, cell=cell,
                       rel=lambda p: _relative(Path(p), base))
    env.globals["interval"] = interval
    return env


def _relative(path: Path, base: Path) -> str:
    return (path.relative_to(base) if path.is_relative_to(base) else path).as_posix()


# --------------------------------------------------------------------------- Markdown


def render(facts: dict[str, Any]) -> str:
    """The report as Markdown (images linked relative to the run directory)."""
    base = Path(facts["root"])
    view = {
        "facts": facts, "saved": facts["saved"], "course": facts["course"],
        "arch": facts["architecture"], "training": analysis.training(facts),
        "curves": analysis.course_curves(facts), "results": analysis.results(facts),
        "layers": analysis.layers(facts), "evidence": analysis.evidence(facts),
        "pca": analysis.pca(facts), "techniques": analysis.techniques(facts),
    }
    text = _environment(base).get_template("report.md.j2").render(**view)
    text = re.sub(r"\n+(#+ )", r"\n\n\1", text)  # a blank line before every heading
    text = re.sub(r"\n{3,}", "\n\n", text)  # template conditionals leave blank runs
    return text.strip() + "\n"


# --------------------------------------------------------------------------- HTML


def _inline_images(base: Path) -> Any:
    """A python-markdown extension that embeds local images as data URIs and drops others."""
    from markdown.extensions import Extension
    from markdown.treeprocessors import Treeprocessor

    class Inline(Treeprocessor):
        def run(self, root: ET.Element) -> None:
            parents = {child: parent for parent in root.iter() for child in parent}
            for img in list(root.iter("img")):
                src = img.get("src", "")
                data = _data_uri(base, src)
                if data is None:
                    log.warning("report: image %s is not a local file; left out of the HTML", src)
                    parents[img].remove(img)
                else:
                    img.set("src", data)

    class InlineImages(Extension):
        def extendMarkdown(self, md: Any) -> None:  # noqa: N802 (python-markdown's API)
            md.treeprocessors.register(Inline(md), "inline_images", 0)

    return InlineImages()


def _data_uri(base: Path, src: str) -> str | None:
    parsed = urlparse(src)
    if parsed.scheme or parsed.netloc:
        return None
    path = Path(unquote(parsed.path))
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        return None
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def to_html(markdown_text: str, title: str, base: str | Path) -> str:
    """One self-contained HTML page from the report's Markdown (images relative to ``base``)."""
    import markdown

    md = markdown.Markdown(extensions=["tables", _inline_images(Path(base))])
    # Raw HTML and <http://...> autolinks in the text stay text: nothing can load from outside.
    md.preprocessors.deregister("html_block")
    for name in ("html", "autolink", "automail"):
        md.inlinePatterns.deregister(name)
    body = md.convert(markdown_text)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}\n</body></html>\n")
