"""Fine-tuning: LoRA training of vidgen pipelines (``vidgen train-lora``)."""

from .config import LoraTrainingConfig, load_config

__all__ = ["LoraTrainingConfig", "load_config"]
