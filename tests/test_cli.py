import subprocess
import sys
from pathlib import Path

from neuralcodes import cli
from neuralcodes.errors import NeuralCodesError


def test_every_command_is_registered_by_its_module():
    import argparse
    import importlib

    for module in {m for m, _ in cli.COMMANDS.values()}:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(module).register(sub)
        assert set(sub.choices) == {n for n, (m, _) in cli.COMMANDS.items() if m == module}


def test_help_names_every_command_without_importing_torch():
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from neuralcodes import cli; "
         "cli.build_parser(['--help']).format_help(); print('torch' in sys.modules)"],
        capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    text = cli.build_parser(["--help"]).format_help()
    assert all(name in text for name in cli.COMMANDS)


def _parser_with(handler):
    import argparse

    parser = argparse.ArgumentParser(prog="neuralcodes")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("boom").set_defaults(func=handler)
    return parser


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def boom(args):
        raise NeuralCodesError("the thing is missing")

    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _parser_with(boom))
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "neuralcodes: error: the thing is missing\n"


def test_interrupt_and_missing_file_are_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    def missing(args):
        Path("/nonexistent/file.txt").read_text()

    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _parser_with(interrupted))
    assert cli.main(["boom"]) == 130
    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _parser_with(missing))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["neuralcodes: interrupted",
                   "neuralcodes: error: No such file or directory: /nonexistent/file.txt"]


def test_python_dash_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "neuralcodes", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.startswith("neuralcodes ")
