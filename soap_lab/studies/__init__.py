"""The lab's questions, one file each: a study declares its grid (per scale; seeds are a dimension), its claims
(through :mod:`soap_lab.stats`, each with its verdict) and its figures. ``docs/adding-a-study.md`` adds one.

    python -m soap_lab study list
    python -m soap_lab study run frequency --scale cpu_freq --threads 1   # trains what is missing (resumable)
    python -m soap_lab study report --scale cpu_freq                        # every claim with its interval
"""
from .base import Study, StudyData, finite, label, lr_sweep_configs, run_config, tuned_lr
from .registry import data, figures, get, load_file, studies, train
from .scales import SCALES, Scale, get_scale, is_registered

__all__ = ["Study", "StudyData", "Scale", "SCALES", "get_scale", "is_registered", "run_config", "lr_sweep_configs",
           "tuned_lr", "label", "finite", "studies", "get", "load_file", "figures", "data", "train"]
