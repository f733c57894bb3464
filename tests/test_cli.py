import subprocess
import sys
from pathlib import Path

from neuralcodes import cli
from neuralcodes.errors import NeuralCodesError


def test_help_lists_every_registered_command():
    parser = cli.build_parser()
    text = parser.format_help()
    for action in parser._subparsers._group_actions:  # the subcommand action
        for name in action.choices:
            assert name in text


def _parser_with(handler):
    import argparse

    parser = argparse.ArgumentParser(prog="neuralcodes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("boom").set_defaults(func=handler)
    return parser


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def boom(args):
        raise NeuralCodesError("the thing is missing")

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(boom))
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "neuralcodes: error: the thing is missing\n"


def test_interrupt_and_missing_file_are_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def missing(args):
        Path("/nonexistent/file.txt").read_text()

    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(interrupted))
    assert cli.main(["boom"]) == 130
    monkeypatch.setattr(cli, "build_parser", lambda: _parser_with(missing))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["neuralcodes: interrupted",
                   "neuralcodes: error: No such file or directory: /nonexistent/file.txt"]


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "neuralcodes", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("neuralcodes ")
