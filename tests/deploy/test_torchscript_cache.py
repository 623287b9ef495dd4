"""The CPU-optimised TorchScript graph is built once and kept beside model.pt (quadra_ad.deploy.torchscript_cache);
it can make a load faster, never change what runs."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from quadra_ad.deploy.loader import load_exported_model
from quadra_ad.deploy.torchscript_cache import cache_paths

SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A deployment folder: a PaDiM (resnet18, random weights) fitted on textures, exported to
    TorchScript by the real exporter, with its model card."""
    return _export_padim(tmp_path_factory.mktemp("torchscript_export"), seed=0)


def _export_padim(folder: Path, seed: int) -> Path:
    from anomalib.models.image.padim.torch_model import PadimModel

    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.evaluation.thresholds import Calibration
    from quadra_ad.export.graph import AnomalyGraph
    from quadra_ad.export.writers import export_torchscript
    from quadra_ad.testing.synthetic import texture

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PadimModel(backbone="resnet18", layers=["layer1"], pre_trained=False, n_features=16).train()
    with torch.no_grad():
        model(torch.from_numpy(np.stack([texture(rng, SIZE) for _ in range(8)]).transpose(0, 3, 1, 2).copy()).float())
    model.fit()
    folder.mkdir(parents=True, exist_ok=True)
    path = export_torchscript(AnomalyGraph(model.eval()), torch.zeros(2, 3, SIZE, SIZE), folder)
    ModelCard(model_class="anomalib.models.Padim", input_size=[SIZE, SIZE], mean=[0.5] * 3, std=[0.2] * 3,
              calibration=Calibration(1.0, 0.0, 2.0), task_type="segmentation", files={"torchscript": path.name}
              ).write(folder)
    return folder


@pytest.fixture(scope="module")
def exported_and_cached(exported, tmp_path_factory) -> Path:
    """The same folder after one load: the optimised graph's cache beside model.pt."""
    folder = Path(shutil.copytree(exported, tmp_path_factory.mktemp("cached") / "deployment_model"))
    assert not load_exported_model(folder / "model.pt").optimized_from_cache
    return folder


@pytest.fixture
def deployment(exported, tmp_path) -> Path:
    """This test's own copy of the deployment folder (no cache in it yet)."""
    return Path(shutil.copytree(exported, tmp_path / "deployment_model"))


@pytest.fixture
def cached_deployment(exported_and_cached, tmp_path) -> Path:
    """This test's own copy of the deployment folder, its cache already written."""
    return Path(shutil.copytree(exported_and_cached, tmp_path / "deployment_model"))


def _images(batch: int = 5) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


def _assert_plain_outputs(model, folder: Path) -> None:
    """The loaded model gives the plain graph's scores and maps (1e-5 of their scale)."""
    images = _images()
    with torch.inference_mode():
        expected = [o.numpy() for o in torch.jit.load(str(folder / "model.pt")).eval()(torch.from_numpy(images))]
    for got, plain in zip(model(images), expected, strict=True):
        np.testing.assert_allclose(got, plain, rtol=1e-5, atol=1e-5 * float(np.abs(plain).max()))


def _record(folder: Path) -> dict:
    return json.loads(cache_paths(folder / "model.pt", "cpu")[1].read_text())


def test_the_second_load_starts_from_the_kept_graph(deployment, monkeypatch):
    first = load_exported_model(deployment / "model.pt")
    frozen, record = cache_paths(deployment / "model.pt", "cpu")
    assert not first.optimized_from_cache and frozen.is_file() and record.is_file()
    assert _record(deployment)["optimized"] is True and _record(deployment)["key"]["torch"] == torch.__version__
    assert sorted(p.name for p in deployment.iterdir() if not p.name.startswith(".")) == ["model.json", "model.pt"]

    def no_freezing(*args, **kwargs):
        raise AssertionError("a load with a valid cache must not freeze the graph again")

    monkeypatch.setattr(torch.jit, "freeze", no_freezing)
    second = load_exported_model(deployment / "model.pt")
    assert second.optimized_from_cache
    assert not list(second.module.parameters())  # a frozen graph: the weights are constants in it
    _assert_plain_outputs(second, deployment)
    _assert_plain_outputs(first, deployment)


@pytest.mark.parametrize("damage", ["garbage", "one byte changed", "truncated", "record of another torch", "record unreadable"])
def test_a_corrupt_or_stale_cache_is_ignored_and_rebuilt(cached_deployment, damage):
    deployment = cached_deployment
    frozen, record = cache_paths(deployment / "model.pt", "cpu")
    content = frozen.read_bytes()
    if damage == "garbage":
        frozen.write_bytes(b"not a graph")
    elif damage == "one byte changed":  # torch would load it: only the recorded hash tells
        middle = len(content) // 2
        frozen.write_bytes(content[:middle] + bytes([content[middle] ^ 0xFF]) + content[middle + 1:])
    elif damage == "truncated":
        frozen.write_bytes(content[: len(content) // 2])
    elif damage == "record of another torch":
        stale = _record(deployment)
        stale["key"]["torch"] = "1.0.0"
        record.write_text(json.dumps(stale))
    else:
        record.write_text("{not json")
    rebuilt = load_exported_model(deployment / "model.pt")
    assert not rebuilt.optimized_from_cache
    _assert_plain_outputs(rebuilt, deployment)
    # Rebuilt as it was (freezing is deterministic), under a valid record: the next load takes it.
    assert frozen.read_bytes() == content and _record(deployment)["key"]["torch"] == torch.__version__


def test_a_cache_for_another_graph_is_not_used(cached_deployment):
    deployment = cached_deployment
    frozen, record = cache_paths(deployment / "model.pt", "cpu")
    stale = _record(deployment)
    stale["key"]["graph_sha256"] = "0" * 64  # as if model.pt had been replaced since
    record.write_text(json.dumps(stale))
    assert not load_exported_model(deployment / "model.pt").optimized_from_cache
    assert _record(deployment)["key"]["graph_sha256"] != "0" * 64


def test_without_the_cache_every_load_optimises_and_writes_nothing(deployment):
    model = load_exported_model(deployment / "model.pt", torchscript_cache=False)
    assert not model.optimized_from_cache
    assert not any(p.name.startswith(".") for p in deployment.iterdir())
    _assert_plain_outputs(model, deployment)


def _make_read_only(folder: Path) -> None:
    """No new file can be made in ``folder`` (mode 555; and immutable for root, who ignores modes)."""
    folder.chmod(0o555)
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    try:
        (folder / ".probe").write_text("x")
    except OSError:
        return
    (folder / ".probe").unlink()
    _make_writable(folder)
    pytest.skip("this machine lets this user write into any folder (root without CAP_LINUX_IMMUTABLE)")


def _make_writable(folder: Path) -> None:
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


@pytest.mark.parametrize("cache_there", [False, True])
def test_a_read_only_folder_loads_with_or_without_a_cache(request, cache_there):
    deployment = request.getfixturevalue("cached_deployment" if cache_there else "deployment")
    _make_read_only(deployment)
    try:
        model = load_exported_model(deployment / "model.pt")
        assert model.optimized_from_cache == cache_there
        _assert_plain_outputs(model, deployment)
        assert cache_paths(deployment / "model.pt", "cpu")[0].is_file() == cache_there
        assert not [p.name for p in deployment.iterdir() if "partial" in p.name]
    finally:
        _make_writable(deployment)


def test_a_swapped_cache_with_a_matching_record_cannot_change_what_runs(cached_deployment, tmp_path, caplog):
    # Another model's optimised graph put beside model.pt, its record rewritten to name this
    # model.pt: the record's hashes sit beside what they describe, so only the outputs tell.
    other = _export_padim(tmp_path / "other", seed=1)
    load_exported_model(other / "model.pt")
    frozen, record = cache_paths(cached_deployment / "model.pt", "cpu")
    other_frozen, other_record = cache_paths(other / "model.pt", "cpu")
    shutil.copy(other_frozen, frozen)
    forged = json.loads(other_record.read_text())
    forged["key"] = _record(cached_deployment)["key"]
    record.write_text(json.dumps(forged))
    model = load_exported_model(cached_deployment / "model.pt")
    assert not model.optimized_from_cache
    _assert_plain_outputs(model, cached_deployment)
    assert "gives other outputs than that model" in caplog.text
    # Rebuilt from this model.pt: the next load uses a cache that is this model's again.
    assert frozen.read_bytes() != other_frozen.read_bytes()
    assert load_exported_model(cached_deployment / "model.pt").optimized_from_cache
