"""Crash-safe checkpoints.

Each checkpoint is a pair of files, weights (safetensors) and trainer state (optimiser,
scheduler, RNG states, history; torch.save), each written atomically; `latest.json`, also
replaced atomically and written last, names the pair to resume from. A kill at any instant
leaves either the previous complete checkpoint or the new one.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .utils import atomic_write, atomic_write_text


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_weights(path: Path, module: torch.nn.Module, metadata: dict | None = None) -> None:
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    atomic_write(path, lambda f: f.write(save_safetensors(tensors_of(module), metadata=meta)))


def load_weights(path: Path, module: torch.nn.Module) -> None:
    module.load_state_dict(load_safetensors(Path(path).read_bytes()))


def save_checkpoint(run_dir: Path, step: int, module: torch.nn.Module, state: dict) -> None:
    folder = Path(run_dir) / "checkpoints"
    stem = f"step-{step:08d}"
    save_weights(folder / f"{stem}.safetensors", module, {"step": step})
    atomic_write(folder / f"{stem}.pt", lambda f: torch.save(state, f))
    atomic_write_text(folder / "latest.json", json.dumps({"step": step, "stem": stem}))
    for old in folder.glob("step-*"):
        if not old.name.startswith(stem):
            old.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path, module: torch.nn.Module) -> dict | None:
    """Load the latest checkpoint's weights into `module`; return its trainer state (or None)."""
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    for stale in pointer.parent.glob(".*.tmp"):  # half-written files of a killed process
        stale.unlink(missing_ok=True)
    stem = json.loads(pointer.read_text())["stem"]
    load_weights(pointer.parent / f"{stem}.safetensors", module)
    return torch.load(pointer.parent / f"{stem}.pt", weights_only=False)
