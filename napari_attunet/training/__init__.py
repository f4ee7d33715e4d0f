"""Training Attention U-Nets: the trainer, its data, and the demo recipe."""

from .trainer import TrainConfig, default_spec, train

__all__ = ["TrainConfig", "default_spec", "train"]
