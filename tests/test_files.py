import pytest

from neuralcodes.files import atomic_open, read_json, write_json


def test_write_json_round_trip(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert read_json(tmp_path / "a" / "x.json") == {"k": [1, 2]}


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("finished")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
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
