import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from neuralcodes.errors import NeuralCodesError
from neuralcodes.files import atomic_open, atomic_path, read_json, remove_stale_temps, write_json
from neuralcodes.runs import RunDir


def test_write_json_round_trip(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert read_json(tmp_path / "a" / "x.json") == {"k": [1, 2]}


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("finished")
    with pytest.raises(NeuralCodesError, match="could not write .*x.txt: crash"), \
            atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "finished"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_failed_first_write_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "y.txt") as f:
        f.write("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_suffix_last(tmp_path):
    import numpy as np

    from neuralcodes.files import atomic_path

    with atomic_path(tmp_path / "a.npy", suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy")
        np.save(tmp, np.arange(3))
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]


def test_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    write_json(tmp_path / "a.json", {})
    with atomic_path(tmp_path / "b.pt") as tmp:
        torch.save({}, tmp)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_disk_full_in_torch_save_is_one_line_with_the_space_needed(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    with atomic_path(target) as tmp:
        torch.save({"w": torch.zeros(1 << 19)}, tmp)  # 2 MiB: the previous checkpoint
    before = target.read_bytes()
    total = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: total._replace(free=1000))

    def full(obj, f):  # what torch raises when the disk fills during a save
        with open(f, "wb") as out:
            out.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    # the size needed is the new file's (41 MiB), not the previous one's nor what was written
    # when the disk filled; the partial file's bytes count as free (it is removed)
    message = (r"could not write .*last.pt: no space left on device \(it needs about 41 MB; "
               r"0\.0 MB free\)")
    with pytest.raises(NeuralCodesError, match=message) as e, \
            atomic_path(target, size=41 * 2**20) as tmp:
        full({}, tmp)
    assert "\n" not in str(e.value)
    assert target.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    # without a size: how far the write got, as a lower bound
    with pytest.raises(NeuralCodesError, match=r"needs more than 1 KB, where the disk filled"), \
            atomic_path(target) as tmp:
        full({}, tmp)


def test_checkpoints_and_codes_tell_the_disk_full_message_their_size(tmp_path, monkeypatch):
    from neuralcodes import files
    from neuralcodes.model.checkpoint import save_checkpoint, tensor_bytes
    from neuralcodes.retrieval.codes import CodeSet

    w = torch.zeros(1 << 20)  # 4 MiB, saved twice under two names: counted once
    assert tensor_bytes({"model": {"a": w, "b": w}, "n": [torch.zeros(256)]}) == 4 * 2**20 + 1024
    seen = []
    real = files.atomic_path

    def spy(path, suffix="", size=None):
        seen.append(size)
        return real(path, suffix, size)

    monkeypatch.setattr(files, "atomic_path", spy)
    monkeypatch.setattr("neuralcodes.model.checkpoint.atomic_path", spy)
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": w}})
    CodeSet({"6": np.zeros((10, 2048), np.float32)}, np.arange(10), np.zeros(10, int),
            False).save(tmp_path / "c.npz")
    assert seen[0] == 4 * 2**20 and seen[1] >= 10 * 2048 * 4


def test_enospc_oserror_names_the_path(tmp_path):
    message = r"could not write .*x.json: no space left"
    with pytest.raises(NeuralCodesError, match=message), atomic_open(tmp_path / "x.json") as f:
        f.write("{")
        raise OSError(errno.ENOSPC, "No space left on device")


def test_corrupt_json_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"config": {')
    with pytest.raises(NeuralCodesError, match=r"config.json: not valid JSON"):
        RunDir.existing(tmp_path).read_config()


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = tmp_path / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half")
    keep = tmp_path / "checkpoints" / "last.pt"
    keep.write_bytes(b"whole")
    assert remove_stale_temps(tmp_path) == [stale]
    assert keep.exists() and not stale.exists()


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from neuralcodes.runs import RunDir
    with RunDir(sys.argv[1]).lock("train"):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_one_writer_per_run_and_a_dead_holder_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run.root)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        message = rf"in use by another neuralcodes process \(pid {holder.pid} on .*`train`"
        with pytest.raises(NeuralCodesError, match=message), run.lock("evaluate"):
            pass
        (run.root / ".eval.json.x1.tmp").write_text("half")  # what a kill -9 leaves
    finally:
        holder.kill()
        holder.wait()
    with run.lock("evaluate"):  # the kernel released the dead process's lock
        assert not (run.root / ".eval.json.x1.tmp").exists()
