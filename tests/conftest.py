"""Shared fixtures: the official golden-output folder and a batch-norm randomiser."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

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


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch-norm layer random running statistics and affine parameters, seeded.

    With the defaults (mean 0, var 1, weight 1, bias 0) an eval-mode BN is almost the identity,
    which would hide a BN that is skipped, misplaced or given the wrong statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                n = layer.num_features
                if layer.running_mean is not None:
                    layer.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                    layer.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if layer.weight is not None:
                    layer.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    layer.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return module


@pytest.fixture
def randomize_bn():
    """The :func:`randomise_bn` helper, as a fixture: ``randomize_bn(net, seed=...)``."""
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
