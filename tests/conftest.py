"""Shared fixtures: the official golden-output folder, a batch-norm randomiser, the small
networks of the engine's tests, the napari tests' scan, checkpoint and settings folder, and the
table of bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import (
    ORIGIN_XYZ,
    SPACING_XYZ,
    bad_files,
    lee_spec,
    make_model,
    monai_spec,
    official_spec,
    randomise_bn,
)

import napari_attunet as na
from napari_attunet.models import build
from napari_attunet.phantom import make_phantom

REPO = Path(__file__).resolve().parent.parent
OFFICIAL_FIXTURES = REPO / "tests" / "data" / "official-oktay"
FIXTURE_STEM = "oktay_unet_CT_single_att_dsv_3D"


# Fixtures that open a napari viewer or a Qt widget: their tests need a display (Xvfb).
GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a viewer or Qt fixture ``gui``, so that the core tests run
    anywhere with ``pytest -m "not gui"``; tests that need a display otherwise say so
    themselves with ``@pytest.mark.gui``."""
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``tests/data/official-oktay``: golden outputs of the official code (see its README)."""
    assert (OFFICIAL_FIXTURES / f"{FIXTURE_STEM}.pth").is_file(), OFFICIAL_FIXTURES
    return OFFICIAL_FIXTURES


@pytest.fixture(scope="session")
def fixture_pth(fixtures_dir: Path) -> Path:
    return fixtures_dir / f"{FIXTURE_STEM}.pth"


@pytest.fixture
def randomize_bn():
    """:func:`helpers.randomise_bn` as a fixture: ``randomize_bn(net, seed=...)``."""
    return randomise_bn


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run a module's tiny networks on one thread, then restore the count.

    On a shared 2-core machine, OpenMP threads that spin while another process holds a core make
    these small convolutions 5-10x slower; one thread is as fast for them and never contends.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _session_folder(tmp_path_factory, variable: str, name: str):
    """``variable`` set to a fresh folder for the session, then restored."""
    import os

    before = os.environ.get(variable)
    os.environ[variable] = str(tmp_path_factory.mktemp(name))
    yield
    if before is None:
        os.environ.pop(variable, None)
    else:
        os.environ[variable] = before


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """OpenVINO conversions go to a folder of this session, never to the user's cache."""
    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    yield from _session_folder(tmp_path_factory, CACHE_ENV, "compile-cache")


# ---- small networks of the engine's tests (test_engine, test_plan, test_preprocess, ...) -------


@pytest.fixture(scope="module")
def official3d():
    return make_model(official_spec(3), seed=1)


@pytest.fixture(scope="module")
def official2d():
    return make_model(official_spec(2), seed=2)


@pytest.fixture(scope="module")
def monai2d():
    return make_model(monai_spec(2), seed=3)


@pytest.fixture(scope="module")
def lee2d():
    return make_model(lee_spec(2), seed=4)


# ---- scans on disk ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_array() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, (6, 7, 9)).astype(np.int16)  # z, y, x; all axes differ


# ---- napari: settings, a scan and a checkpoint, notifications ----------------------------------


@pytest.fixture
def _isolated_config(tmp_path, monkeypatch):
    """A settings folder of the test's own (napari tests use it with ``usefixtures``)."""
    monkeypatch.setenv("NAPARI_ATTUNET_CONFIG", str(tmp_path / "config"))


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    net = randomise_bn(build(official_spec(3, out_ch=3, axes=""))).eval()
    # A bias towards the organ class so that labels are not empty and thresholds matter.
    with torch.no_grad():
        net.final.bias.copy_(torch.tensor([0.0, 1.5, -1.0]))
    path = tmp_path / "model.safetensors"
    na.save_model(net, path, class_names=["background", "organ", "lesion"])
    return path


@pytest.fixture
def scan(tmp_path):
    image, _ = make_phantom((24, 40, 48), seed=3)
    itk = sitk.GetImageFromArray((image * 200).astype(np.int16))
    itk.SetSpacing(SPACING_XYZ)
    itk.SetOrigin(ORIGIN_XYZ)
    path = tmp_path / "patient.nii.gz"
    sitk.WriteImage(itk, str(path))
    return path


@pytest.fixture
def notes():
    from napari.utils.notifications import notification_manager

    seen = []
    notification_manager.notification_ready.connect(seen.append)
    yield seen
    notification_manager.notification_ready.disconnect(seen.append)


# ---- bad files ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """``helpers.bad_files``, written once: the bad checkpoints and scans of the API, command-line,
    reader and widget tests (none of which may change them)."""
    return bad_files(tmp_path_factory.mktemp("bad"))


@pytest.fixture(autouse=True, scope="session")
def _results_cache(tmp_path_factory):
    """Result stores of scans from nowhere writable go to a folder of this session."""
    from napari_attunet.plugin.store_location import RESULTS_ENV

    yield from _session_folder(tmp_path_factory, RESULTS_ENV, "results-cache")
