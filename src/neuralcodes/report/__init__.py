"""The report: ``runs/<name>/report.md`` and a self-contained ``report.html``.

It answers the assignment's questions from the run's saved measurements, next to the course's
reference results. Built in three steps: :func:`collect` reads the run's artifacts into one plain
dict (the *facts*, :mod:`.facts`); :mod:`.analysis` decides what the numbers support (which
layer is best, whether training overfitted, chance levels); the Jinja2 template
``templates/report.md.j2`` writes the prose as Markdown (:func:`render`), and python-markdown
turns it into one HTML page with its images embedded (:func:`to_html`).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from neuralcodes import lineage
from neuralcodes.config import Config
from neuralcodes.course import course_reference
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import write_text
from neuralcodes.report.facts import collect
from neuralcodes.report.render import render, to_html
from neuralcodes.runs import RunDir

__all__ = ["collect", "course_reference", "render", "to_html", "write_report"]


def write_report(run: str | Path, config: Config | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a run; returns their paths.

    Both end in the report's fingerprint (:mod:`neuralcodes.lineage`): the run's weights and
    the fingerprints of every artifact it states (the training record and sibling runs'
    evaluations included); they are rewritten only when it changed. ``config``: the run's
    config as the command has it (the figures' ``retrieval.k``; default: the saved one).
    """
    rd = RunDir.existing(run)
    facts = collect(rd.root, k=None if config is None else config.retrieval.k)
    if facts["eval"] is None:
        raise NeuralCodesError(f"{rd.root}: no eval.json from its current weights yet; run "
                               f"`neuralcodes evaluate {rd.root}` first")
    inputs = {name: lineage.digest(made) if made else  # written before fingerprints: its bytes
              hashlib.sha256((rd.root / name).read_bytes()).hexdigest()[:16]
              for name, made in facts["made_by"].items()}
    for path in (rd.metrics, rd.train_state, rd.config, rd.timings):  # timings: its minutes
        if path.is_file():
            inputs[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    for other in facts["improved"]:
        inputs[f"../{other['name']}/eval.json"] = lineage.digest(other["eval"])
    inputs["report code"] = code_digest()  # a report another version wrote is written again
    fp = lineage.report_fingerprint(facts["weights"], inputs)
    if not lineage.needs_run("report", [rd.report_md, rd.report_html], fp):
        return rd.report_md, rd.report_html
    markdown = render(facts)
    html = to_html(markdown, f"neuralcodes report — {facts['run']}", rd.root)
    write_text(rd.report_md, markdown + lineage.text_line(fp) + "\n")
    write_text(rd.report_html, html.rstrip() + "\n" + lineage.text_line(fp) + "\n")
    return rd.report_md, rd.report_html


@functools.cache
def code_digest() -> str:
    """A short sha256 of the code that writes the report (this package's modules and its
    template): the report's wording is derived from the numbers by it, so a report written by
    other code is written again, like one of other numbers."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted([*here.glob("*.py"), *here.glob("templates/*")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]
