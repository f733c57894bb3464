"""The data pipeline: source reading, the decoded cache, errors, and the assignment's splits."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SHARED_ZIP, extras_paths, fixture_wnids, make_tiny_imagenet
from neuralcodes.cli import main
from neuralcodes.config import DataConfig
from neuralcodes.data import Dataset, cache, decode, load_data, prepare, source
from neuralcodes.datasets import tinyimagenet
from neuralcodes.errors import NeuralCodesError


def _cache_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name != "downloads")


# -- the generated fixture ---------------------------------------------------------------------


def test_fixture_has_official_layout(tmp_path: Path) -> None:
    z = make_tiny_imagenet(tmp_path, 3, 4, extras=True, zip_it=True)
    names = set(zipfile.ZipFile(z).namelist())
    w = fixture_wnids(3)
    for rel in ["wnids.txt", "words.txt", f"train/{w[0]}/{w[0]}_boxes.txt",
                f"train/{w[2]}/images/{w[2]}_3.JPEG", "val/val_annotations.txt",
                "val/images/val_0.JPEG", "test/images/test_0.JPEG",
                *extras_paths(3, 4).values()]:
        assert f"tiny-imagenet-200/{rel}" in names
    assert not (tmp_path / "tiny-imagenet-200").exists()  # zip_it writes only the zip


# -- building the cache ------------------------------------------------------------------------


def test_prepare_decodes_reports_and_converts(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 4, 5, extras=True)
    ds = Dataset.load(prepare(src, tmp_path / "cache", progress=False))
    extra = extras_paths(4, 5)
    # 20 good + the greyscale one; the corrupt and the wrong-size file are rejected by name
    assert len(ds) == 21 and ds.images.shape == (21, 64, 64, 3) and ds.images.dtype == np.uint8
    assert isinstance(ds.images, np.memmap)
    rejected = {r["path"]: r["reason"] for r in ds.manifest["rejected"]}
    assert set(rejected) == {extra["corrupt"], extra["wrong_size"]}
    assert "decode" in rejected[extra["corrupt"]] and "48x32" in rejected[extra["wrong_size"]]
    assert ds.manifest["num_rejected"] == 2
    err = caplog.text
    assert extra["corrupt"] in err and extra["wrong_size"] in err and "2 train file" in err
    # greyscale became RGB with equal channels; labels, names and paths line up
    grey = ds.images[ds.paths.index(extra["greyscale"])].astype(int)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert ds.wnids == fixture_wnids(4) and ds.names[1] == "class 1, synthetic"
    assert ds.labels.dtype == np.int64 and np.bincount(ds.labels).tolist() == [6, 5, 5, 5]
    assert ds.manifest["counts"] == dict(zip(ds.wnids, [6, 5, 5, 5], strict=True))
    assert all(p.startswith(f"train/{ds.wnids[c]}/images/") for p, c in zip(ds.paths, ds.labels,
                                                                               strict=True))
    # pixels are the decoded JPEG, untouched
    first = np.asarray(Image.open(src / ds.paths[7]).convert("RGB"))
    assert np.array_equal(ds.images[7], first)
    # the compacted .npy is an ordinary numpy file
    assert np.load(ds.root / "images.npy").shape == (21, 64, 64, 3)
    assert ds.manifest["format"] == cache.FORMAT_VERSION and len(ds.manifest["source"]["checksum"])


def test_zip_folder_and_parent_folder_give_same_images(tmp_path: Path) -> None:
    folder = make_tiny_imagenet(tmp_path / "f", 3, 4, extras=True)
    zipped = make_tiny_imagenet(tmp_path / "z", 3, 4, extras=True, zip_it=True)
    cache = tmp_path / "cache"
    a = Dataset.load(prepare(folder, cache, progress=False))
    b = Dataset.load(prepare(zipped, cache, progress=False))
    c_root = prepare(folder.parent, cache, progress=False)  # the root nested one level down
    assert c_root == a.root and a.root != b.root
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.paths == b.paths and a.names == b.names


def test_pool_workers_match_serial(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 3, 6, extras=True, zip_it=True)
    serial = Dataset.load(prepare(src, tmp_path / "c1", workers=1, progress=False))
    parallel = Dataset.load(prepare(src, tmp_path / "c2", workers=2, progress=False))
    assert np.array_equal(serial.images, parallel.images)
    assert serial.manifest["rejected"] == parallel.manifest["rejected"]


def test_same_source_does_no_work(tiny_source: Path, tiny_cache_root: Path, tiny_cache: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    mtime = (tiny_cache / "images.npy").stat().st_mtime_ns

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(decode, "decode_all", fail)
    assert prepare(tiny_source, tiny_cache_root, progress=False) == tiny_cache
    assert (tiny_cache / "images.npy").stat().st_mtime_ns == mtime


def test_changed_source_gets_a_new_cache(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 2, 3)
    first = prepare(src, tmp_path / "cache", progress=False)
    w = fixture_wnids(2)[1]
    Image.new("RGB", (64, 64), (9, 9, 9)).save(src / f"train/{w}/images/{w}_99.JPEG")
    second = prepare(src, tmp_path / "cache", progress=False)
    assert second != first and first.exists()
    ds = Dataset.load(second)
    assert len(ds) == 7 and ds.paths[-1] == f"train/{w}/images/{w}_99.JPEG"


def test_unchanged_zip_is_not_even_reread(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    z = make_tiny_imagenet(tmp_path / "src", 2, 3, zip_it=True)
    first = prepare(z, tmp_path / "cache", progress=False)
    real_open = source.Source.open

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("source re-read")

    monkeypatch.setattr(source.Source, "open", fail)
    assert prepare(z, tmp_path / "cache", progress=False) == first
    # a rewritten zip (new size/mtime) is read again and, with new content, cached anew
    monkeypatch.setattr(source.Source, "open", real_open)
    make_tiny_imagenet(tmp_path / "src", 2, 4, zip_it=True)
    second = prepare(z, tmp_path / "cache", progress=False)
    assert second != first and len(Dataset.load(second)) == 8


def test_default_cache_dir_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEURALCODES_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("NEURALCODES_CACHE")
    assert cache.default_cache_dir() == tmp_path / "x" / "neuralcodes"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "neuralcodes"


# -- errors: one clear message, nothing half-written --------------------------------------------


def _zip_with(tmp_path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as f:
        for name, payload in members.items():
            f.writestr(name, payload)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            f.writestr(info, "../../etc/passwd")
    return z


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


LAYOUT = {"t/wnids.txt": b"n00000001\n", "t/train/n00000001/images/n00000001_0.JPEG": b""}


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.zip", "source not found"),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "neither a zip"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "wrong layout"),
    (lambda p: _zip_with(p, {"readme.txt": b"x"}), "wrong layout"),
    (lambda p: _zip_with(p, {**LAYOUT, "t/../../evil.txt": b"x"}), "unsafe archive member"),
    (lambda p: _zip_with(p, {**LAYOUT, "/etc/evil.txt": b"x"}), "unsafe archive member"),
    (lambda p: _zip_with(p, LAYOUT, symlink="t/train/n00000001/images/link.JPEG"), "link"),
    (lambda p: _zip_with(p, {"t/wnids.txt": b"n00000001\nn00000002\n",
                             "t/train/n00000001/images/n00000001_0.JPEG": _jpeg_bytes()}),
     "no training images"),
])
def test_bad_sources_fail_cleanly(tmp_path: Path, make, message: str) -> None:  # noqa: ANN001
    source = make(tmp_path)
    with pytest.raises(NeuralCodesError, match=message):
        prepare(source, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("cut", ["first half", "last 10 bytes"])
def test_truncated_zip_says_damaged_and_download_again(tmp_path: Path, cut: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    z = make_tiny_imagenet(tmp_path / "src", 2, 3, zip_it=True)
    data = z.read_bytes()
    z.write_bytes(data[: len(data) // 2] if cut == "first half" else data[:-10])
    code = main(["prepare", "--data", str(z), "--cache-dir", str(tmp_path / "cache"),
                 "--no-progress"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert str(z) in lines[0] and "damaged or truncated" in lines[0], lines[0]
    assert "download it again" in lines[0] and "neither" not in lines[0], lines[0]


def test_folder_symlink_refused(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 1, 2)
    w = fixture_wnids(1)[0]
    (src / f"train/{w}/images/link.JPEG").symlink_to(src / f"train/{w}/images/{w}_0.JPEG")
    with pytest.raises(NeuralCodesError, match="link"):
        prepare(src, tmp_path / "cache", progress=False)


def test_absurd_member_is_rejected_not_read(tmp_path: Path) -> None:
    huge = b"\xff\xd8" + bytes(tinyimagenet.MAX_IMAGE_BYTES)
    z = _zip_with(tmp_path, {"t/wnids.txt": b"n00000001\n",
                             "t/train/n00000001/images/n00000001_0.JPEG": _jpeg_bytes(),
                             "t/train/n00000001/images/n00000001_1.JPEG": huge})
    ds = Dataset.load(prepare(z, tmp_path / "cache", progress=False))
    assert len(ds) == 1
    assert ds.manifest["rejected"] == [{"path": "train/n00000001/images/n00000001_1.JPEG",
                                        "reason": f"absurd size ({len(huge):,} bytes)"}]


@pytest.mark.parametrize("lie", ["flipped byte", "understated size"])
def test_lying_member_is_rejected(tmp_path: Path, lie: str) -> None:
    """A member whose bytes disagree with its directory entry (CRC or size) is left out."""
    good, bad = "t/train/n00000001/images/n00000001_0.JPEG", "t/train/n00000001/images/x.JPEG"
    z = _zip_with(tmp_path, {"t/wnids.txt": b"n00000001\n", good: _jpeg_bytes(),
                             bad: _jpeg_bytes()})
    raw = bytearray(z.read_bytes())
    info = zipfile.ZipFile(z).getinfo(bad)
    if lie == "flipped byte":
        at = info.header_offset + 30 + len(bad) + len(info.extra) + info.file_size // 2
        raw[at] ^= 0xFF
    else:  # the central directory claims 10 bytes fewer than the member holds
        entry = raw.rfind(bad.encode()) - 46
        assert raw[entry: entry + 4] == b"PK\x01\x02"
        for field in (20, 24):  # compressed and uncompressed size
            raw[entry + field: entry + field + 4] = (info.file_size - 10).to_bytes(4, "little")
    z.write_bytes(bytes(raw))
    ds = Dataset.load(prepare(z, tmp_path / "cache", progress=False))
    assert ds.paths == ["train/n00000001/images/n00000001_0.JPEG"]
    [rejected] = ds.manifest["rejected"]
    assert rejected["path"] == "train/n00000001/images/x.JPEG"
    assert rejected["reason"].startswith("corrupt zip entry")


def test_no_disk_space_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 2, 3)
    real = cache.shutil.disk_usage
    monkeypatch.setattr(cache.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=1000))
    with pytest.raises(NeuralCodesError, match="not enough disk space"):
        prepare(src, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_enospc_while_writing_is_a_clear_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 2, 3)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(decode, "allocate_images", full)
    with pytest.raises(NeuralCodesError, match="no space left"):
        prepare(src, tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_interrupted_build_leaves_nothing_and_reruns(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 2, 3)
    real = decode.decode_chunk

    def interrupted(task):  # noqa: ANN001, ANN202
        real(task)
        raise KeyboardInterrupt

    monkeypatch.setattr(decode, "decode_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "cache", workers=1, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(decode, "decode_chunk", real)
    assert len(Dataset.load(prepare(src, tmp_path / "cache", progress=False))) == 6


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason=f"shared real-image zip absent: {SHARED_ZIP}")
def test_ctrl_c_during_a_parallel_build_leaves_nothing(tmp_path: Path) -> None:
    code = ("import sys; from neuralcodes.data import prepare; "
            "prepare(sys.argv[1], sys.argv[2], workers=2, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(SHARED_ZIP), str(tmp_path)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".building-*/images.npy")) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the build has started (decoding takes seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert list(tmp_path.iterdir()) == []


def test_stale_build_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 2, 3)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "cache" / f".building-0123456789abcdef-{dead}-x"
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    prepare(src, tmp_path / "cache", progress=False)
    assert not stale.exists()


def test_unfinished_or_damaged_cache_is_refused(tmp_path: Path, tiny_cache: Path) -> None:
    with pytest.raises(NeuralCodesError, match="no prepared image cache"):
        Dataset.load(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text((tiny_cache / "manifest.json").read_text())
    with pytest.raises(NeuralCodesError, match="damaged"):
        Dataset.load(broken)


# -- the command line --------------------------------------------------------------------------


def test_cli_prepare_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = make_tiny_imagenet(tmp_path / "src", 5, 4, extras=True, zip_it=True)
    argv = ["prepare", "--source", str(src), "--cache-dir", str(tmp_path / "c"),
            "--set", "data.ood_classes=2", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "built now" in out and "21 in 5 classes; 2 file(s) rejected" in out
    assert "train 11 / val 1 / test 1 (3 in-domain classes); ood 8 (2 classes" in out
    assert str(tmp_path / "c") in out
    assert main(argv) == 0
    assert "already prepared" in capsys.readouterr().out


def test_cli_prepare_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare", "--source", str(tmp_path / "nope"), "--cache-dir",
                 str(tmp_path / "c"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralcodes: error: source not found") and "\n" not in err


# -- the real images ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_ZIP.is_file(), reason=f"shared real-image zip absent: {SHARED_ZIP}")
def test_shared_40_class_zip(tmp_path: Path) -> None:
    ds, sp = load_data(DataConfig(source=str(SHARED_ZIP), cache_dir=str(tmp_path)),
                       progress=False)  # its speed: benchmarks/prepare.py
    assert len(ds) == 20_000 and len(ds.wnids) == 40 and ds.manifest["num_rejected"] == 0
    assert set(ds.manifest["counts"].values()) == {500}
    assert sp.sizes() == {"train": 12_000, "val": 1_500, "test": 1_500, "ood": 5_000,
                          "in_classes": 30, "ood_classes": 10}
    assert len(set(ds.labels[sp.ood].tolist())) == 10  # (the exact order: test_splits.py)
    assert ds.names[0] and ds.names[0] != ds.wnids[0]
    # greyscale sources were converted: some images have three equal channels, most do not
    sample = ds.images[::50].astype(np.int16)
    grey = (np.abs(sample[..., 0] - sample[..., 1]).max(axis=(1, 2)) == 0)
    assert 0 < grey.sum() < len(sample) // 5
    manifest = json.loads((ds.root / "manifest.json").read_text())
    assert manifest["splits"]["default"]["hash"] == sp.hash
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".building")]
