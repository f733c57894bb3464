import subprocess
import sys
from pathlib import Path

from neuralcodes import cli
from neuralcodes.errors import NeuralCodesError


def test_every_command_is_filled_in_by_its_module():
    import argparse
    import importlib

    for name, (module, _) in cli.COMMANDS.items():
        p = argparse.ArgumentParser()
        importlib.import_module(module).register(p)
        assert p.description and callable(p.get_default("func")), name


def _summaries(parser) -> dict[str, str]:
    """Each command's help as ``neuralcodes --help`` lists it."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: action.help for action in sub._choices_actions}


def test_each_command_has_one_summary_wherever_it_is_shown():
    """The command table is the one source: the listing is the same whichever command's full
    parser is built, and no command module gives a summary of its own."""
    import ast

    table = {name: summary for name, (_, summary) in cli.COMMANDS.items()}
    assert _summaries(cli.build_parser(["--help"])) == table
    assert _summaries(cli.build_parser(None)) == table
    for name in table:
        assert _summaries(cli.build_parser([name, "--help"])) == table
    for path in Path(cli.__file__).parent.glob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and getattr(n.func, "attr", None) == "add_parser"]
        assert path.name == "__init__.py" or calls == [], path.name


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


def test_a_bug_is_one_line_unless_debugging(monkeypatch, capsys):
    def bug(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "build_parser", lambda argv=None: _parser_with(bug))
    monkeypatch.delenv("NEURALCODES_DEBUG", raising=False)
    assert cli.main(["boom"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (ZeroDivisionError: division by zero)" in err
    monkeypatch.setenv("NEURALCODES_DEBUG", "1")
    try:
        cli.main(["boom"])
    except ZeroDivisionError:
        pass
    else:
        raise AssertionError("NEURALCODES_DEBUG=1 should let the traceback through")


def test_second_writer_of_a_run_gets_one_line_naming_the_holder(tmp_path, capsys):
    import textwrap

    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from neuralcodes.runs import RunDir
        with RunDir(sys.argv[1]).lock("train"):
            print("locked", flush=True)
            time.sleep(60)
        """), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = ["train", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "none"),
                "--no-progress"]
        assert cli.main(argv) == 2
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(pid {holder.pid} on " in err and "`train`" in err
    assert not (tmp_path / "run" / "config.json").exists()


def test_index_help_says_what_folder_is(capsys, tmp_path):
    from neuralcodes.retrieval.images import IMAGE_SUFFIXES, image_files

    assert cli.main(["index", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    said = text.split("positional arguments:")[1].split("options:")[0].strip()
    assert said.startswith("folder the folder of images to index, subfolders included")
    assert all(suffix in said for suffix in IMAGE_SUFFIXES) and "(any case)" in said
    # what it says is what indexing reads: subfolders, any case, image suffixes only
    (tmp_path / "sub").mkdir()
    for name in ("sub/a.PNG", "b.jpeg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert image_files(tmp_path) == [tmp_path / "b.jpeg", tmp_path / "sub" / "a.PNG"]


def test_checkpoint_and_epochs_help_say_their_choices_and_defaults(capsys):
    from neuralcodes.presets import PRESETS

    for command in ("codes", "evaluate"):
        assert cli.main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "--checkpoint {best,last} which weights: best" in text, command
    assert cli.main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    epochs = text.split("--epochs N ")[1].split("; same as")[0]
    assert "(100)" not in epochs and "default: 100" in epochs
    assert f"quick {PRESETS['quick']['train']['max_epochs']}" in epochs  # the preset's own
