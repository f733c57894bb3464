"""The report: ``runs/<name>/report.md`` and a self-contained ``report.html``.

It answers the assignment's questions from the run's saved measurements, next to the course's
reference results. Built in three steps: :func:`collect` reads the run's artifacts into one plain
dict (the *facts*, :mod:`.facts`); :mod:`.analysis` decides what the numbers support (which
layer is best, whether training overfitted, chance levels); the Jinja2 template
``templates/report.md.j2`` writes the prose as Markdown (:func:`render`), and python-markdown
turns it into one HTML page with its images embedded (:func:`to_html`).
"""

from __future__ import annotations

from pathlib import Path

from neuralcodes.course import course_reference
from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import write_text
from neuralcodes.report.facts import chance_map_of_sizes, collect
from neuralcodes.report.render import render, to_html
from neuralcodes.runs import RunDir

__all__ = ["chance_map_of_sizes", "collect", "course_reference", "render", "to_html",
           "write_report"]


def write_report(run: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` for a run; returns their paths."""
    rd = RunDir.existing(run)
    facts = collect(rd.root)
    if facts["eval"] is None:
        raise NeuralCodesError(f"{rd.root}: no eval.json yet; run `neuralcodes evaluate` first")
    markdown = render(facts)
    write_text(rd.report_md, markdown)
    write_text(rd.report_html, to_html(markdown, f"neuralcodes report — {facts['run']}", rd.root))
    return rd.report_md, rd.report_html
