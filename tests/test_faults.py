"""Bounded fault injection (issue 12 point 8), through the command line only.

- SIGKILL at seeded random points during ``train``: the checkpoints left always load, and
  ``train --resume`` ends with weights bit-identical to an uninterrupted run.
- SIGKILL during ``prepare``, ``codes`` and ``index``: no half-written file is ever taken as
  complete (the next ``prepare`` gives a whole cache that ``train`` uses; every ``.npz`` in the
  run is absent or loads fully).
- ENOSPC during each kind of writer (checkpoint, JSON, figure, codes ``.npz``, image cache): one
  line naming the path, exit 2, and the previous version intact.

Faults are injected into a real ``python -m neuralcodes`` process by a ``sitecustomize`` module
put on its PYTHONPATH (written by the test, below): it counts file events (opening a file for
writing, its first and each large write, fsync, rename) and kills the process at the N-th
(``NC_FAULT_KILL_AT``; ``NC_FAULT_COUNT=FILE`` writes a run's count), or makes the writes after
``NC_FAULT_ENOSPC_AFTER`` bytes and the rename of files named like ``NC_FAULT_ENOSPC`` fail with
ENOSPC.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_tiny_imagenet
from neuralcodes import cli
from neuralcodes.runs import CHECKPOINTS, RunDir

SITECUSTOMIZE = r'''
"""Fault injection for tests/test_faults.py (see there)."""
import atexit, builtins, errno, fnmatch, os, signal

_KILL_AT = int(os.environ.get("NC_FAULT_KILL_AT", "0"))
_ENOSPC = os.environ.get("NC_FAULT_ENOSPC", "")
_AFTER = int(os.environ.get("NC_FAULT_ENOSPC_AFTER", "-1"))
_events = 0


def _event():
    global _events
    _events += 1
    if _KILL_AT and _events >= _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def _full(path):
    return bool(_ENOSPC) and fnmatch.fnmatch(os.path.basename(os.fspath(path)), _ENOSPC)


def _no_space(path):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


class _Writer:
    def __init__(self, f, path):
        self._f, self._path, self._written = f, path, 0

    def write(self, data):
        if not self._written or len(data) >= 4096:  # not every small chunk of a json.dump
            _event()
        if _full(self._path) and _AFTER >= 0 and self._written + len(data) > _AFTER:
            raise _no_space(self._path)
        self._written += len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


_open = builtins.open


def _patched_open(file, mode="r", *args, **kwargs):
    f = _open(file, mode, *args, **kwargs)
    if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
        _event()
        return _Writer(f, file)
    return f


def _renamer(real):
    def rename(src, dst, *args, **kwargs):
        _event()
        if _full(dst):
            raise _no_space(dst)
        return real(src, dst, *args, **kwargs)
    return rename


_fsync = os.fsync


def _patched_fsync(fd):
    _event()
    return _fsync(fd)


builtins.open = _patched_open
if os.environ.get("NC_FAULT_COUNT"):
    atexit.register(lambda: _open(os.environ["NC_FAULT_COUNT"], "w").write(str(_events)))
os.replace, os.rename, os.fsync = _renamer(os.replace), _renamer(os.rename), _patched_fsync
'''

TINY = ["--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
        "--set", "data.ood_classes=2", "--set", "train.batch_size=16", "--set",
        "train.threads=1", "--set", "train.lr=0.01", "--set", "train.patience=99",
        "--device", "cpu", "--no-progress"]
EPOCHS = 12  # never early-stopped (patience 99): a resume with one more epoch writes again


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder, the injector, and a reference run trained without interruption."""
    root = tmp_path_factory.mktemp("faults")
    make_tiny_imagenet(root / "src", 6, 20)
    (root / "inject").mkdir()
    (root / "inject" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    threads = torch.get_num_threads()
    try:
        assert cli.main(train_argv(root, root / "reference")) == 0
    finally:
        torch.set_num_threads(threads)
    return root


def source(base: Path) -> str:
    return str(base / "src" / "tiny-imagenet-200")


def train_argv(base: Path, out: Path, cache: Path | None = None) -> list[str]:
    return ["train", "--out", str(out), "--data", source(base), "--cache-dir",
            str(cache or base / "cache"), "--epochs", str(EPOCHS), *TINY]


def in_process(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return cli.main(argv)
    finally:
        torch.set_num_threads(threads)


def start(base: Path, argv: list[str], **fault: str) -> subprocess.Popen[str]:
    """``python -m neuralcodes ARGV`` with the fault injector (``NC_FAULT_*`` settings)."""
    paths = [str(base / "inject"), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NC_FAULT_")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in paths if p), **fault)
    env.pop("NEURALCODES_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "neuralcodes", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def model_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_npz_whole(folder: Path) -> None:
    """Every .npz under ``folder`` loads completely (no half file under a final name)."""
    for p in folder.rglob("*.npz"):
        with np.load(p) as z:
            for k in z.files:
                z[k]  # noqa: B018 (reads the whole member)


def assert_one_line(code: int, out: str, err: str, names: Path | str) -> str:
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuralcodes: error: "), err
    assert code == 2, err
    assert str(names) in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- SIGKILL


#: How each trial picks its random point: the N-th file event (opening a file for writing, its
#: first and each large write, fsync, rename: lands between and inside the writes of an epoch's
#: files), or a delay after the second epoch (lands anywhere in the computation).
TRIALS = [("event", 1), ("event", 2), ("delay", 3)]


@pytest.mark.parametrize("how, seed", TRIALS, ids=[f"{h}-{s}" for h, s in TRIALS])
def test_training_killed_at_random_then_resumed_is_bit_identical(base: Path, how: str, seed: int,
                                                                 tmp_path: Path) -> None:
    rng = random.Random(seed)
    out = tmp_path / "run"
    if how == "event":
        proc = start(base, train_argv(base, out), NC_FAULT_KILL_AT=str(rng.randint(30, 130)))
    else:
        proc = start(base, train_argv(base, out))
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the second epoch's end, then a random delay
            if line.startswith("epoch   2/"):
                break
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
    code, _, err = finish(proc)
    assert code == -signal.SIGKILL, err  # killed before the end (else the trial proves nothing)
    rd = RunDir(out)
    for which in CHECKPOINTS:  # whatever is there is whole
        if rd.checkpoint(which).exists():
            model_weights(rd.checkpoint(which))
    if rd.last_checkpoint.exists():
        assert in_process(["train", "--resume", str(out), "--no-progress"]) == 0
    else:  # killed before the first epoch ended: starting again is the way on
        assert in_process(train_argv(base, out)) == 0
    ref = RunDir(base / "reference")
    for which in CHECKPOINTS:
        got, want = model_weights(rd.checkpoint(which)), model_weights(ref.checkpoint(which))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), which
    assert not list(out.rglob("*.tmp*"))  # the killed writer's temporary files were removed


def test_prepare_killed_at_random_never_leaves_a_cache_taken_as_built(base: Path,
                                                                      tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    argv = ["prepare", "--source", source(base), "--cache-dir", str(cache), "--set",
            "data.ood_classes=2", "--no-progress"]
    killed = 0
    for kill_at in random.Random(7).sample(range(1, 20), 3):
        code, _, err = finish(start(base, argv, NC_FAULT_KILL_AT=str(kill_at)))
        assert code in (0, -signal.SIGKILL), err
        killed += code == -signal.SIGKILL
        assert in_process(argv) == 0  # builds again, or finds a whole cache
        caches = [p for p in cache.iterdir() if p.name.startswith("tiny-imagenet-")]
        assert len(caches) == 1 and (caches[0] / "manifest.json").is_file()
        shutil.rmtree(cache)
    assert killed >= 2  # the injection did hit
    code, _, err = finish(start(base, argv, NC_FAULT_KILL_AT="6"))
    assert code == -signal.SIGKILL, err
    assert in_process(train_argv(base, tmp_path / "run", cache) + ["--epochs", "1"]) == 0


@pytest.mark.parametrize("command", ["codes", "index"])
def test_codes_and_index_killed_at_random_leave_no_half_file(base: Path, command: str,
                                                             tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "reference", run)
    images = base / "src" / "tiny-imagenet-200" / "test" / "images"
    argv = (["codes", str(run), "--device", "cpu", "--no-progress", "--force"]
            if command == "codes" else
            ["index", str(images), "--run", str(run), "--device", "cpu", "--no-progress"])
    # a whole run makes 10 (codes: two files) or 14 (index: transform, batch, entries, 3
    # layers, manifest) file events (NC_FAULT_COUNT=FILE)
    events = {"codes": 10, "index": 14}[command]
    for kill_at in sorted(random.Random(11).sample(range(1, events + 1), 2)):
        code, _, err = finish(start(base, argv, NC_FAULT_KILL_AT=str(kill_at)))
        assert code == -signal.SIGKILL, err
        assert_npz_whole(run)
    assert in_process(argv) == 0
    assert_npz_whole(run)
    assert list(run.rglob("*.npz"))


# ----------------------------------------------------------------------------- ENOSPC


def _marked(path: Path) -> bytes:
    """Give ``path`` recognisable previous contents (of the right kind where it matters)."""
    if path.suffix == ".json":
        data = json.dumps({"previous": True}).encode()
        path.write_bytes(data)
    return path.read_bytes()


@pytest.mark.parametrize("target, after", [
    ("last.pt", -1),            # checkpoint: torch writes it itself; the rename fails
    ("train_state.json", 10),   # a JSON, cut short after 10 bytes
    ("curves.png", 100),        # a figure
])
def test_no_space_while_training(base: Path, tmp_path: Path, target: str, after: int) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "reference", run)
    path = next(p for p in run.rglob(target))
    before = _marked(path)
    code, out, err = finish(start(base, ["train", "--resume", str(run), "--epochs",
                                         str(EPOCHS + 1), "--no-progress"],
                                  NC_FAULT_ENOSPC=target, NC_FAULT_ENOSPC_AFTER=str(after)))
    lines = [line for line in err.splitlines() if line.startswith("neuralcodes: ")]
    assert "Traceback" not in err and code == 2, err
    assert lines == [err.splitlines()[-1]] and str(path) in lines[0], err
    assert "no space left on device" in lines[0]
    assert path.read_bytes() == before  # the previous version is intact
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.parametrize("command", ["evaluate", "codes"])
def test_no_space_while_writing_results(base: Path, tmp_path: Path, command: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(base / "reference", run)
    if command == "evaluate":
        path = RunDir(run).eval_json
        path.write_text('{"previous": true}')
        argv = ["evaluate", str(run), "--device", "cpu", "--no-progress", "--force"]
    else:
        assert in_process(["codes", str(run), "--device", "cpu", "--no-progress"]) == 0
        path = RunDir(run).codes("ood", False)
        argv = ["codes", str(run), "--device", "cpu", "--no-progress", "--force"]
    before = path.read_bytes()
    code, out, err = finish(start(base, argv, NC_FAULT_ENOSPC=path.name,
                                  NC_FAULT_ENOSPC_AFTER="1000"))
    line = assert_one_line(code, out, err, path)
    assert "no space left on device" in line
    assert path.read_bytes() == before
    assert not list(run.rglob("*.tmp*"))
    assert_npz_whole(run)


@pytest.mark.parametrize("target", ["images.npy", "labels.npy"])
def test_no_space_while_building_the_cache(base: Path, tmp_path: Path, target: str) -> None:
    cache = tmp_path / "cache"
    argv = ["prepare", "--source", source(base), "--cache-dir", str(cache), "--set",
            "data.ood_classes=2", "--no-progress"]
    code, out, err = finish(start(base, argv, NC_FAULT_ENOSPC=target,
                                  NC_FAULT_ENOSPC_AFTER="64"))
    line = assert_one_line(code, out, err, cache)
    assert "no space left on device" in line
    assert not [p for p in cache.iterdir() if p.name.startswith("tiny-imagenet-")]
