"""No traceback reaches a user (issue 12 point 4): every command, driven through its command line
only, over a corpus of bad inputs (truncated and foreign ``.npz``, corrupt ``config.json``,
truncated checkpoint, missing files, bad settings, unreadable images, paths that cannot be
written) ends with exactly one ``neuralcodes: error: ...`` line on stderr and exit status 2.

An "internal error" line (exit 1) fails a case: it means the error was not anticipated. One tiny
run is trained once per module (through the CLI); each case damages its own copy. Cases run
in-process (``cli.main``) except ``serve`` and one end-to-end check, which need a real process.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import make_tiny_imagenet
from neuralcodes import cli
from neuralcodes.retrieval import CodeSet
from neuralcodes.runs import RunDir

TINY = ["--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
        "--set", "data.ood_classes=2", "--set", "train.max_epochs=1",
        "--set", "train.batch_size=16", "--device", "cpu", "--no-progress"]


@dataclass(frozen=True)
class World:
    """What the module built once: a dataset folder, its cache root, a trained run with ood
    codes and an index of two images, and a folder of good images."""

    source: Path
    cache_root: Path
    run: Path
    images: Path


def _main(argv: list[str]) -> int:
    return cli.main(argv)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("bad-inputs")
    source = make_tiny_imagenet(base / "src", 6, 20)
    run, cache_root, images = base / "run", base / "cache", base / "images"
    images.mkdir()
    for p in sorted((source / "test" / "images").glob("*.JPEG")):
        shutil.copy(p, images / p.name)
    for argv in (["train", "--out", str(run), "--data", str(source), "--cache-dir",
                  str(cache_root), *TINY],
                 ["codes", str(run), "--device", "cpu", "--no-progress"],
                 ["index", str(images), "--run", str(run), "--device", "cpu", "--no-progress"]):
        assert _main(argv) == 0, argv
    return World(source, cache_root, run, images)


class Case:
    """One test's scratch space: copies of the trained run to damage, and bad files."""

    def __init__(self, world: World, tmp: Path) -> None:
        self.w, self.tmp = world, tmp

    def run(self) -> Path:
        """A fresh copy of the trained run (damage it freely)."""
        dst = self.tmp / "run"
        shutil.copytree(self.w.run, dst)
        return dst

    def run_with_cache(self, damage: Callable[[Path], None]) -> Path:
        """A copy of the run whose own copy of the image cache ``damage`` has changed."""
        rd = self.run()
        saved = json.loads(RunDir(rd).config.read_text())
        old = Path(saved["data"]["cache"])
        new = self.tmp / "cache" / old.name
        shutil.copytree(old, new)
        saved["data"]["cache"] = str(new)
        saved["config"]["data"]["cache_dir"] = str(new.parent)
        RunDir(rd).config.write_text(json.dumps(saved))
        damage(new)
        return rd

    def edit_config(self, rd: Path, edit: Callable[[dict], object]) -> Path:
        saved = json.loads(RunDir(rd).config.read_text())
        edit(saved)
        RunDir(rd).config.write_text(json.dumps(saved))
        return rd

    def file(self, name: str, content: bytes | str = b"hello, not what you expected\n") -> Path:
        p = self.tmp / name
        p.write_bytes(content.encode() if isinstance(content, str) else content)
        return p

    def foreign_npz(self, name: str = "foreign.npz") -> Path:
        p = self.tmp / name
        np.savez(p, something=np.zeros(3))
        return p

    @property
    def image(self) -> str:
        return str(sorted(self.w.images.iterdir())[0])

    @property
    def src(self) -> str:
        return str(self.w.source)

    @property
    def cache(self) -> str:
        return str(self.w.cache_root)

    def out(self) -> str:
        return str(self.tmp / "out")


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def codes_file(rd: Path) -> Path:
    return RunDir(rd).codes("ood", False)


def index_file(rd: Path) -> Path:
    """The file list of the run's index (its folder is the file's parent)."""
    return next(RunDir(rd).index("images").glob("g*-entries.npz"))


def train(c: Case, *extra: str, out: str | None = None) -> list[str]:
    return ["train", "--out", out or c.out(), "--data", c.src, "--cache-dir", c.cache, *TINY,
            *extra]


def prepare(c: Case, *extra: str, cache: str | None = None) -> list[str]:
    return ["prepare", "--source", c.src, "--cache-dir", cache or c.cache, "--set",
            "data.ood_classes=2", "--no-progress", *extra]


def run_cmd(c: Case, *extra: str) -> list[str]:
    return ["run", "--preset", "quick", "--out", c.out(), "--data", c.src, "--cache-dir",
            c.cache, "--device", "cpu", "--no-progress", *extra]


def on_run(command: str) -> Callable[[Path, Case], list[str]]:
    """The command line of ``command`` working on the (damaged) run ``rd``."""
    def argv(rd: Path, c: Case) -> list[str]:
        return {
            "evaluate": ["evaluate", str(rd), "--device", "cpu", "--no-progress", "--force"],
            "codes": ["codes", str(rd), "--device", "cpu", "--no-progress", "--force"],
            "retrieval": ["retrieval", str(rd), "--device", "cpu", "--no-progress"],
            "index": ["index", str(c.w.images), "--run", str(rd), "--out",
                      str(c.tmp / "new-index"), "--device", "cpu", "--no-progress"],
            "search": ["search", c.image, "--run", str(rd), "--device", "cpu"],
            "train --resume": ["train", "--resume", str(rd), "--epochs", "2", "--no-progress"],
        }[command]
    return argv


RUN_COMMANDS = ("evaluate", "codes", "retrieval", "index", "search", "train --resume")

#: Damage done to a copy of the trained run, each tried with every command in RUN_COMMANDS.
RUN_DAMAGE: dict[str, Callable[[Case], Path]] = {
    "config.json corrupt": lambda c: (lambda rd: (RunDir(rd).config.write_text("{not json"),
                                                  rd)[1])(c.run()),
    "config.json a list": lambda c: (lambda rd: (RunDir(rd).config.write_text("[1, 2]"),
                                                 rd)[1])(c.run()),
    "config.json bad setting": lambda c: c.edit_config(
        c.run(), lambda d: d["config"]["train"].update(lr="fast")),
    "config.json without data facts": lambda c: c.edit_config(c.run(), lambda d: d.pop("data")),
    "config.json missing": lambda c: (lambda rd: (RunDir(rd).config.unlink(), rd)[1])(c.run()),
    "run is a file": lambda c: c.file("not-a-run"),
    "run missing": lambda c: c.tmp / "no-such-run",
    "cache and source gone": lambda c: c.edit_config(c.run(), lambda d: (
        d["data"].update(cache=str(c.tmp / "gone"), source=str(c.tmp / "gone-too")),
        d["config"]["data"].update(source=str(c.tmp / "gone-too")))),
    "cache images.npy truncated": lambda c: c.run_with_cache(
        lambda cache: truncate(cache / "images.npy")),
    "cache labels.npy missing": lambda c: c.run_with_cache(
        lambda cache: (cache / "labels.npy").unlink()),
    "cache manifest.json corrupt": lambda c: c.run_with_cache(
        lambda cache: (cache / "manifest.json").write_text("{")),
    "cache manifest.json a list": lambda c: c.run_with_cache(
        lambda cache: (cache / "manifest.json").write_text("[]")),
}

#: The checkpoint damage: best.pt for the commands that use it, last.pt for resuming.
CHECKPOINT_DAMAGE: dict[str, Callable[[Path], object]] = {
    "truncated": truncate,
    "foreign": lambda p: shutil.copy(Path(np.__file__).parent / "__init__.py", p),
    "missing": lambda p: p.unlink(),
}

#: The image cache is read the same way by every command that loads a run: three suffice.
CACHE_COMMANDS = ("evaluate", "search", "train --resume")


def _run_cases() -> list:
    cases = []
    for command in RUN_COMMANDS:
        for damage, make in RUN_DAMAGE.items():
            if damage.startswith("cache ") and command not in CACHE_COMMANDS:
                continue
            cases.append(pytest.param(
                lambda c, make=make, command=command: on_run(command)(make(c), c),
                id=f"{command}: {damage}"))
        which = "last" if command == "train --resume" else "best"
        for damage, spoil in CHECKPOINT_DAMAGE.items():
            def build(c: Case, spoil=spoil, which=which, command=command) -> list[str]:
                rd = c.run()
                spoil(RunDir(rd).checkpoint(which))
                return on_run(command)(rd, c)
            cases.append(pytest.param(build, id=f"{command}: {which}.pt {damage}"))
    return cases


def _spoil(path_of: Callable[[Path], Path], how: str) -> Callable[[Path], Path]:
    """Damage one .npz of a run: cut short, foreign (other arrays), text, or empty."""
    def spoil(rd: Path) -> Path:
        p = path_of(rd)
        if how == "truncated":
            truncate(p)
        elif how == "foreign":
            np.savez(p, something=np.zeros(3))
        elif how == "text":
            p.write_text("hello")
        else:
            p.write_bytes(b"")
        return rd
    return spoil


NPZ_DAMAGE = ("truncated", "foreign", "text", "empty")


def _npz_cases() -> list:
    cases = []
    for how in NPZ_DAMAGE:
        index = _spoil(index_file, how)
        cases += [
            pytest.param(lambda c, index=index: ["search", c.image, "--run",
                                                 str(index(rd := c.run())), "--index",
                                                 str(index_file(rd).parent), "--device", "cpu"],
                         id=f"search: --index entries .npz {how}"),
        ]
    return cases


#: Everything else: bad settings, missing or foreign inputs, unreadable images, and paths that
#: cannot be written (a file where a directory is expected, a path under /proc).
OTHER_CASES = [
    # prepare
    pytest.param(lambda c: ["prepare", "--source", str(c.tmp / "nope"), "--cache-dir", c.cache],
                 id="prepare: source missing"),
    pytest.param(lambda c: ["prepare", "--source", str(c.file("a.txt")), "--cache-dir", c.cache],
                 id="prepare: source a text file"),
    pytest.param(lambda c: ["prepare", "--source", str(truncate(make_tiny_imagenet(
        c.tmp / "z", 2, 2, zip_it=True))), "--cache-dir", c.cache], id="prepare: truncated zip"),
    pytest.param(lambda c: ["prepare", "--source", str(c.foreign_npz()), "--cache-dir", c.cache],
                 id="prepare: source a foreign .npz"),
    pytest.param(lambda c: ["prepare", "--source", str(c.tmp), "--cache-dir", c.cache],
                 id="prepare: folder without the layout"),
    pytest.param(lambda c: prepare(c, cache=str(c.file("f"))), id="prepare: cache-dir a file"),
    pytest.param(lambda c: prepare(c, cache=str(c.file("f") / "sub")),
                 id="prepare: cache-dir under a file"),
    pytest.param(lambda c: prepare(c, cache="/proc/neuralcodes-cache"),
                 id="prepare: cache-dir unwritable (/proc)"),
    pytest.param(lambda c: prepare(c, "--set", "data.ood_classes=99"),
                 id="prepare: too many ood classes"),
    pytest.param(lambda c: prepare(c, "--set", 'data.ood_wnids=["n123", "n456"]'),
                 id="prepare: unknown ood wnid"),
    pytest.param(lambda c: prepare(c, "--set", "data.ood_wnids=n123"),
                 id="prepare: ood wnids not a list"),
    pytest.param(lambda c: prepare(c, "--workers", "0", cache=str(c.tmp / "new-cache")),
                 id="prepare: --workers 0"),
    pytest.param(lambda c: prepare(c, "--workers", "0"), id="prepare: --workers 0, cache built"),
    pytest.param(lambda c: prepare(c, "--workers", "many"), id="prepare: --workers many"),
    pytest.param(lambda c: prepare(c, "--set", "data.ood_classes=-1"),
                 id="prepare: data.ood_classes=-1"),
    pytest.param(lambda c: prepare(c, "--set", "data.max_classes=0"),
                 id="prepare: data.max_classes=0"),
    pytest.param(lambda c: prepare(c, "--set", "data.max_per_class=0"),
                 id="prepare: data.max_per_class=0"),
    pytest.param(lambda c: prepare(c, "--ood-classes", "2"), id="prepare: a removed flag"),
    pytest.param(lambda c: prepare(c, "--export-splits", str(c.tmp / "no" / "dir" / "s.csv")),
                 id="prepare: --export-splits in a missing folder"),
    # train
    pytest.param(lambda c: train(c, "--set", "train.lr=-1"), id="train: negative lr"),
    pytest.param(lambda c: train(c, "--set", "train.batch_size=0"), id="train: batch size 0"),
    pytest.param(lambda c: train(c, "--set", "train.bogus=1"), id="train: unknown setting"),
    pytest.param(lambda c: train(c, "--set", "trainlr"), id="train: --set without a dot"),
    pytest.param(lambda c: train(c, "--set", "model.conv_widths=abc"), id="train: bad widths"),
    pytest.param(lambda c: train(c, "--precision", "fp12"), id="train: bad precision"),
    pytest.param(lambda c: train(c, "--device", "tpu"), id="train: bad device"),
    pytest.param(lambda c: train(c, "--epochs", "many"), id="train: --epochs many"),
    pytest.param(lambda c: train(c, "--config", str(c.file("c.json", "{oops"))),
                 id="train: --config corrupt"),
    pytest.param(lambda c: train(c, "--config", str(c.tmp / "none.json")),
                 id="train: --config missing"),
    pytest.param(lambda c: train(c, "--config", str(c.file("c.json", "[1]"))),
                 id="train: --config a list"),
    pytest.param(lambda c: train(c, "--config", str(c.file("c.json", '{"train": 3}'))),
                 id="train: --config section not an object"),
    pytest.param(lambda c: train(c, "--set", "data.ood_classes=99"),
                 id="train: too many ood classes"),
    pytest.param(lambda c: train(c, "--set", "data.ood_classes=5"),
                 id="train: one in-domain class"),
    pytest.param(lambda c: train(c, "--data", str(c.tmp / "nope")), id="train: data missing"),
    pytest.param(lambda c: train(c, "--data", str(c.file("a.txt"))), id="train: data a file"),
    pytest.param(lambda c: train(c, out=str(c.file("f"))), id="train: --out a file"),
    pytest.param(lambda c: train(c, out=str(c.file("f") / "run")), id="train: --out under a file"),
    pytest.param(lambda c: train(c, out="/proc/neuralcodes-run"),
                 id="train: --out unwritable (/proc)"),
    pytest.param(lambda c: train(c, out=str(c.run())), id="train: --out holds a run"),
    pytest.param(lambda c: ["train", "--resume", str(c.run()), "--set", "model.fc_width=8"],
                 id="train: --resume changing the model"),
    # evaluate
    pytest.param(lambda c: ["evaluate", str(c.run()), "--batch-size", "0"],
                 id="evaluate: --batch-size 0"),
    pytest.param(lambda c: ["evaluate", str(c.run()), "--batch-size", "x"],
                 id="evaluate: --batch-size x"),
    pytest.param(lambda c: ["evaluate", str(c.run()), "--set", "model.fc_width=3"],
                 id="evaluate: changing the model"),
    pytest.param(lambda c: ["evaluate", str(c.run()), "--device", "tpu"],
                 id="evaluate: bad device"),
    pytest.param(lambda c: ["evaluate", str(c.run()), "--checkpoint", "worst"],
                 id="evaluate: bad checkpoint name"),
    # codes
    pytest.param(lambda c: ["codes", str(c.run()), "--force", "--batch-size", "0", "--device",
                            "cpu"], id="codes: --batch-size 0"),
    pytest.param(lambda c: ["codes", str(c.run()), "--force", "--device", "tpu"],
                 id="codes: bad device"),
    pytest.param(lambda c: ["codes", str(c.run()), "--split", "everything"],
                 id="codes: bad split"),
    pytest.param(lambda c: (lambda rd: (shutil.rmtree(rd / "codes"), (rd / "codes").write_text(
        "x"), ["codes", str(rd), "--device", "cpu", "--no-progress"])[2])(c.run()),
        id="codes: codes/ is a file"),
    # retrieval
    pytest.param(lambda c: ["retrieval", str(c.run()), "--pca-images", "0", "--device", "cpu",
                            "--no-progress"], id="retrieval: --pca-images 0"),
    pytest.param(lambda c: ["retrieval", str(c.run()), "--device", "tpu", "--no-progress"],
                 id="retrieval: bad device"),
    pytest.param(lambda c: ["retrieval", str(c.run()), "--device", "tpu"],
                 id="retrieval: bad device, before any work"),
    pytest.param(lambda c: (lambda rd: (shutil.rmtree(RunDir(rd).retrieval, ignore_errors=True),
                                        RunDir(rd).retrieval.write_text("x"),
                                        ["retrieval", str(rd), "--device", "cpu",
                                         "--no-progress"])[2])(c.run()),
                 id="retrieval: retrieval/ is a file"),
    # index
    pytest.param(lambda c: ["index", str(c.tmp / "nope"), "--run", str(c.w.run)],
                 id="index: folder missing"),
    pytest.param(lambda c: ["index", str(c.file("f")), "--run", str(c.w.run)],
                 id="index: folder is a file"),
    pytest.param(lambda c: (c.file("bad.jpg", b"\xff\xd8\xff not a jpeg"),
                            ["index", str(c.tmp), "--run", str(c.w.run), "--device", "cpu",
                             "--no-progress"])[1], id="index: only unreadable images"),
    pytest.param(lambda c: ["index", str(c.w.images), "--run", str(c.w.run), "--out",
                            str(c.file("f") / "i"), "--device", "cpu", "--no-progress"],
                 id="index: --out under a file"),
    pytest.param(lambda c: (c.file("notes.txt"),
                            ["index", str(c.w.images), "--run", str(c.w.run), "--out",
                             str(c.tmp), "--device", "cpu", "--no-progress"])[1],
                 id="index: --out a folder that is not an index"),
    pytest.param(lambda c: ["index", str(c.w.images), "--run", str(c.w.run), "--out",
                            "/proc/neuralcodes-index", "--device", "cpu", "--no-progress"],
                 id="index: --out unwritable (/proc)"),
    pytest.param(lambda c: ["index", str(c.w.images), "--run", str(c.w.run), "--batch-size", "0",
                            "--out", str(c.tmp / "i"), "--device", "cpu", "--no-progress"],
                 id="index: --batch-size 0"),
    # search
    pytest.param(lambda c: ["search", str(c.tmp / "nope.jpg"), "--run", str(c.w.run)],
                 id="search: image missing"),
    pytest.param(lambda c: ["search", str(c.file("bad.jpg", b"\xff\xd8\xff garbage")), "--run",
                            str(c.w.run), "--device", "cpu"], id="search: unreadable image"),
    pytest.param(lambda c: ["search", str(c.file("empty.png", b"")), "--run", str(c.w.run),
                            "--device", "cpu"], id="search: empty image file"),
    pytest.param(lambda c: ["search", str(c.tmp), "--run", str(c.w.run), "--device", "cpu"],
                 id="search: image is a folder"),
    pytest.param(lambda c: ["search", c.image, "--run", str(c.w.run), "-k", "0", "--device",
                            "cpu"], id="search: -k 0"),
    pytest.param(lambda c: ["search", c.image, "--run", str(c.w.run), "--layer", "9"],
                 id="search: bad layer"),
    pytest.param(lambda c: ["search", c.image, "--run", str(c.w.run), "--index",
                            str(c.tmp / "none.npz"), "--device", "cpu"],
                 id="search: --index missing"),
    pytest.param(lambda c: ["search", c.image, "--run", str(c.w.run), "--figure",
                            str(c.file("f") / "fig.png"), "--device", "cpu"],
                 id="search: --figure under a file"),
    pytest.param(lambda c: ["search", c.image, "--run", str(c.w.run), "--figure",
                            str(c.tmp / "nonexistent" / "x.png"), "--device", "cpu"],
                 id="search: --figure in a missing folder"),
    # run
    pytest.param(lambda c: run_cmd(c, "--preset", "bogus"), id="run: bad preset"),
    pytest.param(lambda c: run_cmd(c, "--config", str(c.file("c.json", "{oops"))),
                 id="run: --config corrupt"),
    pytest.param(lambda c: run_cmd(c, "--set", "train.lr=-1"), id="run: negative lr"),
    pytest.param(lambda c: run_cmd(c, "--set", "x.y=1"), id="run: unknown section"),
    pytest.param(lambda c: run_cmd(c, "--data", str(c.tmp / "nope")), id="run: data missing"),
    pytest.param(lambda c: run_cmd(c, "--out", str(c.file("f"))), id="run: --out a file"),
    pytest.param(lambda c: run_cmd(c, "--out", "/proc/neuralcodes-run"),
                 id="run: --out unwritable (/proc)"),
    # no command, unknown command
    pytest.param(lambda c: [], id="no command"),
    pytest.param(lambda c: ["frobnicate"], id="unknown command"),
]


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuralcodes: error: "), err
    assert "internal error" not in err, err  # an unanticipated error: a bug to fix
    assert code == 2, err


@pytest.mark.parametrize("argv_of", _run_cases() + _npz_cases() + OTHER_CASES)
def test_bad_input_is_one_line_and_exit_2(argv_of, world: World, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEURALCODES_DEBUG", raising=False)
    argv = argv_of(Case(world, tmp_path))
    capsys.readouterr()
    code = _main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(code, out, err)


@pytest.mark.parametrize("argv_of", [
    pytest.param(lambda c: train(c, "--set", "train.lr=-1"), id="train"),
    pytest.param(lambda c: run_cmd(c, "--set", "model.dropout=2"), id="run"),
    pytest.param(lambda c: train(c, "--config", str(c.file("c.json", '{"model": {"x": 1}}'))),
                 id="train --config"),
    pytest.param(lambda c: run_cmd(c, "--data", str(c.tmp / "nope")), id="run --data missing"),
    pytest.param(lambda c: train(c, "--data", str(c.tmp / "nope")), id="train --data missing"),
])
def test_settings_are_validated_before_any_work(argv_of, world: World, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = _main(argv_of(Case(world, tmp_path)))
    assert_one_line_error(code, *capsys.readouterr())
    assert not (tmp_path / "out").exists()  # not even the run directory was made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories anyway; "
                    "the file-where-a-folder-is-expected and /proc cases cover it")
def test_read_only_directories(world: World, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    c = Case(world, tmp_path)
    rd = c.run()
    (rd / "codes").chmod(0o500)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        for argv in (["codes", str(rd), "--force", "--device", "cpu", "--no-progress"],
                     train(c, out=str(locked / "run")),
                     prepare(c, cache=str(locked / "cache"))):
            assert_one_line_error(_main(argv), *capsys.readouterr())
    finally:
        (rd / "codes").chmod(0o700)
        locked.chmod(0o700)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "NEURALCODES_DEBUG"}


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neuralcodes", *argv], capture_output=True,
                          text=True, timeout=120, env=_env())


def _serve(argv: list[str], tmp: Path) -> tuple[int, str, str]:
    """``neuralcodes serve``; a server that starts (it prints "serving") is stopped at once and
    the test fails."""
    with open(tmp / "serve.err", "w+") as err, subprocess.Popen(
            [sys.executable, "-m", "neuralcodes", "serve", *argv], stdout=subprocess.PIPE,
            stderr=err, text=True, env=_env()) as proc:
        assert proc.stdout is not None
        out = ""
        for line in proc.stdout:
            out += line
            if "serving" in line:
                proc.kill()
                pytest.fail(f"serve started listening: {line.strip()}")
        code = proc.wait(timeout=120)
        err.seek(0)
        return code, out, err.read()


@pytest.mark.parametrize("damage", [
    "best.pt truncated", "config.json corrupt",
    "--index truncated", "run missing", "port taken", "port 0"])
def test_serve_fails_before_listening(damage: str, world: World, tmp_path: Path) -> None:
    rd = Case(world, tmp_path).run()
    port = _free_port()
    extra: list[str] = []
    holder = None
    if damage == "best.pt truncated":
        truncate(RunDir(rd).best_checkpoint)
    elif damage == "config.json corrupt":
        RunDir(rd).config.write_text("{")
    elif damage == "--index truncated":
        extra = ["--index", str(truncate(index_file(rd)).parent)]
    elif damage == "run missing":
        shutil.rmtree(rd)
    elif damage == "port 0":
        port = 0
    else:
        holder = socket.socket()
        holder.bind(("127.0.0.1", port))
        holder.listen()
    try:
        code, out, err = _serve([str(rd), "--port", str(port), "--device", "cpu", *extra],
                                tmp_path)
    finally:
        if holder:
            holder.close()
    assert_one_line_error(code, out, err)


def test_a_real_process_prints_one_line_for_a_truncated_npz(world: World, tmp_path: Path) -> None:
    rd = Case(world, tmp_path).run()
    truncate(index_file(rd))
    done = _subprocess(["search", str(sorted(world.images.iterdir())[0]), "--run", str(rd),
                        "--index", str(index_file(rd)), "--device", "cpu"])
    assert_one_line_error(done.returncode, done.stdout, done.stderr)
    assert str(index_file(rd)) in done.stderr  # the file is named


@pytest.mark.parametrize("how", NPZ_DAMAGE)
@pytest.mark.parametrize("command", ["codes", "search"])
def test_a_damaged_codes_file_of_a_run_is_made_again_saying_why(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str,
        command: str) -> None:
    """Codes are derived: a damaged file records nothing of what made it, so the stage reruns
    (issue 17's one rule) instead of stopping."""
    c = Case(world, tmp_path)
    rd = _spoil(codes_file, how)(c.run())
    argv = {"codes": ["codes", str(rd), "--device", "cpu", "--no-progress"],
            "search": ["search", c.image, "--run", str(rd), "--device", "cpu"]}[command]
    capsys.readouterr()
    assert _main(argv) == 0
    err = capsys.readouterr().err
    assert "ood-prerelu.npz: it records nothing of what made it" in err and "recomputing" in err
    assert CodeSet.load(codes_file(rd)).made_by is not None
