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
