"""Where and when a result was computed: git commit, device, versions, time (what every stored result carries).

Read-only and cheap: ``git`` runs with ``--no-optional-locks``; torch is imported only to name the device.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from typing import Any, Dict, Optional

from .store import REPO_ROOT

__all__ = ["git_info", "environment_info", "now_iso", "provenance"]


def git_info(repo: os.PathLike = REPO_ROOT) -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding soap_lab.

    Read-only: ``--no-optional-locks`` keeps ``git status`` from touching the index. ``dirty`` means a
    tracked file differs from HEAD (untracked files, such as new run records, do not count).
    """
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", "--no-optional-locks", "-C", str(repo), *args],
                capture_output=True, text=True, timeout=20,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": commit.strip() if commit else None,
        "dirty": (status.strip() != "") if status is not None else None,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("soap-lab")
    except Exception:  # not installed (run from a plain checkout)
        import soap_lab

        return getattr(soap_lab, "__version__", "unknown")


def environment_info(device: Any = "cpu") -> Dict[str, Any]:
    """Device (type, name, CPU model, GPU model), torch/python/soap_lab versions, host platform."""
    import torch

    dev = torch.device(device)
    info: Dict[str, Any] = {
        "type": dev.type,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
        info["name"] = info["gpu"]
    else:
        info["name"] = info["cpu"]
    return {
        "device": info,
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "soap_lab_version": _package_version(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(device: str = "cpu") -> Dict[str, Any]:
    """Environment, git commit and time of a computed data set (as run records carry)."""
    prov = environment_info(device)
    git = git_info()
    prov.update(git_commit=git["commit"], git_dirty=git["dirty"], time=now_iso())
    return prov
