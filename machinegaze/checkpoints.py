"""Safe loading and saving of weight files. The only module that reads or writes weights.

Never executes pickled code: NVlabs pickles go through a restricted unpickler; torch files load with
weights_only=True; our own format is safetensors with a JSON config in the metadata.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from machinegaze import GazeError


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain `torch.save`d state dict, loaded with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such weights file: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GazeError(f"{path}: not a loadable torch weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GazeError(f"{path}: expected a state dict of tensors")
    return sd
