"""Every result knows what made it (issue 17): stages rerun exactly when the fingerprint of what
made their files changed; search and serve never rank against codes of other weights; indexes
carry their identity; only prepare/train/run download or write outside the run directory."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuralcodes import lineage
from neuralcodes.cli import main as cli
from neuralcodes.files import read_json, write_json
from neuralcodes.retrieval import CodeSet, Searcher, build_index
from neuralcodes.retrieval.collection import FolderIndex
from neuralcodes.runs import RunDir, TrainedRun

TINY = ["--set", "model.conv_widths=[4,4,4,4,4]", "--set", "model.fc_width=16",
        "--set", "train.lr=0.01", "--set", "data.ood_classes=2", "--set", "train.patience=5",
        "--set", "train.restore_best=false", "--set", "retrieval.pca_dims=[4,8]",
        "--no-progress", "--device", "cpu"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("neuralcodes: error: ") and "\n" not in err, err
    return err


@pytest.fixture
def run_copy(web_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared tiny trained run, copied as `cp -r` would (new file times)."""
    out = tmp_path / "copied-run"
    shutil.copytree(web_run, out, copy_function=shutil.copy)
    return out


def other_weights(run: Path) -> None:
    """best.pt now holds other weights one epoch later, as after training on."""
    best = RunDir(run).best_checkpoint
    ckpt = torch.load(best, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    for t in ckpt["model"].values():
        if t.is_floating_point():
            t.add_(0.05 * torch.randn(t.shape, generator=gen))
    ckpt["epoch"] += 1
    torch.save(ckpt, best)


def ood_png(run: Path, tmp_path: Path, position: int = 0) -> Path:
    """Ood image ``position`` of the run as a lossless PNG file."""
    data = TrainedRun.open(run)
    path = tmp_path / f"ood-{position}.png"
    Image.fromarray(data.images(np.array([data.splits.ood[position]]))[0]).save(path)
    return path


# --------------------------------------------------------------------------- the rule


def test_a_fingerprint_says_what_changed_in_words(tmp_path):
    w3 = {"file": "best.pt", "epoch": 3, "sha256": "3f2a" * 16}
    w4 = {"file": "best.pt", "epoch": 4, "sha256": "9c1e" * 16}
    old = lineage.make("figures", weights=w3, settings={"retrieval.k": 3})
    path = tmp_path / "top3.json"
    write_json(path, lineage.stamped({"queries": []}, old))
    assert lineage.is_current(path, old) == (True, "top3.json is up to date")
    ok, why = lineage.is_current(path, lineage.make("figures", weights=w4,
                                                    settings={"retrieval.k": 3}))
    assert not ok and "the weights changed" in why and "epoch 4" in why and "9c1e9c1e9c1e" in why
    ok, why = lineage.is_current(path, lineage.make("figures", weights=w3,
                                                    settings={"retrieval.k": 6}))
    assert not ok and "retrieval.k changed (3 -> 6)" in why
    write_json(path, {"queries": []})  # written before fingerprints were recorded
    assert "records nothing of what made it" in lineage.is_current(path, old)[1]


@pytest.mark.slow
def test_training_on_then_run_recomputes_everything_from_the_new_weights(
        tiny_source, tiny_cache_root, tmp_path, capsys):
    """`train --resume --epochs N` then `run --epochs N`: codes, mAP, figures, evidence, PCA and
    report all come from the new weights, and the report says which; `run --epochs M` on the
    finished run trains on to M."""
    run = tmp_path / "q"
    argv = ["run", "--preset", "quick", "--data", str(tiny_source), "--cache-dir",
            str(tiny_cache_root), "--out", str(run), *TINY]
    assert cli([*argv, "--epochs", "1"]) == 0
    rd = RunDir(run)
    first = sha256(rd.best_checkpoint)
    assert cli(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert read_json(rd.train_state)["epochs_completed"] == 2
    capsys.readouterr()
    assert cli([*argv, "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    best = sha256(rd.best_checkpoint)
    assert best != first
    assert "evaluate: eval.json: the weights changed since it was computed" in err
    assert "ood-prerelu.npz: the weights changed" in err and "recomputing" in err

    def check_all(epoch: int, sha: str) -> None:
        artifacts = [rd.eval_json, rd.codes("ood", False), rd.codes("ood", True), rd.map_json,
                     rd.top_json(5), rd.top_figure(5), rd.top_figure(5, "6"),
                     rd.evidence_json, rd.pca_json, rd.pca_plot, rd.methods_file("json"),
                     rd.methods_file("png"), rd.report_md, rd.report_html]
        for path in artifacts:
            made = lineage.recorded(path)
            assert made is not None, path
            assert made["weights"] == {"file": "best.pt", "epoch": epoch, "sha256": sha}, path
        md = rd.report_md.read_text()
        assert f"epoch\n{epoch} (sha256 `{sha[:12]}`)" in md or \
            f"epoch {epoch} (sha256 `{sha[:12]}`)" in md
        assert "Left out" not in md

    check_all(2, best)
    # the codes are those of the new weights, not merely relabelled
    from neuralcodes.retrieval import extract_codes

    trained = TrainedRun.load(run, device="cpu")
    codes = CodeSet.load(rd.codes("ood", False))
    fresh = extract_codes(trained.model, trained.dataset.images[codes.index], ("6",),
                          progress=False)["6"]
    np.testing.assert_allclose(codes.layers["6"], fresh, atol=1e-5)

    # a finished 2-epoch run with --epochs 3 trains on (no early stopping ended it)
    capsys.readouterr()
    assert cli([*argv, "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    assert "trained 2 epochs; the limit is now 3: training on" in err
    assert read_json(rd.train_state)["epochs_completed"] == 3
    check_all(3, sha256(rd.best_checkpoint))
    # and once more: nothing left to do, every stage says it is skipped
    capsys.readouterr()
    assert cli([*argv, "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    for stage in ("evaluate", "mAP", "figures", "evidence", "PCA study", "report"):
        assert f"{stage}: skipped: " in err, stage


def test_an_early_stopped_run_says_how_to_train_on(tmp_path):
    from neuralcodes.training.records import training_left

    rd = RunDir(tmp_path)
    write_json(rd.train_state, {"epochs_completed": 3, "stopped_epoch": 3, "stopped_early": True,
                                "patience": 0, "finished": True})
    todo, line = training_left(tmp_path, 4)
    assert not todo and "early stopping ended" in line and "at epoch 3" in line
    assert f"neuralcodes train --resume {tmp_path} --epochs 4 --set train.patience=1" in line
    assert not training_left(tmp_path, 4, patience=0)[0]
    assert training_left(tmp_path, 4, patience=1)[0]  # the patience raised: it trains on
    assert training_left(tmp_path, 3) == (False, f"skipped: {tmp_path} already holds a finished "
                                                 "training run (3 epochs)")
    write_json(rd.train_state, {"epochs_completed": 3, "stopped_early": False, "finished": True})
    assert training_left(tmp_path, 4)[0]


def test_train_resume_on_an_early_stopped_run_says_how_to_go_on(run_copy, capsys):
    rd = RunDir(run_copy)
    last = torch.load(rd.last_checkpoint, weights_only=False)
    last["early_stopping"].update(bad_epochs=1, stopped_epoch=2)  # as if epoch 2 stopped it
    torch.save(last, rd.last_checkpoint)
    capsys.readouterr()
    assert cli(["train", "--resume", str(run_copy), "--epochs", "3", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "not training on: early stopping ended" in err and "train.patience=1" in err
    assert read_json(rd.train_state)["epochs_completed"] == 2
    assert cli(["train", "--resume", str(run_copy), "--epochs", "3", "--no-progress",
                "--set", "train.patience=1"]) == 0
    assert read_json(rd.train_state)["epochs_completed"] == 3


# --------------------------------------------------------------------------- retrieval settings


def test_a_changed_k_reaches_the_files_and_their_contents(run_copy, capsys):
    rd = RunDir(run_copy)
    base = ["retrieval", str(run_copy), "--no-progress", "--set", "retrieval.pca_dims=[4]",
            "--device", "cpu"]
    assert cli(base) == 0
    map_bytes = rd.map_json.read_bytes()
    capsys.readouterr()
    assert cli([*base, "--set", "retrieval.k=3"]) == 0
    err = capsys.readouterr().err
    top = read_json(rd.top_json(3))
    assert top["k"] == 3 and all(len(hits) == 3 for q in top["queries"]
                                 for hits in q["layers"].values())
    for path in (rd.top_figure(3), rd.top_figure(3, "6"), rd.evidence_json):
        assert lineage.recorded(path)["settings"]["retrieval.k"] == 3, path
    assert "evidence: evidence.json: retrieval.k changed (5 -> 3): recomputing" in err
    assert rd.map_json.read_bytes() == map_bytes  # k does not change the mAP: kept
    assert "mAP: skipped: map.json is up to date" in err
    assert read_json(rd.top_json(5))["k"] == 5  # the k=5 figures stay what they say


def test_search_with_relu_true_ranks_post_relu_codes(run_copy, tmp_path, capsys):
    query = tmp_path / "red.png"  # far from every ood image: pre- and post-ReLU scores differ
    Image.new("RGB", (64, 64), (200, 30, 30)).save(query)
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(run_copy), "-k", "4", "--layer", "7",
                "--device", "cpu", "--set", "retrieval.relu=true"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("layer 7, post-ReLU codes")
    scores = [float(line.split()[1]) for line in out[1:]]
    image = np.asarray(Image.open(query).convert("RGB"))[None]
    run = TrainedRun.open(run_copy, device="cpu")
    post = Searcher(run, relu=True).search_images(image, "7", 4)[0]
    pre = Searcher(run, relu=False).search_images(image, "7", 4)[0]
    assert scores == pytest.approx([h.score for h in post], abs=1e-4)
    assert abs(scores[0] - pre[0].score) > 1e-3  # not the pre-ReLU ranking


# --------------------------------------------------------------------------- search, serve, index


def test_search_recomputes_codes_of_other_weights_or_refuses_where_it_may_not_write(
        run_copy, tmp_path, capsys, monkeypatch):
    rd = RunDir(run_copy)
    query = ood_png(run_copy, tmp_path, 0)
    assert cli(["search", str(query), "--run", str(run_copy), "--device", "cpu"]) == 0
    old = CodeSet.load(rd.codes("ood", False))
    other_weights(run_copy)
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(run_copy), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "ood-prerelu.npz: the weights changed since it was computed" in captured.err
    codes = CodeSet.load(rd.codes("ood", False))
    assert codes.made_by["weights"]["sha256"] == sha256(rd.best_checkpoint)
    assert not np.allclose(codes.layers["6"], old.layers["6"])
    first = captured.out.splitlines()[1].split()
    assert first[0] == "1" and float(first[1]) == pytest.approx(1.0, abs=1e-4)  # itself

    other_weights(run_copy)  # again, now where the run may not be written to
    monkeypatch.setattr("neuralcodes.retrieval.codes.os.access", lambda *a: False)
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(run_copy), "--device", "cpu"]) == 2
    err = one_error_line(capsys)
    assert "the weights changed" in err and f"`neuralcodes codes {run_copy}`" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_index_of_other_weights_or_a_malformed_one_is_refused(run_copy, tmp_path, capsys):
    import fastapi.testclient

    from neuralcodes.web import create_app

    folder = tmp_path / "own"
    folder.mkdir()
    for i, colour in enumerate(("red", "blue", "green")):
        Image.new("RGB", (50 + 10 * i, 64), colour).save(folder / f"{colour}.png")
    update = build_index(folder, TrainedRun.open(run_copy, device="cpu", progress=False))
    index = update.path
    made = FolderIndex(index).made_by
    assert update.count == 3 and made["settings"]["run"] == "copied-run"
    assert made["weights"]["sha256"] == sha256(RunDir(run_copy).best_checkpoint)
    query = folder / "red.png"

    short = tmp_path / "short"  # malformed: its manifest records more images than it holds
    shutil.copytree(index, short)
    manifest = json.loads((short / "manifest.json").read_text())
    (short / "manifest.json").write_text(json.dumps({**manifest, "count": 4}))
    capsys.readouterr()
    assert cli(["search", str(query), "--run", str(run_copy), "--index", str(short)]) == 2
    assert "short does not hold what it records" in one_error_line(capsys)

    other = RunDir(run_copy).best_checkpoint.read_bytes()
    other_weights(run_copy)
    now = sha256(RunDir(run_copy).best_checkpoint)
    assert cli(["search", str(query), "--run", str(run_copy), "--index", str(index)]) == 2
    err = one_error_line(capsys)
    assert f"{index.name} was made with weights {made['weights']['sha256'][:12]} (epoch 2" in err
    assert f"this run's best.pt is {now[:12]} (epoch 3)" in err
    assert "`neuralcodes index FOLDER --run" in err

    port = _free_port()
    assert cli(["serve", str(run_copy), "--index", str(index), "--port", str(port),
                "--device", "cpu"]) == 2
    assert "was made with weights" in capsys.readouterr().err.strip().splitlines()[-1]

    for bad, words in ((index, "was made with weights"), (short, "does not hold what it")):
        app = create_app(run_copy, bad, device="cpu")
        with fastapi.testclient.TestClient(app, raise_server_exceptions=False) as client:
            info = client.get("/api/info").json()
            assert [d["name"] for d in info["databases"]] == ["ood"]
            res = client.post("/api/search", data={"database": "index"},
                              files={"file": ("q.png", query.read_bytes(), "image/png")})
            assert res.status_code == 409 and words in res.json()["detail"]
            assert client.post("/api/search", files={"file": ("q.png", query.read_bytes(),
                                                             "image/png")}).status_code == 200
    RunDir(run_copy).best_checkpoint.write_bytes(other)  # back to the index's weights
    assert cli(["search", str(query), "--run", str(run_copy), "--index", str(index)]) == 0


# --------------------------------------------------------------------------- where runs live


def test_a_copied_run_directory_keeps_working_and_stays_current(web_run, tmp_path, capsys):
    study = ["--no-progress", "--device", "cpu", "--set", "retrieval.pca_dims=[4]"]
    source = tmp_path / "first"
    shutil.copytree(web_run, source)
    assert cli(["evaluate", str(source), "--no-progress", "--device", "cpu"]) == 0
    assert cli(["retrieval", str(source), *study]) == 0
    copy = tmp_path / "elsewhere" / "moved"
    shutil.copytree(source, copy, copy_function=shutil.copy)  # every file time is new
    shutil.rmtree(source)  # moved, not copied
    before = {p: p.read_bytes() for p in copy.rglob("*.json")}
    RunDir(copy).best_checkpoint.touch()  # the weights look newest: file times mean nothing
    capsys.readouterr()
    assert cli(["evaluate", str(copy), "--no-progress", "--device", "cpu"]) == 0
    assert cli(["retrieval", str(copy), *study]) == 0
    err = capsys.readouterr().err
    assert "evaluate: skipped: eval.json is up to date" in err
    for stage in ("mAP", "figures", "evidence", "PCA study"):
        assert f"{stage}: skipped: " in err, stage
    assert before == {p: p.read_bytes() for p in copy.rglob("*.json")}
    query = ood_png(copy, tmp_path, 1)
    assert cli(["search", str(query), "--run", str(copy), "--device", "cpu"]) == 0


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's API)
        self.requests.append(self.path)
        self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server on 127.0.0.1 that records every request it gets."""
    _Recorder.requests = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/tiny-imagenet-200.zip", _Recorder.requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_cache_names_prepare_and_nothing_is_downloaded_or_written(
        run_copy, tmp_path, http_server, capsys):
    url, requests = http_server
    rd = RunDir(run_copy)
    saved = read_json(rd.config)
    gone = tmp_path / "gone" / Path(saved["data"]["cache"]).name
    elsewhere = tmp_path / "never-written"
    saved["data"].update(cache=str(gone), source=None)
    saved["config"]["data"].update(source=None, url=url, cache_dir=str(elsewhere))
    rd.config.write_text(json.dumps(saved))
    rd.eval_json.unlink()
    shutil.rmtree(rd.root / "codes", ignore_errors=True)
    query = tmp_path / "q.png"
    Image.new("RGB", (64, 64), "red").save(query)
    commands = [["evaluate", str(run_copy)], ["codes", str(run_copy)],
                ["retrieval", str(run_copy)], ["search", str(query), "--run", str(run_copy)],
                ["serve", str(run_copy), "--port", str(_free_port())]]
    for argv in commands:
        capsys.readouterr()
        assert cli([*argv, "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"its image cache {gone} is missing" in err, argv
        assert f"`neuralcodes prepare --cache-dir {gone.parent} " in err, argv
    assert requests == []
    assert not elsewhere.exists() and not gone.parent.exists()
