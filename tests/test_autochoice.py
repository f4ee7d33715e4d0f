"""``auto`` on the CPU (``inference/autochoice.py``): the decision from given measurements (a pure
function, no timing), which candidates a request allows, and end to end on small networks: one
real probe (its structure, never its speed), the choice stored and reused, a corrupt one
rebuilt, a new one for new weights, explicit options untouched, labels as an explicit run's."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import numpy as np
import pytest
import torch
from helpers import TOL_Q, drain, lee_spec, make_model, monai_spec, random_image

from napari_attunet.inference import autochoice, iter_predict
from napari_attunet.inference.autochoice import (
    MEASURING,
    REFERENCE,
    Candidate,
    Choice,
    Measurement,
    candidates,
    decide,
    probe_tiles,
    worth_probing,
)

CPU = torch.device("cpu")
OV_LAT = Candidate("openvino", "fp32", "LATENCY")
OV_THR = Candidate("openvino", "fp32", "THROUGHPUT")
TORCH_BF16 = Candidate("torch", "bf16")
OV_BF16 = Candidate("openvino", "bf16", "LATENCY")
ALL = [REFERENCE, TORCH_BF16, OV_LAT, OV_THR, OV_BF16]


def m(cand: Candidate, quiet: float, busy: float, agreement: float = 1.0, gate: float = 0.0) -> Measurement:
    return Measurement(cand, quiet, busy, agreement, gate)


# ---- the decision, from given measurements ---------------------------------------------------


def test_the_fastest_candidate_at_equal_labels_is_chosen():
    figures = [m(REFERENCE, 2.0, 3.0), m(OV_LAT, 1.0, 1.5), m(OV_THR, 0.8, 1.2), m(TORCH_BF16, 1.5, 2.0)]
    assert decide(figures, ALL) == OV_THR


def test_a_faster_candidate_whose_labels_differ_is_not_chosen():
    figures = [m(REFERENCE, 2.0, 3.0), m(OV_BF16, 0.5, 0.6, agreement=0.99), m(OV_LAT, 1.0, 1.5)]
    assert decide(figures, ALL) == OV_LAT
    # within the tolerance, a tie here and there: still the same labels
    figures[1] = m(OV_BF16, 0.5, 0.6, agreement=1 - autochoice.LABEL_TOLERANCE / 2)
    assert decide(figures, ALL) == OV_BF16
    # gates that moved: not chosen either
    figures[1] = m(OV_BF16, 0.5, 0.6, gate=2 * autochoice.GATE_TOLERANCE)
    assert decide(figures, ALL) == OV_LAT


def test_a_candidate_slower_than_torch_fp32_under_load_is_not_chosen():
    # issue 20: OpenVINO's LATENCY hint faster when quiet, 1.38x slower beside a busy process
    figures = [m(REFERENCE, 3.0, 3.14), m(OV_LAT, 1.8, 4.32)]
    assert decide(figures, ALL) == REFERENCE
    figures.append(m(OV_THR, 2.0, 3.0))  # a setting that holds under load
    assert decide(figures, ALL) == OV_THR


def test_never_faster_candidates_leave_torch_fp32():
    figures = [m(REFERENCE, 1.0, 1.0), m(OV_LAT, 1.1, 0.9), m(TORCH_BF16, math.inf, math.inf, 0.5)]
    assert decide(figures, ALL) == REFERENCE


def test_an_explicit_choice_is_kept_when_nothing_it_allows_wins():
    # runtime="openvino": PyTorch fp32 is measured as the reference but may not be chosen
    figures = [m(REFERENCE, 1.0, 1.0), m(OV_LAT, 1.5, 1.5), m(OV_THR, 1.2, 2.0)]
    assert decide(figures, [OV_LAT, OV_THR]) == OV_LAT
    with pytest.raises(ValueError):
        decide([m(OV_LAT, 1.0, 1.0)], [OV_LAT])


def test_candidates_follow_the_request_and_the_cpu():
    both = candidates("auto", "auto", fast_bf16=True, openvino=True, cores=2)
    assert both[0] == REFERENCE
    assert {(c.runtime, c.precision) for c in both} == {
        ("torch", "fp32"),
        ("torch", "bf16"),
        ("openvino", "fp32"),
        ("openvino", "bf16"),
    }
    assert all(c.precision in ("fp32", "bf16") for c in both)  # never int8
    assert {c.hint for c in both if c.runtime == "openvino"} == {"LATENCY", "THROUGHPUT"}
    assert not any(c.threads for c in both)  # two cores: no core to leave to a neighbour
    assert any(c.threads == 7 for c in candidates("auto", "fp32", fast_bf16=False, openvino=True, cores=8))
    slow_bf16 = candidates("auto", "auto", fast_bf16=False, openvino=True, cores=2)
    assert all(c.precision == "fp32" for c in slow_bf16)
    assert candidates("auto", "auto", fast_bf16=False, openvino=False, cores=2) == [REFERENCE]
    explicit_torch = candidates("torch", "auto", fast_bf16=True, openvino=True, cores=2)
    assert all(c.runtime == "torch" for c in explicit_torch) and TORCH_BF16 in explicit_torch
    explicit_fp32 = candidates("auto", "fp32", fast_bf16=True, openvino=True, cores=2)
    assert all(c.precision == "fp32" for c in explicit_fp32) and OV_LAT in explicit_fp32
    assert candidates("openvino", "fp32", fast_bf16=True, openvino=True, cores=2)[0] == OV_LAT
    assert autochoice.applies("auto", "fp32", CPU) and autochoice.applies("torch", "auto", CPU)
    assert not autochoice.applies("torch", "fp32", CPU)
    assert not autochoice.applies("auto", "int8", CPU)
    assert not autochoice.applies("auto", "auto", torch.device("meta"))


def test_a_run_cheaper_than_the_probe_is_not_probed():
    cands = [REFERENCE, OV_LAT, OV_THR]
    probe = probe_tiles(cands, batch=1, parallel=2)
    assert probe == 3 + (1 + 2 * autochoice.ROUNDS) * 3  # the reference is timed in one round
    assert not worth_probing(probe, probe)
    assert worth_probing(autochoice.RUN_TO_PROBE * probe, probe)


def test_the_note_names_the_choice_and_its_figures():
    figures = (m(REFERENCE, 2.0, 3.0), m(OV_THR, 1.0, 2.0))
    note = Choice(OV_THR, figures, "stored", (96, 96, 96)).note
    assert note.startswith("auto chose OpenVINO fp32 (THROUGHPUT): 2.00x PyTorch fp32 on this CPU")
    assert "1.50x with a busy process beside it" in note and "measured once" in note and "96x96x96" in note
    latency = (m(REFERENCE, 2.0, 3.0), m(OV_LAT, 1.0, 2.0))
    assert Choice(OV_LAT, latency, "measured", (16, 16)).note.startswith("auto chose OpenVINO fp32: 2.00x")
    assert Choice(REFERENCE, how="unmeasured", reason="too small").note == (
        "auto chose PyTorch fp32 without measuring: too small"
    )
    stored = json.loads(json.dumps(Choice(OV_THR, figures, "measured", (8, 8)).to_json()))
    back = Choice.from_json(stored, "stored")
    assert back == Choice(OV_THR, figures, "stored", (8, 8))


# ---- end to end, on small networks -----------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> pathlib.Path:
    from napari_attunet.inference.runtime_openvino import CACHE_ENV

    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    autochoice.forget()
    yield folder
    autochoice.forget()


def _run(model, image, **options):
    """(the Prediction, the messages the run gave)."""
    options = {"normalization": "none", "tile": 16, "overlap": 0.5, **options}
    return drain(iter_predict(image, model, **options))


def _long_image(model, precision: str = "fp32") -> np.ndarray:
    """A 16 x 16 x L volume with enough 16^3 tiles (overlap 0.5) to be worth measuring."""
    cores = os.cpu_count() or 1
    fast = autochoice.cpu_has_fast_bf16()
    cands = candidates("auto", precision, fast_bf16=fast, openvino=True, cores=cores)
    needed = autochoice.RUN_TO_PROBE * probe_tiles(cands, 1, cores)
    return random_image((16, 16, 8 * needed + 16), seed=3)


def _choices(cache: pathlib.Path) -> list[pathlib.Path]:
    folder = cache / "openvino"
    return sorted(p for p in folder.iterdir() if p.name.startswith("auto-")) if folder.exists() else []


def test_an_unmeasured_run_is_openvino_fp32_only_for_a_large_tile():
    cands = autochoice.candidates("auto", "auto", fast_bf16=True, openvino=True, cores=2)
    assert autochoice.unmeasured_default(cands, (64, 64, 64)) == autochoice.UNMEASURED_OPENVINO
    assert autochoice.unmeasured_default(cands, (48, 48, 48)) == REFERENCE
    assert autochoice.unmeasured_default(cands, (512, 512)) == autochoice.UNMEASURED_OPENVINO
    without = autochoice.candidates("auto", "auto", fast_bf16=True, openvino=False, cores=2)
    assert autochoice.unmeasured_default(without, (64, 64, 64)) == REFERENCE
    torch_only = autochoice.candidates("torch", "auto", fast_bf16=True, openvino=True, cores=2)
    assert autochoice.unmeasured_default(torch_only, (96, 96, 96)).runtime == "torch"


def test_a_tiny_input_is_not_measured_and_says_so(cache):
    model = make_model(lee_spec(2), seed=10)
    pred, messages = _run(model, random_image((24, 24)), precision="fp32")
    assert pred.runtime == "torch" and pred.precision == "fp32"
    (note,) = [n for n in pred.notes if n.startswith("auto chose")]
    assert "without measuring" in note and "less than measuring" in note
    assert MEASURING not in messages and not _choices(cache)


def test_auto_measures_once_stores_the_choice_and_reuses_it(cache):
    pytest.importorskip("openvino")
    model = make_model(monai_spec(3), seed=21)
    image = _long_image(model)
    first, messages = _run(model, image, precision="fp32")
    assert messages.count(MEASURING) == 1
    (note,) = [n for n in first.notes if n.startswith("auto chose")]
    assert "measured now" in note and "x PyTorch fp32 on this CPU" in note
    assert first.runtime in ("torch", "openvino") and first.precision == "fp32"
    stored = _choices(cache)
    assert len(stored) == 2  # this tile, and this network on any tile
    data = json.loads((stored[0] / "choice.json").read_text())
    measured = {(f["candidate"]["runtime"], f["candidate"]["hint"]) for f in data["figures"]}
    assert ("torch", None) in measured and ("openvino", "LATENCY") in measured
    assert all(f["quiet"] > 0 and f["busy"] > 0 and 0 <= f["agreement"] <= 1 for f in data["figures"])
    assert data["tile"] == [16, 16, 16]
    chosen = Candidate(**data["candidate"])
    assert (chosen.runtime, chosen.precision) == (first.runtime, first.precision)

    # the same process, then a new session (the cache only): no second measurement
    again, messages = _run(model, image, precision="fp32")
    assert MEASURING not in messages and again.runtime == first.runtime
    autochoice.forget()
    fresh = make_model(monai_spec(3), seed=21)
    later, messages = _run(fresh, image, precision="fp32")
    assert MEASURING not in messages and later.runtime == first.runtime
    assert any("measured once" in n for n in later.notes)
    assert np.array_equal(first.quantized, later.quantized)

    # labels as an explicit run with the runtime chosen gives them
    explicit, messages = _run(model, image, precision="fp32", runtime=first.runtime)
    assert not any(n.startswith("auto chose") for n in explicit.notes) and MEASURING not in messages
    assert np.abs(explicit.probabilities - first.probabilities).max() <= TOL_Q
    assert (explicit.labels() == first.labels()).mean() > 0.999

    # a corrupt choice, or one made for something else: measured again, stored again
    autochoice.forget()
    choice_file = stored[0] / "choice.json"
    choice_file.write_text(choice_file.read_text().replace('"quiet": ', '"quiet": 1'))
    other = stored[1] / "manifest.json"
    manifest = json.loads(other.read_text())
    manifest["fields"]["cpu"] = "another CPU"
    other.write_text(json.dumps(manifest))
    _, messages = _run(model, image, precision="fp32")
    assert messages.count(MEASURING) == 1
    assert json.loads(other.read_text())["fields"]["cpu"] != "another CPU"
    autochoice.forget()
    _, messages = _run(model, image, precision="fp32")
    assert MEASURING not in messages


def test_new_weights_are_measured_anew_and_explicit_options_are_never_measured(cache):
    pytest.importorskip("openvino")
    model = make_model(monai_spec(3), seed=22)
    image = _long_image(model)
    for runtime in ("torch", "openvino"):
        pred, messages = _run(model, image, precision="fp32", runtime=runtime)
        assert pred.runtime == runtime and MEASURING not in messages
        assert not any(n.startswith("auto chose") for n in pred.notes)
    assert not _choices(cache)
    _, messages = _run(model, image, precision="fp32")
    assert messages.count(MEASURING) == 1
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    _, messages = _run(model, image, precision="fp32")
    assert messages.count(MEASURING) == 1
    assert len(_choices(cache)) == 4
