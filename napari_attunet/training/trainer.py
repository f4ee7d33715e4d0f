"""Training: patches, Dice + cross-entropy (deep-supervision aware), mixed precision,
per-class validation Dice after every epoch, the best checkpoint saved with full metadata,
resumable, and DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..inference import iter_predict
from ..inference.devices import cpu_has_fast_bf16, resolve_device
from ..inference.local import drive
from ..inference.options import RunOptions
from ..models import ModelSpec, build
from ..models import family as model_family
from ..models.checkpoint import save_model
from .data import Case, PatchSampler


@dataclass
class TrainConfig:
    out: Path
    spec: ModelSpec
    patch: tuple[int, ...]
    normalization: dict = field(default_factory=lambda: {"mode": "zscore"})
    batch: int = 2
    epochs: int = 20
    steps: int = 50
    lr: float = 2e-3
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: bool = False
    foreground: float = 0.33
    tile: tuple[int, ...] | None = None

    @property
    def state_path(self) -> Path:
        return Path(self.out).with_suffix(".state.pt")


def default_spec(
    dims: int,
    in_channels: int,
    classes: int,
    features=(8, 16, 32, 64, 128),
    family: str = "official",
    variant: str | None = None,
) -> ModelSpec:
    """A network to train. The default is the paper's design: the official single-gate,
    deep-supervised network. ``features`` are the encoder widths, finest first."""
    return model_family(family).default_spec(
        dims, in_channels, classes, tuple(features), variant, output="softmax", axes="zyx"[-dims:]
    )  # trained on scan-order arrays


# ---- loss ------------------------------------------------------------------------------------


def dice_ce(logits: torch.Tensor, target: torch.Tensor, output: str) -> torch.Tensor:
    """Cross-entropy (or BCE) plus soft Dice over the foreground classes."""
    logits = logits.float()
    if output == "softmax":
        ce = F.cross_entropy(logits, target)
        probs = torch.softmax(logits, 1)[:, 1:]
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1)[:, 1:].float()
    else:
        onehot = torch.stack([(target == k + 1) for k in range(logits.shape[1])], 1).float()
        ce = F.binary_cross_entropy_with_logits(logits, onehot)
        probs = torch.sigmoid(logits)
    dims = tuple(range(2, logits.dim()))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice.mean())


def supervised_loss(model, x: torch.Tensor, y: torch.Tensor, output: str) -> torch.Tensor:
    """The final output's loss, plus each deep-supervision head's at weight 1/2, 1/4, ..."""
    logits, heads = model(x, deep_supervision=True)
    loss = dice_ce(logits, y, output)
    for k, head in enumerate(heads, start=1):
        loss = loss + 0.5**k * dice_ce(head, y, output)
    return loss


# ---- validation -------------------------------------------------------------------------------


def dice_per_class(pred: np.ndarray, truth: np.ndarray, classes: int) -> list[float]:
    out = []
    for c in range(1, classes):
        a, b = pred == c, truth == c
        total = int(a.sum() + b.sum())
        out.append(1.0 if total == 0 else float(2 * (a & b).sum() / total))
    return out


# a Case is already normalized, channels first; labels only, in fp32
VALIDATION = RunOptions(channel_axis=0, normalization="none", precision="fp32", attention=False)


def validate(model, cases: list[Case], spec: ModelSpec, tile, device: str) -> list[float]:
    """Mean per-class Dice over the validation cases (sliding-window prediction)."""
    classes = spec.out_channels + (1 if spec.output == "sigmoid" else 0)
    scores = []
    model.eval()
    options = VALIDATION.replace(tile=tile, device=device)
    for case in cases:
        pred = drive(iter_predict(case.image, model, options))
        scores.append(dice_per_class(pred.labels(), case.labels, classes))
    return [float(v) for v in np.mean(scores, axis=0)]


# ---- distributed -------------------------------------------------------------------------------


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _training_device(requested: str, world: int) -> torch.device:
    """Alone: the device asked for. Under torchrun: this process's GPU (NCCL) or the CPU (gloo)."""
    if world == 1:
        return resolve_device(requested)
    import torch.distributed as dist

    cuda = requested != "cpu" and torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return device


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---- the loop --------------------------------------------------------------------------------


def _precision(device: torch.device, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def train(
    config: TrainConfig,
    train_cases: list[Case],
    val_cases: list[Case],
    class_names: list[str],
    data_summary: dict | None = None,
) -> Generator[dict, None, dict]:
    """Yields a record after each step and each epoch; returns the training summary."""
    rank, world = _distributed()
    device = _training_device(config.device, world)
    torch.manual_seed(config.seed)
    spec = config.spec.replace(
        class_names=tuple(class_names),
        normalization=dict(config.normalization),
        spacing=tuple(train_cases[0].spacing),
        tile=config.tile,
    )
    model = build(spec).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    amp = _precision(device, config.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    start_epoch, best, history = 0, -1.0, []
    if config.resume and config.state_path.exists():
        state = torch.load(config.state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best"])
        history = json.loads(state["history"])
    module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = PatchSampler(
        train_cases, config.patch, config.foreground, seed=config.seed + 1000 * rank + 7919 * start_epoch
    )
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        model.train()
        losses = []
        for step in range(config.steps):
            x, y = sampler.sample(config.batch)
            x = torch.from_numpy(x).to(device)
            y = torch.from_numpy(y).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = supervised_loss(model, x, y, spec.output)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(float(loss.detach()))
            yield {"kind": "step", "epoch": epoch, "step": step, "loss": losses[-1]}
        record = {"epoch": epoch, "loss": float(np.mean(losses))}
        if world > 1:
            _sync_buffers(module)
        if rank == 0:
            dice = validate(module, val_cases, spec, config.tile, str(device))
            record["dice"] = dict(
                zip(class_names[1:] if spec.output == "softmax" else class_names, dice, strict=True)
            )
            score = float(np.mean(dice))
            if score > best:
                best = score
                record["best"] = True
                summary = {"epochs": epoch + 1, "val_dice": record["dice"], "data": data_summary}
                save_model(module, config.out, provenance={"training": summary})
            history.append(record)
            torch.save(
                {
                    "model": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "best": best,
                    "history": json.dumps(history),
                },
                config.state_path,
            )
        if world > 1:
            import torch.distributed as dist

            dist.barrier()
        yield {"kind": "epoch", **record}
    summary = {
        "best_mean_dice": best,
        "history": history,
        "seconds": time.perf_counter() - started,
        "out": str(config.out),
        "config": {k: str(v) for k, v in asdict(config).items()},
    }
    if world > 1:
        summary["ranks"] = _gather_digests(module, rank, world, config.out)
        _leave_group()
    return summary


def _leave_group() -> None:
    """Close the process group before the interpreter exits: a gloo group left open aborts its
    process at exit now and then ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _sync_buffers(model) -> None:
    """Rank 0's BatchNorm statistics everywhere: each rank updated its own during the epoch
    (DDP only broadcasts them at the next forward), and rank 0's are the ones saved."""
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def _gather_digests(model, rank: int, world: int, out: Path) -> list[str]:
    """Every rank's weights digest; rank 0 writes them beside the checkpoint."""
    import torch.distributed as dist

    mine = torch.tensor(list(bytes.fromhex(weights_digest(model))), dtype=torch.uint8)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    digests = [bytes(t.tolist()).hex() for t in gathered]
    if rank == 0:
        Path(out).with_suffix(".ranks.json").write_text(json.dumps(digests))
    return digests
