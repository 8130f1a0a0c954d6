"""Model bundles (``brainseg models``): pack, install from a file, an archive or a local HTTP server
(with resumed and broken downloads), checksums, ``predict -m NAME``, ``--bundle`` at the end of training."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.checkpoints import tiny_trained_checkpoint
from typer.testing import CliRunner

from brainseg_cli import bundles
from brainseg_cli.cli.main import app
from brainseg_cli.errors import CheckpointError, ConfigError, InputError

runner = CliRunner()


@pytest.fixture(autouse=True)
def bundle_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv(bundles.HOME_VARIABLE, str(home))
    return home


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A briefly trained checkpoint (phantom tumours, softmax labels) beside its dataset."""
    return tiny_trained_checkpoint(tmp_path_factory.mktemp("bundle_ckpt"))


@pytest.fixture(scope="module")
def archive(trained, tmp_path_factory) -> Path:
    return bundles.pack_bundle(trained, tmp_path_factory.mktemp("archive") / "tumour.bundle.zip", name="tumour",
                               licence="CC-BY-4.0", description="phantom tumours")


def test_card_describes_the_model(trained, archive):
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["card.json", "model.pt"]
        card = json.loads(zf.read("card.json"))
        assert card["model"]["sha256"] == hashlib.sha256(zf.read("model.pt")).hexdigest()
    assert card["model"]["sha256"] == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert card["name"] == "tumour" and card["licence"] == "CC-BY-4.0" and card["description"] == "phantom tumours"
    assert card["channels"] == ["T1", "T1c", "T2", "FLAIR"]
    assert card["labels"] == {"background": 0, "edema": 1, "non-enhancing tumour": 2, "enhancing tumour": 3}
    assert card["model"]["format"] == "checkpoint" and card["model"]["architecture"] == "unet"
    assert card["trained_on"]["training_cases"] == 3 and card["trained_on"]["validation_cases"] == 1
    assert card["trained_on"]["epoch"] in (0, 1) and len(card["spacing_mm"]) == 3  # best.pt: the best of 2 epochs
    assert set(card["metrics"]["validation_dice"]) == {"edema", "non-enhancing tumour", "enhancing tumour"}


def test_install_list_info_remove(archive, bundle_home):
    res = runner.invoke(app, ["models", "install", str(archive)])
    assert res.exit_code == 0, res.output
    folder = bundle_home / "models" / "tumour"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.pt"]
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert listed["command"] == "models list" and listed["inputs"]["home"] == str(bundle_home)
    assert [b["name"] for b in listed["result"]["bundles"]] == ["tumour"]
    res = runner.invoke(app, ["models", "info", "tumour"])
    assert res.exit_code == 0 and "CC-BY-4.0" in res.stdout and "T1, T1c, T2, FLAIR" in res.stdout
    # the same name again needs --force; another --name installs beside it
    res = runner.invoke(app, ["models", "install", str(archive)])
    assert res.exit_code == 2 and "installed already" in res.output and "--force" in res.output
    assert runner.invoke(app, ["models", "install", str(archive), "--force"]).exit_code == 0
    assert runner.invoke(app, ["models", "install", str(archive), "--name", "tumour-2"]).exit_code == 0
    assert [b.name for b in bundles.installed()] == ["tumour", "tumour-2"]
    res = runner.invoke(app, ["models", "remove", "tumor"])
    assert res.exit_code == 2 and "did you mean 'tumour'" in res.output
    assert runner.invoke(app, ["models", "remove", "tumour"]).exit_code == 0
    assert [b.name for b in bundles.installed()] == ["tumour-2"]
    assert not [p for p in (bundle_home / "models").iterdir() if p.name.startswith(".")]


def test_install_a_checkpoint_file_makes_its_card(trained):
    result = bundles.install(trained, name="from-file")
    assert result.bundle.card["model"]["sha256"] == bundles.sha256_of(trained)
    assert result.bundle.model_path.read_bytes() == trained.read_bytes()
    with pytest.raises(CheckpointError, match="not a bundle archive, checkpoint or export"):
        bundles.install(trained.parent / "metrics.csv", name="bad")
    with pytest.raises(ConfigError, match="bundle name 'no/slash'"):
        bundles.install(trained, name="no/slash")


def test_checksums_refuse_and_install_nothing(archive, tmp_path, bundle_home):
    with pytest.raises(InputError, match="sha256 is .* expected 0{64}; nothing installed"):
        bundles.install(archive, sha256="0" * 64)
    with pytest.raises(ConfigError, match="64 hexadecimal digits"):
        bundles.install(archive, sha256="abc")
    tampered = tmp_path / "tampered.bundle.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        dst.writestr("card.json", src.read("card.json"))
        data = bytearray(src.read("model.pt"))
        data[-100] ^= 0xFF
        dst.writestr("model.pt", bytes(data))
    with pytest.raises(InputError, match="model.pt has sha256 .* but its card says"):
        bundles.install(tampered)
    assert bundles.installed() == []
    assert not (bundle_home / "models").exists() or not list((bundle_home / "models").iterdir())
    assert bundles.install(archive, sha256=bundles.sha256_of(archive)).bundle.name == "tumour"


def test_predict_runs_an_installed_bundle_by_name(trained, archive, tmp_path):
    bundles.install(archive)
    images = trained.parent.parent / "dataset" / "imagesTr"
    by_path, by_name = tmp_path / "path", tmp_path / "name"
    for out, model in ((by_path, str(trained)), (by_name, "tumour")):
        res = runner.invoke(app, ["--threads", "1", "predict", "-i", str(images), "-o", str(out), "-m", model,
                                  "--device", "cpu"])
        assert res.exit_code == 0, res.output
    names = sorted(p.name for p in by_path.glob("*.nii.gz"))
    assert names and names == sorted(p.name for p in by_name.glob("*.nii.gz"))
    for name in names:
        np.testing.assert_array_equal(np.asarray(nib.load(by_path / name).dataobj),
                                      np.asarray(nib.load(by_name / name).dataobj))
    res = runner.invoke(app, ["predict", "-i", str(images), "-o", str(tmp_path / "x"), "-m", "tumor"])
    assert res.exit_code == 2 and "no model bundle named 'tumor'" in res.output and "did you mean 'tumour'" in res.output


# ------------------------------------------------------------------------------- URL installs
class _Server:
    """A local HTTP server on 127.0.0.1 serving one file, with range requests (unless told not to),
    optionally cutting the first response short after ``cut`` bytes."""

    def __init__(self, payload: bytes, *, ranges: bool = True, cut: int | None = None) -> None:
        self.payload, self.ranges, self.cut = payload, ranges, cut
        self.requests: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                """No access log on stderr: the test reads the requests from ``outer.requests``."""

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/tumour.bundle.zip":
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                outer.requests.append(wanted)
                body, status = outer.payload, 200
                if wanted and outer.ranges:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                    body, status = outer.payload[start:], 206
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.cut is not None:
                    body, outer.cut = body[:outer.cut], None
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/tumour.bundle.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload(archive) -> Iterator[bytes]:
    yield archive.read_bytes()


def test_url_install_verifies_the_checksum(payload, bundle_home):
    digest = hashlib.sha256(payload).hexdigest()
    with _Server(payload) as server:
        res = runner.invoke(app, ["models", "install", f"{server.url}#sha256={digest}", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["result"]["downloaded"] is True
        assert bundles.get("tumour").model_path.is_file()
        res = runner.invoke(app, ["models", "install", server.url, "--name", "other", "--sha256", "f" * 64])
        assert res.exit_code == 1 and "nothing installed" in res.output
        assert [b.name for b in bundles.installed()] == ["tumour"]
        res = runner.invoke(app, ["models", "install", server.url.replace("tumour", "missing")])
        assert res.exit_code == 1 and "HTTP 404" in res.output
    assert not list((bundle_home / "downloads").iterdir())  # nothing left behind


def test_url_install_resumes_an_interrupted_download(payload, bundle_home):
    with _Server(payload, cut=len(payload) // 3) as server:
        with pytest.raises(InputError, match="run the install again to resume it"):
            bundles.install(server.url)
        part = bundle_home / "downloads" / "tumour.bundle.zip.part"
        assert part.stat().st_size == len(payload) // 3 and bundles.installed() == []
        result = bundles.install(server.url, sha256=hashlib.sha256(payload).hexdigest())
        assert server.requests == [None, f"bytes={len(payload) // 3}-"]  # the second asked for the rest only
    assert result.downloaded and result.bundle.name == "tumour" and not part.exists()


def test_url_install_restarts_when_the_server_ignores_ranges(payload, bundle_home):
    part = bundle_home / "downloads" / "tumour.bundle.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes of another file")
    with _Server(payload, ranges=False) as server:
        result = bundles.install(server.url)
        assert server.requests == ["bytes=27-"]
    assert result.bundle.model_path.is_file()


@pytest.mark.slow
def test_pretrain_bundle_on_real_brats_then_predict_by_name(shared_data, tmp_path):
    """``pretrain --bundle`` on two real BraTS 2018 cases, install the archive, predict a case by name."""
    data = tmp_path / "brats"
    for case in ("Brats18_CBICA_ABM_1", "Brats18_TCIA01_201_1"):
        (data / case).mkdir(parents=True)
        for file in (shared_data / "brats2018_deepbrainseg" / case).iterdir():
            (data / case / file.name).symlink_to(file)
    assert runner.invoke(app, ["convert", "brats", str(data), str(tmp_path / "ds"), "--workers", "1"]).exit_code == 0
    res = runner.invoke(app, ["--threads", "1", "pretrain", str(tmp_path / "ds"), "-o", str(tmp_path / "run"),
                              "--epochs", "1", "--iterations", "2", "--val-cases", "1", "--spacing", "3,3,3",
                              "--patch-size", "32,32,32", "--batch-size", "1", "--workers", "0", "--device", "cpu",
                              "--bundle", "brats-tiny"])
    assert res.exit_code == 0, res.output
    archive = tmp_path / "run" / "brats-tiny.bundle.zip"
    assert archive.is_file() and "bundle" in res.output
    bundle = bundles.install(archive).bundle
    assert bundle.card["trained_on"]["dataset"] and bundle.card["channels"] == ["T1", "T1c", "T2", "FLAIR"]
    assert bundle.card["region_based"] and list(bundle.card["regions"]) == ["WT", "TC", "ET"]
    res = runner.invoke(app, ["--threads", "1", "predict", "-i", str(tmp_path / "ds" / "imagesTr"),
                              "-o", str(tmp_path / "pred"), "-m", "brats-tiny", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    reference = nib.load(tmp_path / "ds" / "labelsTr" / "Brats18_CBICA_ABM_1.nii.gz")
    predicted = nib.load(tmp_path / "pred" / "Brats18_CBICA_ABM_1.nii.gz")
    assert predicted.shape == reference.shape and np.allclose(predicted.affine, reference.affine)
