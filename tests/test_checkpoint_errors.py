"""Checkpoints that cannot be loaded: each is a CheckpointError naming the file; nothing runs."""

from __future__ import annotations

import pytest
import torch
from helpers import lee_spec, official_spec
from torch import nn

import napari_attunet as na
from napari_attunet.models import build

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _official_sd(dims=3):
    spec = official_spec(dims, axes="")
    return build(spec).state_dict()


def _load_error(path, **kwargs) -> str:
    with pytest.raises(na.CheckpointError) as info:
        na.load_model(path, **kwargs)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_checkpoint_error_is_a_value_error():
    assert issubclass(na.CheckpointError, ValueError)


def test_missing_file(tmp_path):
    message = _load_error(tmp_path / "nowhere" / "model.pth")
    assert "no such file" in message.lower()


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    message = _load_error(path)
    assert "empty" in message.lower()


def test_empty_safetensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _load_error(path)


def test_directory(tmp_path):
    folder = tmp_path / "run-17.pth"
    folder.mkdir()
    message = _load_error(folder)
    assert "folder" in message.lower() or "directory" in message.lower()


def test_truncated_pth(tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(_official_sd(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _load_error(path)


def test_random_bytes_pth(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(
        torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        .numpy()
        .tobytes()
    )
    _load_error(path)


@pytest.mark.parametrize("suffix", [".pt", ".ckpt"])
def test_text_file_with_torch_suffix(tmp_path, suffix):
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not a checkpoint\n")
    _load_error(path)


# Bytes that are not a checkpoint but start with a valid pickle opcode: torch's weights-only
# unpickler then fails with IndexError ("pop from empty list"), struct.error or KeyError rather
# than UnpicklingError, and each must still become a CheckpointError.
@pytest.mark.parametrize(
    "data",
    [
        b".",
        b"X",
        b"t",
        b"0",
        b"h\xb4\x90\xbd;\xec\xfa%\xea6\xce\x93",
        b"<html>404</html>",
        b"version https://git-lfs.github.com/spec/v1\n",
    ],
    ids=["stop", "binunicode", "tuple", "pop", "binget", "html", "lfs-pointer"],
)
def test_garbage_bytes_with_pth_suffix(tmp_path, data):
    path = tmp_path / "garbage.pth"
    path.write_bytes(data)
    _load_error(path)


@pytest.mark.parametrize("fraction", [0.5, 0.01])
def test_truncated_legacy_format_pth(tmp_path, fraction):
    """A checkpoint from PyTorch < 1.6 (not a zip archive, as the official code's era wrote)."""
    path = tmp_path / "legacy.pth"
    torch.save(_official_sd(dims=2), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert data[:1] == b"\x80"
    model = na.load_model(path)  # the whole file loads
    assert model.spec.family == "official"
    path.write_bytes(data[: int(len(data) * fraction)])
    _load_error(path)


def test_truncated_safetensors(tmp_path):
    model = build(lee_spec(2, in_ch=1, out_ch=2, features=(4, 8, 16)))
    good = na.save_model(model, tmp_path / "good.safetensors")
    data = good.read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    _load_error(path)
    head_only = tmp_path / "header-cut.safetensors"
    head_only.write_bytes(data[:20])
    _load_error(head_only)


def test_plain_cnn_matches_no_family(tmp_path):
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1))
    path = tmp_path / "cnn.pth"
    torch.save(cnn.state_dict(), path)
    message = _load_error(path)
    assert "matches no" in message
    assert "Closest:" in message
    assert any(f"Closest: {family}" in message for family in ("official", "monai", "leejunhyun"))


def test_plain_unet_names_the_closest_family(tmp_path):
    """LeeJunHyun's plain ``U_Net`` has the same names as ``AttU_Net`` minus the gates."""
    model = build(lee_spec(2, in_ch=3, out_ch=1, features=(4, 8, 16, 32, 64)))
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("Att")}
    path = tmp_path / "unet.pth"
    torch.save(sd, path)
    message = _load_error(path)
    assert "Closest: leejunhyun" in message
    assert "Att2.psi.0.weight" in message


def test_squeeze_excitation_is_not_an_attention_gate(tmp_path):
    sd = {
        "enc.0.weight": torch.zeros(8, 1, 3, 3),
        "se.fc1.weight": torch.zeros(2, 8),
        "se.fc2.weight": torch.zeros(8, 2),
        "head.weight": torch.zeros(2, 8, 1, 1),
    }
    path = tmp_path / "se.pth"
    torch.save(sd, path)
    message = _load_error(path)
    assert "squeeze-and-excitation" in message


def test_official_with_a_wrong_shape(tmp_path):
    sd = _official_sd()
    key = "attentionblock3.gate_block_1.psi.weight"
    expected = tuple(sd[key].shape)
    sd[key] = torch.zeros(1, expected[1] + 3, 1, 1, 1)
    path = tmp_path / "modified.pth"
    torch.save(sd, path)
    message = _load_error(path)
    assert key in message
    assert str(expected) in message
    assert str(tuple(sd[key].shape)) in message


def test_official_without_attention_blocks(tmp_path):
    sd = {k: v for k, v in _official_sd().items() if not k.startswith("attentionblock")}
    path = tmp_path / "plain_unet.pth"
    torch.save(sd, path)
    message = _load_error(path)
    assert "attention" in message.lower()


def test_wrong_family_forced(tmp_path):
    path = tmp_path / "official.pth"
    torch.save(_official_sd(), path)
    _load_error(path, family="monai")
    _load_error(path, family="no-such-family")


class _CreatesAFile:
    """Unpickling this object calls ``open(marker, "w")``, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsCode:
    """Unpickling this object calls ``exec``, which would write the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_CreatesAFile, _RunsCode])
@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
def test_pickle_with_code_is_never_run(tmp_path, payload, suffix):
    marker = tmp_path / "marker-created-by-unpickling"
    path = tmp_path / f"evil{suffix}"
    sd = dict(_official_sd())
    sd["payload"] = payload(marker)
    torch.save(sd, path)
    assert not marker.exists()  # saving alone runs nothing
    message = _load_error(path)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert "never unpickled" in message or "code" in message


def test_pickle_with_code_inside_a_wrapper(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _official_sd(), "hyper_parameters": _CreatesAFile(marker), "epoch": 1}, path)
    _load_error(path)
    assert not marker.exists()


def test_legacy_non_zip_pickle_with_code(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.zeros(2), "x": _CreatesAFile(marker)}, path, _use_new_zipfile_serialization=False)
    _load_error(path)
    assert not marker.exists()


# torch.jit.script makes the archive under test; its deprecation is torch's, not ours
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_archive_is_refused(tmp_path):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

    path = tmp_path / "scripted.pt"
    torch.jit.script(Tiny()).save(str(path))
    message = _load_error(path)
    assert "TorchScript" in message


def test_lightning_ckpt_of_a_monai_model_loads(tmp_path, randomize_bn):
    monai_nets = pytest.importorskip("monai.networks.nets")
    net = monai_nets.AttentionUnet(
        spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8, 16), strides=(2, 2)
    )
    net = randomize_bn(net, seed=4).eval()
    path = tmp_path / "epoch=3-step=120.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "epoch": 3,
            "global_step": 120,
        },
        path,
    )
    model = na.load_model(path)
    assert model.spec.family == "monai"
    assert tuple(model.spec.features) == (4, 8, 16)
    assert model.spec.out_channels == 3
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((model(x) - net(x)).abs().max()) <= 1e-5


def test_bad_native_metadata(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _official_sd(dims=2).items()}
    path = tmp_path / "bad-meta.safetensors"
    save_file(sd, str(path), metadata={"napari_attunet": "{not json"})
    _load_error(path)
    save_file(sd, str(path), metadata={"napari_attunet": '{"spec": {"family": "nope"}}'})
    _load_error(path)


def test_save_model_refuses_bad_arguments(tmp_path):
    model = build(lee_spec(2, in_ch=1, out_ch=2, features=(4, 8)))
    with pytest.raises(na.CheckpointError):
        na.save_model(model, tmp_path / "m.pth")
    with pytest.raises(na.CheckpointError):
        na.save_model(model, tmp_path / "m.safetensors", class_names=["only one"])
    assert not (tmp_path / "m.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_plain_safetensors_without_metadata_is_detected(tmp_path, randomize_bn):
    """A state dict written with safetensors.torch.save_file by the training code itself."""
    from safetensors.torch import save_file

    spec = lee_spec(2, in_ch=3, out_ch=1, features=(4, 8, 16, 32, 64))
    net = randomize_bn(build(spec), seed=1).eval()
    path = tmp_path / "attu.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = na.load_model(path)
    assert model.spec.family == "leejunhyun" and model.spec.output == "sigmoid"
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
