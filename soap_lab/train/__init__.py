"""Training: corpora and tokenizers, the GPT, :class:`TrainConfig`, the loop (DDP/ZeRO, checkpoints).

    from soap_lab.train import TrainConfig, train
    result = train(TrainConfig(optimizer="soap", precondition_frequency=10, preset="mini", steps=300))
"""
from .config import TrainConfig
from .loop import RunResult, train

__all__ = ["TrainConfig", "RunResult", "train"]
