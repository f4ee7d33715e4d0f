"""What ``runtime="auto"`` and ``precision="auto"`` run on the CPU: the fastest candidate as
measured on this CPU, for this network and tile, at PyTorch fp32's labels.

OpenVINO is not always faster than PyTorch: with another busy process on the machine its
LATENCY hint (all cores in lock-step) measured 1.38x slower than PyTorch fp32 (issue 20), and
bf16 pays only where the CPU has it in hardware. So ``auto`` measures once: PyTorch fp32 (the
reference), PyTorch bf16 where bf16 is fast, and OpenVINO in fp32 (and bf16) with each of its
settings (hint, streams, threads), on one tile of the run at hand, quiet and with one busy-loop
process beside it, in interleaved rounds. A candidate is chosen only when its labels on that
tile equal the reference's (and its gates are close), and when it is not slower than PyTorch
fp32 quiet or busy; of those, the fastest. The choice is kept in the OpenVINO cache folder,
keyed by the weights, the tile, the versions, the CPU and the thread count, and checked before
use like the converted models, so it is measured once. A run too small to pay for the
measurement is not measured: it takes a choice measured on this network and CPU on another
tile, if there is one, and otherwise OpenVINO fp32 for a tile of 64^3 voxels or more (its
conversion pays there), else what the request starts from (PyTorch fp32 when both are
``auto``), and says so.
``auto`` never picks int8, and an explicit runtime or precision is never overridden.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..models import AttentionUNetBase
from .devices import autocast, cpu_has_fast_bf16
from .optimize import prepared
from .progress import Progress
from .runtime import openvino_available, prepare_openvino

FORMAT = 1  # bump when what a stored choice holds or means changes
MEASURING = "measuring PyTorch and OpenVINO on this CPU (once)"
# Share of the probe tile's voxels whose label may differ from the reference's: ties only. bf16
# on the demo network differed at 0.1-0.2 % of a tile, and over the whole scan that was a Dice of
# 0.9985, under the 0.999 the default must keep (DESIGN.md).
LABEL_TOLERANCE = 1e-4
GATE_TOLERANCE = 0.02  # each gate's mean |d| against the reference (the int8 guard's bound)
ROUNDS = 2  # interleaved rounds, each quiet then with a busy process beside
RUN_TO_PROBE = 2  # a run is measured for when it has at least this many times the probe's tiles
_BUSY = "while True: pass"
_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}
_LOCK = threading.Lock()  # blocks on Dask threads: one probe at a time, the others wait and reuse it
_CHOICES: dict[str, Choice] = {}  # this process's choices, by key
_NETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (digest, candidate, net)


@dataclass(frozen=True)
class Candidate:
    """One way to run the network: a runtime, a precision and, for OpenVINO, its settings."""

    runtime: str  # 'torch' or 'openvino'
    precision: str  # 'fp32' or 'bf16'
    hint: str | None = None  # OpenVINO's PERFORMANCE_HINT: LATENCY (one stream) or THROUGHPUT
    threads: int | None = None  # OpenVINO's INFERENCE_NUM_THREADS; None: all it wants

    @property
    def label(self) -> str:
        name = "PyTorch" if self.runtime == "torch" else "OpenVINO"
        settings = [self.hint] if self.hint and self.hint != "LATENCY" else []
        if self.threads:
            settings.append(f"{self.threads} thread{'s' * (self.threads > 1)}")
        return f"{name} {self.precision}" + (f" ({', '.join(settings)})" if settings else "")


@dataclass(frozen=True)
class Measurement:
    """One candidate on the probe tile: seconds per tile quiet and with a busy process beside
    (the median of the rounds), and how its result compares with the reference's."""

    candidate: Candidate
    quiet: float
    busy: float
    agreement: float  # share of the tile's voxels whose label equals the reference's
    gate_diff: float  # the largest of the gates' mean |d| against the reference

    def agrees(self) -> bool:
        return self.agreement >= 1 - LABEL_TOLERANCE and self.gate_diff <= GATE_TOLERANCE


@dataclass(frozen=True)
class Choice:
    """What ``auto`` runs, and why: ``figures`` are the measurements it was chosen from (none
    when it was not measured), ``how`` says whether it was measured now, stored, or not."""

    candidate: Candidate
    figures: tuple[Measurement, ...] = ()
    how: str = "measured"  # 'measured', 'stored', 'elsewhere' (another tile), 'unmeasured', 'only'
    tile: tuple[int, ...] = ()
    reason: str = ""  # why it was not measured
    fallback: str | None = None  # why OpenVINO could not run this network, when it could not

    def speedup(self) -> tuple[float, float] | None:
        """(quiet, busy) ratios of PyTorch fp32's time to the chosen candidate's, if measured."""
        mine = next((m for m in self.figures if m.candidate == self.candidate), None)
        ref = next((m for m in self.figures if m.candidate == REFERENCE), None)
        if mine is None or ref is None:
            return None
        return ref.quiet / mine.quiet, ref.busy / mine.busy

    @property
    def note(self) -> str:
        """One sentence for ``Prediction.notes`` and the widget's status."""
        name = self.candidate.label
        ratios = self.speedup()
        if self.how == "only":  # nothing was left to choose: nothing to say
            return ""
        if self.how == "unmeasured":
            return f"auto chose {name} without measuring: {self.reason}"
        tile = "x".join(map(str, self.tile))
        if ratios is None:
            return f"auto chose {name} (measured once on this CPU, tile {tile})"
        where = {
            "measured": f"measured now on one {tile} tile",
            "stored": f"measured once on one {tile} tile",
            "elsewhere": f"measured once on one {tile} tile of this network; {self.reason}",
        }[self.how]
        return (
            f"auto chose {name}: {ratios[0]:.2f}x PyTorch fp32 on this CPU, {ratios[1]:.2f}x "
            f"with a busy process beside it ({where})"
        )

    def to_json(self) -> dict:
        return {
            "candidate": asdict(self.candidate),
            "tile": list(self.tile),
            "figures": [asdict(m) for m in self.figures],
        }

    @classmethod
    def from_json(cls, data: dict, how: str) -> Choice:
        """The stored choice; KeyError, TypeError or ValueError when it is not one."""
        figures = tuple(
            Measurement(
                Candidate(**m["candidate"]),
                float(m["quiet"]),
                float(m["busy"]),
                float(m["agreement"]),
                float(m["gate_diff"]),
            )
            for m in data["figures"]
        )
        choice = cls(Candidate(**data["candidate"]), figures, how, tuple(int(n) for n in data["tile"]))
        if choice.candidate.runtime not in ("torch", "openvino") or choice.candidate.precision not in (
            "fp32",
            "bf16",
        ):
            raise ValueError(f"not a candidate: {choice.candidate}")
        return choice


REFERENCE = Candidate("torch", "fp32")


# ---- which candidates, and the choice from measurements (pure) --------------------------------


def applies(runtime: str, precision: str, device: torch.device) -> bool:
    """Whether ``auto`` has something to decide: on the CPU, for a runtime or a precision
    left to it, and never for int8."""
    runtime, precision = str(runtime).lower(), str(precision).lower()
    return device.type == "cpu" and precision != "int8" and "auto" in (runtime, precision)


def candidates(
    runtime: str, precision: str, *, fast_bf16: bool, openvino: bool, cores: int
) -> list[Candidate]:
    """What may run, the permitted default first: an explicit runtime or precision limits
    them, bf16 is only tried where the CPU has it in hardware, OpenVINO only where installed."""
    runtimes = ["torch", "openvino"] if runtime == "auto" else [runtime]
    if not openvino:
        runtimes = [r for r in runtimes if r != "openvino"]
    precisions = (["fp32", "bf16"] if fast_bf16 else ["fp32"]) if precision == "auto" else [precision]
    out = []
    for name in runtimes:
        for prec in precisions:
            if name == "torch":
                out.append(Candidate("torch", prec))
                continue
            out += [Candidate("openvino", prec, "LATENCY"), Candidate("openvino", prec, "THROUGHPUT")]
            if cores > 2:  # one core left to a neighbour; on two cores that is half the machine
                out.append(Candidate("openvino", prec, "LATENCY", cores - 1))
    return out


def decide(measurements: Sequence[Measurement], permitted: Sequence[Candidate]) -> Candidate:
    """The fastest permitted candidate whose labels and gates agree with the reference and
    that is not slower than PyTorch fp32 quiet nor with a busy process beside it, by the sum
    of its two times relative to PyTorch fp32's. When none is (only possible when PyTorch fp32
    is not permitted), the first permitted candidate: the one an explicit choice asked for."""
    ref = next((m for m in measurements if m.candidate == REFERENCE), None)
    if ref is None:
        raise ValueError("the measurements must include PyTorch fp32, the reference")
    eligible = [
        m
        for m in measurements
        if m.candidate in permitted and m.agrees() and m.quiet <= ref.quiet and m.busy <= ref.busy
    ]
    if not eligible:
        return permitted[0]
    return min(eligible, key=lambda m: m.quiet / ref.quiet + m.busy / ref.busy).candidate


def probe_tiles(cands: Sequence[Candidate], batch: int, parallel: int, rounds: int = ROUNDS) -> int:
    """Tiles the probe runs at most: per candidate, one first call (the labels) and each
    round quiet and busy (the reference one round), on the batch it runs in the run
    (``parallel`` for OpenVINO's THROUGHPUT)."""
    total = 0
    for c in cands:
        calls = 3 if c == REFERENCE else 1 + 2 * rounds  # the reference is timed in one round
        total += calls * (max(batch, parallel) if c.hint == "THROUGHPUT" else batch)
    return total


# An unmeasured run's default where the tile is large enough for OpenVINO's one conversion
# (cached) to pay: OpenVINO fp32 matched PyTorch fp32's labels and ran 1.8x faster on the demo,
# quiet and with a busy process beside it (docs/performance.md). Smaller tiles (tests, 2D
# images) run PyTorch fp32.
UNMEASURED_OPENVINO = Candidate("openvino", "fp32", "LATENCY")
UNMEASURED_OPENVINO_VOXELS = 64**3
UNMEASURED_WHY = "OpenVINO fp32 is usually the faster at PyTorch fp32's labels"


def unmeasured_default(cands: Sequence[Candidate], tile: Sequence[int]) -> Candidate:
    """What a run too small to measure for runs: OpenVINO fp32 for a large tile where it may
    run, else the request's first candidate (PyTorch fp32 when both are auto)."""
    if UNMEASURED_OPENVINO in cands and math.prod(tile) >= UNMEASURED_OPENVINO_VOXELS:
        return UNMEASURED_OPENVINO
    return cands[0]


def worth_probing(run_tiles: int, probe: int) -> bool:
    """Whether the run is large enough that measuring costs well under the run itself."""
    return run_tiles >= RUN_TO_PROBE * probe


# ---- the key and the stored choice -----------------------------------------------------------


def cpu_identity() -> dict:
    """The CPU as far as speed goes: its model, the capabilities the runtimes use, threads."""
    model = "unknown"
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = sorted(set(line.split(":", 1)[1].split()) & _FLAGS)
    except OSError:
        import platform

        model = platform.processor() or platform.machine()
    return {
        "cpu": model,
        "flags": flags,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": cpu_has_fast_bf16(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count() or 1,
    }


def choice_key(digest: str, input_shape: Sequence[int], runtime: str, precision: str) -> tuple[str, dict]:
    """(the stored choice's folder name, what it was measured for). ``runtime`` and
    ``precision`` are the requested ones: they decide what could be chosen."""
    try:
        import openvino

        ov_version: str | None = openvino.__version__
    except ImportError:
        ov_version = None
    fields = {
        "kind": "auto-choice",
        "format": FORMAT,
        "weights": digest,
        "input": [int(n) for n in input_shape],
        "runtime": runtime,
        "precision": precision,
        "torch": torch.__version__,
        "openvino": ov_version,
        **cpu_identity(),
    }
    return _name(fields), fields


def _name(fields: dict) -> str:
    return "auto-" + hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _any_tile(fields: dict) -> dict:
    """The key of a choice for this network, CPU and request on whatever tile was measured."""
    return {**fields, "input": "any"}


def _load(fields: dict, how: str) -> Choice | None:
    from . import runtime_openvino

    data = runtime_openvino.load_choice(_folder(fields), fields)
    if data is None:
        return None
    try:
        return Choice.from_json(data, how)
    except (KeyError, TypeError, ValueError):
        return None


def _folder(fields: dict) -> Path:
    from . import runtime_openvino

    return runtime_openvino.cache_root() / "openvino" / _name(fields)


def _store(fields: dict, choice: Choice) -> None:
    from . import runtime_openvino

    for key in (fields, _any_tile(fields)):
        try:
            runtime_openvino.store_choice(_folder(key), key, choice.to_json())
        except OSError as exc:
            warnings.warn(
                f"the OpenVINO cache {_folder(key).parent} cannot be written "
                f"({exc.strerror or exc}); the next run measures again.",
                RuntimeWarning,
                stacklevel=3,
            )
            return


def forget() -> None:
    """Forget this process's choices (those stored in the cache stay): the next run reads the
    cache, as a new session would."""
    _CHOICES.clear()


# ---- measuring -------------------------------------------------------------------------------


class _Busy:
    """One busy-loop process beside the measurement, for as long as the block lasts."""

    def __enter__(self) -> _Busy:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _BUSY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.2)  # it is spinning before the first timing
        return self

    def __exit__(self, *exc) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class _Runner:
    """A candidate made ready: ``call()`` runs the probe batch once and returns its outputs."""

    candidate: Candidate
    call: Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]
    batch: int
    quiet: list[float] = field(default_factory=list)
    busy: list[float] = field(default_factory=list)
    net: Any = None  # OpenVINO's compiled network, kept for the run when chosen

    def timed(self) -> float:
        start = time.perf_counter()
        self.call()
        return (time.perf_counter() - start) / self.batch


def _runner(cand: Candidate, model: AttentionUNetBase, tile: torch.Tensor, plan: Any, options: Any):
    """``cand`` ready to run the probe batch as the run would run its batches."""
    if cand.runtime == "openvino":
        return _openvino_runner(cand, model, tile, plan)
    dev = torch.device("cpu")
    layout = options.channels_last
    net = prepared(model, dev, fold=options.fold_batchnorm, layout=layout)
    memory = torch.contiguous_format
    if layout:
        memory = torch.channels_last if model.spec.spatial_dims == 2 else torch.channels_last_3d
    batch = plan.batch_size
    x = tile.expand(batch, *tile.shape[1:]).contiguous(memory_format=memory)

    def call():
        with torch.inference_mode(), autocast(dev, cand.precision):
            logits, gates = net.forward_with_attention(x)
        return logits.float(), [g.float() for g in gates]

    return _Runner(cand, call, batch)


def _compile(model: AttentionUNetBase, cand: Candidate):
    """``cand`` compiled for this CPU; OpenVINO's own settings through ``runtime_openvino.network``,
    which converts once and remembers a network it cannot run (NotConvertible)."""
    from . import runtime_openvino

    default = runtime_openvino.network(model, cand.precision)
    if cand.hint in (None, "LATENCY") and cand.threads is None:
        return default
    ov_model = runtime_openvino.converted(model)
    gates = len(model.spec.gates)
    hint = cand.hint or "LATENCY"
    return runtime_openvino.compile_network(ov_model, gates, cand.precision, hint, cand.threads)


def openvino_network(model: AttentionUNetBase, cand: Candidate):
    """The compiled network for ``cand``, kept on the model for this run and the next (one at a
    time, like ``runtime_openvino.network``, and only while the weights are the same)."""
    from . import runtime_openvino

    digest = runtime_openvino.weights_digest(model)
    held = _NETS.get(model)
    if held is not None and held[:2] == (digest, cand):
        return held[2]
    net = _compile(model, cand)
    _NETS[model] = (digest, cand, net)
    return net


def _openvino_runner(cand: Candidate, model: AttentionUNetBase, tile: torch.Tensor, plan: Any) -> _Runner:
    net = _compile(model, cand)
    batch = plan.batch_size
    if plan.auto_batch and model.spec.spatial_dims == 3:  # as the run batches them (run._network)
        batch = max(1, min(net.parallel, len(plan.jobs)))
    x = tile.expand(batch, *tile.shape[1:]).contiguous()
    runner = _Runner(cand, lambda: net.forward_with_attention(x), batch)
    runner.net = net
    return runner


def _agreement(out, ref, output: str) -> tuple[float, float]:
    """(share of voxels with the reference's label, largest gate mean |d|)."""
    logits, gates = out
    ref_logits, ref_gates = ref
    if output == "softmax":
        same = logits.argmax(1) == ref_logits.argmax(1)
    else:
        same = ((logits > 0) == (ref_logits > 0)).all(1)
    diffs = [float((g - r).abs().mean()) for g, r in zip(gates, ref_gates, strict=True)]
    return float(same.float().mean()), max(diffs, default=0.0)


def measure(runners: Sequence[_Runner], output: str, rounds: int = ROUNDS) -> list[Measurement]:
    """Each runner's first call (its labels against the first runner's, the reference's;
    and the warm-up), then ``rounds`` interleaved rounds quiet and busy. A candidate whose
    labels differ is not timed, and one slower than the reference in the first round is not
    timed again: neither can be chosen. The reference is timed in the first round only."""
    ref_out = runners[0].call()
    agreement = {runners[0].candidate: (1.0, 0.0)}
    for runner in runners[1:]:
        agreement[runner.candidate] = _agreement(runner.call(), ref_out, output)
    ref = runners[0]
    timed = [r for r in runners if r is ref or _agrees(agreement[r.candidate])]
    for k in range(rounds):
        for r in timed:
            r.quiet.append(r.timed())
        with _Busy():
            for r in timed:
                r.busy.append(r.timed())
        if k == 0:  # the reference (often the slowest) is timed once; the contenders again
            timed = [r for r in timed if r is not ref and _not_slower(r, ref)]
    out = []
    for r in runners:  # one not timed (labels differ) is listed, as never faster
        share, gate = agreement[r.candidate]
        quiet, busy = (_median(r.quiet), _median(r.busy)) if r.quiet else (math.inf, math.inf)
        out.append(Measurement(r.candidate, quiet, busy, share, gate))
    return out


def _not_slower(runner: _Runner, ref: _Runner) -> bool:
    return runner.quiet[0] <= ref.quiet[0] and runner.busy[0] <= ref.busy[0]


def _agrees(pair: tuple[float, float]) -> bool:
    return pair[0] >= 1 - LABEL_TOLERANCE and pair[1] <= GATE_TOLERANCE


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


# ---- the choice for a run --------------------------------------------------------------------


def choose(model: AttentionUNetBase, plan: Any, options: Any) -> Generator[Progress, None, Choice]:
    """The choice for this run (``plan`` made for PyTorch fp32 on the CPU): from this process,
    from the cache, measured now on one tile of ``plan``, or, for a run cheaper than measuring,
    not measured. Yields a Progress while it converts and measures."""
    runtime, precision = str(options.runtime).lower(), str(options.precision).lower()
    openvino = runtime != "torch" and openvino_available()
    if openvino:
        from . import runtime_openvino

        runtime_openvino.cache_limit()  # a bad $NAPARI_ATTUNET_CACHE_MB names the setting
    cores = os.cpu_count() or 1
    cands = candidates(runtime, precision, fast_bf16=cpu_has_fast_bf16(), openvino=openvino, cores=cores)
    if len(cands) == 1:
        return Choice(cands[0], how="only")
    with _LOCK:
        return (yield from _choose(model, plan, options, cands, openvino, cores))


def _choose(model, plan, options, cands, openvino: bool, cores: int) -> Generator[Progress, None, Choice]:
    from . import runtime_openvino
    from .tta import flips

    digest = runtime_openvino.weights_digest(model)  # remembered on the model
    request = str(options.runtime).lower(), str(options.precision).lower()
    name, fields = choice_key(digest, (model.spec.in_channels, *plan.tile), *request)
    known = _CHOICES.get(name) or _load(fields, "stored")
    if known is not None:
        _CHOICES[name] = known = dataclasses.replace(known, how="stored")
        return known
    run_tiles = len(plan.jobs) * len(flips(model.spec.spatial_dims, options.tta))
    measured = [REFERENCE, *(c for c in cands if c != REFERENCE)]  # the reference is always run
    probe = probe_tiles(measured, plan.batch_size, min(cores, len(plan.jobs)))
    if not worth_probing(run_tiles, probe):
        reason = (
            f"{run_tiles} tile{'s' * (run_tiles > 1)} cost{'s' * (run_tiles == 1)} less than measuring; "
            f"runs of {RUN_TO_PROBE * probe} tiles or more measure once"
        )
        elsewhere = _load(_any_tile(fields), "elsewhere")
        if elsewhere is not None and elsewhere.candidate in cands:
            return Choice(elsewhere.candidate, elsewhere.figures, "elsewhere", elsewhere.tile, reason)
        picked = unmeasured_default(cands, plan.tile)
        if picked != cands[0]:
            reason += f"; {UNMEASURED_WHY}"
        return Choice(picked, how="unmeasured", reason=reason)
    choice = yield from _probe(model, plan, options, cands, openvino)
    _CHOICES[name] = choice
    if choice.figures:
        _store(fields, choice)
    return choice


def _probe(model, plan, options, cands: list[Candidate], openvino: bool) -> Generator[Progress, None, Choice]:
    """Measure the candidates on the middle tile of the run."""
    from . import runtime_openvino

    z, start = plan.jobs[len(plan.jobs) // 2]
    region = tuple(slice(s, s + t) for s, t in zip(start, plan.tile, strict=True))
    tile = plan.x[(slice(None), z) + region].unsqueeze(0).float()
    fallback = None
    if openvino and runtime_openvino.known_failure(model, "fp32") is None:
        if not runtime_openvino.is_ready(model):
            yield Progress("preparing", 0, 1, runtime_openvino.COMPILING)
    yield Progress("preparing", 0, 1, MEASURING)
    runners = [_runner(REFERENCE, model, tile, plan, options)]
    for cand in cands:
        if cand == REFERENCE:
            continue
        try:
            runners.append(_runner(cand, model, tile, plan, options))
        except runtime_openvino.NotConvertible as exc:
            fallback = f"OpenVINO cannot run this network ({exc}), so PyTorch ran it."
    permitted = [c for c in cands if c in {r.candidate for r in runners}]
    if not permitted:  # an explicit OpenVINO that cannot run: the run says so as without auto
        return Choice(cands[0], how="unmeasured", reason="OpenVINO cannot run this network")
    figures = measure(runners, model.spec.output)
    picked = decide(figures, permitted)
    chosen = next(r for r in runners if r.candidate == picked)
    if chosen.net is not None:  # the run uses the network measured, not a second compilation
        _NETS[model] = (runtime_openvino.weights_digest(model), picked, chosen.net)
    return Choice(picked, tuple(figures), "measured", tuple(plan.tile), fallback=fallback)


def settle(
    model: AttentionUNetBase, plan, options, device: torch.device, precision: str, engine: str
) -> Generator[Progress, None, tuple[str, str, object | None, list[str]]]:
    """(precision, runtime, the OpenVINO network to run or None, notes) for a run planned on
    ``device``: on the CPU, what ``auto`` left open is decided by ``autochoice`` (measured once,
    then from the cache); OpenVINO is then prepared, and where it cannot run this network under
    ``auto``, PyTorch runs it and a note says why."""
    notes: list[str] = []
    net = None
    chosen = None
    if applies(options.runtime, options.precision, device):
        choice = yield from choose(model, plan, options)
        precision, engine = choice.candidate.precision, choice.candidate.runtime
        notes += [n for n in (choice.fallback, choice.note) if n]
        if choice.fallback:
            warnings.warn(choice.fallback, RuntimeWarning, stacklevel=3)
        chosen = choice.candidate
    if engine == "openvino":  # after the plan: a bad input fails before a long conversion
        fallback = yield from prepare_openvino(model, precision, options.runtime)
        if fallback is not None:
            notes.append(fallback)
            warnings.warn(fallback, RuntimeWarning, stacklevel=3)
            return precision, "torch", None, notes
        if chosen is not None:
            net = openvino_network(model, chosen)
    return precision, engine, net, notes
