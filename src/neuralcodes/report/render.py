"""Facts to Markdown (a Jinja2 template) and Markdown to one self-contained HTML page.

``templates/report.md.j2`` holds the prose; :mod:`neuralcodes.report.analysis` decides what it
may claim. python-markdown turns the Markdown into HTML; raw HTML in the Markdown is not passed
through (it is shown as text), and every image is read from the run directory and embedded as a
``data:`` URI, so ``report.html`` needs nothing but itself.
"""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import math
import mimetypes
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from neuralcodes import features
from neuralcodes.report import analysis

log = logging.getLogger(__name__)

#: The page's one stylesheet, inline so that report.html is one file; the web app serves the
#: page with a policy that allows exactly this style (its sha256: :func:`style_hashes`).
STYLE = ("body{font-family:system-ui,sans-serif;margin:0;line-height:1.5;color:#222}"
         "main{max-width:60rem;margin:2rem auto;padding:0 1rem}"
         "table{border-collapse:collapse;margin:0}td,th{border:1px solid #ccc;"
         "padding:.25rem .6rem;text-align:right;white-space:nowrap}"
         "td:first-child,th:first-child{text-align:left}img{max-width:100%;height:auto}"
         "code{background:#f4f4f4;padding:0 .2em;overflow-wrap:anywhere}"
         "a{color:#0550ae}"
         # wide tables and figures scroll inside a labelled box that the keyboard can reach
         ".scroll{max-width:100%;overflow-x:auto;margin:1rem 0}"
         ".scroll:focus-visible{outline:2px solid #0969da;outline-offset:2px}"
         # a figure keeps a legible size on a phone: scroll sideways rather than shrink it
         "@media (max-width:40rem){.scroll img{max-width:none;width:40rem}}")


# --------------------------------------------------------------------------- Jinja2 filters


def pct(x: float | None, digits: int = 1) -> str:
    """A share as a percentage (``27.4%``), the report's one unit for accuracies and mAP."""
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def pp(x: float | None, digits: int = 1, unsigned: bool = False) -> str:
    """A difference of two percentages in percentage points (``+0.3 pp``)."""
    if x is None:
        return "—"
    return f"{100 * x:.{digits}f} pp" if unsigned else f"{100 * x:+.{digits}f} pp"


def times(x: float | None) -> str:
    """A multiple (``1.33×``)."""
    return "—" if x is None else f"{x:.2f}×"


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


def interval(lo: float, hi: float, digits: int = 1) -> str:
    """A 95% interval of a difference of shares, in percentage points."""
    return f"95% CI {100 * lo:+.{digits}f} to {100 * hi:+.{digits}f} pp"


def anchor(heading: str) -> str:
    """The id of a heading: GitHub's rule (lower case, punctuation dropped, spaces to hyphens),
    so that the Markdown's links work on GitHub and in report.html alike."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower(), flags=re.ASCII)
    return text.replace(" ", "-")


def _slugify(value: str, separator: str) -> str:  # python-markdown's toc extension API
    return anchor(value)


def _environment(base: Path) -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("neuralcodes.report", "templates"),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined, autoescape=False)
    env.filters.update(fmt=fmt, signed=signed, thousands=thousands, cell=cell, pct=pct, pp=pp,
                       times=times, rel=lambda p: _relative(Path(p), base))
    env.globals.update(interval=interval, log=math.log)
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
        "quality": analysis.quality(facts),
        "names": features.labels(),  # how the text names each layer (the model declares it)
        # the course's reference numbers only beside a run of the course's dataset
        "vs_course": facts["dataset"]["course"],
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
                    _scroll_box(parents[img], parents, img.get("alt") or "figure")
            for table in list(root.iter("table")):
                head = [th.text or "" for th in table.iter("th")][:3]
                _scroll_box(table, parents, "table: " + ", ".join(h for h in head if h))

    class InlineImages(Extension):
        def extendMarkdown(self, md: Any) -> None:  # noqa: N802 (python-markdown's API)
            md.treeprocessors.register(Inline(md), "inline_images", 0)

    return InlineImages()


def _scroll_box(node: ET.Element, parents: dict[ET.Element, ET.Element], label: str) -> None:
    """Put ``node`` (a table, or the paragraph holding an image) into a scroll box that the
    keyboard can reach and a screen reader names (axe: scrollable-region-focusable)."""
    parent = parents.get(node)
    if parent is None:
        return
    box = ET.Element("div", {"class": "scroll", "tabindex": "0", "role": "region",
                             "aria-label": label})
    index = list(parent).index(node)
    parent.remove(node)
    box.append(node)
    box.tail, node.tail = node.tail, None
    parent.insert(index, box)
    parents[node], parents[box] = box, parent


def style_hashes(page: str) -> list[str]:
    """CSP sources (``'sha256-...'``) of every inline ``<style>`` of an HTML page."""
    return ["'sha256-" + base64.b64encode(hashlib.sha256(m.encode()).digest()).decode() + "'"
            for m in re.findall(r"<style>(.*?)</style>", page, flags=re.S)]


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

    md = markdown.Markdown(extensions=["tables", "toc", _inline_images(Path(base))],
                           extension_configs={"toc": {"slugify": _slugify}})
    # Raw HTML and <http://...> autolinks in the text stay text: nothing can load from outside.
    md.preprocessors.deregister("html_block")
    for name in ("html", "autolink", "automail"):
        md.inlinePatterns.deregister(name)
    body = md.convert(markdown_text)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
            f"<body>\n<main>\n{body}\n</main>\n</body></html>\n")
