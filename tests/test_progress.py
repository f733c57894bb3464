"""Progress bars (:mod:`neuralcodes.progress`): a terminal gets tqdm's bar; a log file gets a
plain line every ~30 s or 10%, never every redraw, and always its last line at 100%."""

from __future__ import annotations

import io

from neuralcodes import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_per_tenth_not_per_update():
    out = io.StringIO()
    with progress.bar(total=1000, desc="codes", unit="img", file=out) as b:
        for _ in range(1000):
            b.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 11, lines  # 0%, 10%, ..., 100%
    assert lines[0].startswith("codes:   0% (0/1000)")
    assert lines[-1].startswith("codes: 100% (1000/1000)")


def test_a_log_gets_a_line_every_30_s_between_tenths(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    with progress.bar(total=1000, desc="train", file=out) as b:
        for _ in range(35):  # one update a second: 3.5% in all, below a tenth
            now[0] += 1.0
            b.update(1)
    lines = out.getvalue().splitlines()
    # the start, after 30 s, and the last line on close
    assert [int(line.split("(")[1].split("/")[0]) for line in lines] == [0, 30, 35], lines


def test_a_fast_bar_ends_at_100_percent_in_a_log_and_on_a_terminal():
    for stream in (io.StringIO(), Terminal()):
        with progress.bar(total=3, desc="mAP layer 5", leave=False, file=stream) as b:
            b.update(3)
        text = stream.getvalue()
        assert "100%" in text, text
    # the terminal's bar redraws in place (tqdm's \r), the log does not
    assert "\r" in stream.getvalue()


def test_a_bar_that_stops_early_says_where_it_stopped():
    out = io.StringIO()
    with progress.bar(total=10, desc="epoch 1/3", file=out) as b:
        b.update(4)
    assert out.getvalue().splitlines()[-1].startswith("epoch 1/3:  40% (4/10)")


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    for total in (10, None):  # a download's size may be unknown
        with progress.bar(total=total, file=out, disable=True) as b:
            b.update(10)
    assert out.getvalue() == ""


def test_the_methods_descriptors_bar_writes_lines_to_a_log(capsys):
    """The methods stage's "descriptors" bar goes through :func:`progress.bar` (a new user's
    log had tqdm's ``\\r`` redraws in it)."""
    import numpy as np
    import torch

    from neuralcodes.config import ModelConfig
    from neuralcodes.model import ConvNet
    from neuralcodes.retrieval.methods.features import extract_features

    torch.manual_seed(0)
    model = ConvNet(3, ModelConfig(conv_widths=(4, 4, 4, 4, 8), fc_width=16))
    images = np.zeros((6, 64, 64, 3), np.uint8)
    extract_features(model, images, np.arange(6), "val", gem_ps={"conv5": (3.0,)},
                     batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "descriptors (val)" in err and "100%" in err
    assert "\r" not in err


def test_no_module_uses_tqdm_but_progress():
    import re
    from pathlib import Path

    import neuralcodes

    root = Path(neuralcodes.__file__).parent
    users = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M)
             and p.name != "progress.py"]
    assert users == []
