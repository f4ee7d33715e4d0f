"""Shared fixtures: the official golden-output folder and a batch-norm randomiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import randomise_bn

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


@pytest.fixture(autouse=True, scope="session")
def _compile_cache(tmp_path_factory):
    """OpenVINO conversions go to a folder of this session, never to the user's cache."""
    import os

    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("compile-cache"))
    yield
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before


@pytest.fixture(autouse=True, scope="session")
def _results_cache(tmp_path_factory):
    """Result stores of scans from nowhere writable go to a folder of this session."""
    import os

    from napari_attunet.plugin.store_location import RESULTS_ENV

    before = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = str(tmp_path_factory.mktemp("results-cache"))
    yield
    if before is None:
        os.environ.pop(RESULTS_ENV, None)
    else:
        os.environ[RESULTS_ENV] = before
