"""Several detectors as one: a face is fake when any of them says so.

Detectors trained on different fakes fail differently. The bundled one separates FFHQ photos from StyleGAN
faces and misses diffusion portraits; one trained on reals against Stable Diffusion catches those and has never
seen a StyleGAN. One network trained on every generator learnt that FFHQ framing means "fake" (docs/detect.md).
`AnyOf` keeps each member as it was trained and combines verdicts instead of data:

    margin_k = logit_k / T_k - logit(threshold_k) - offset_k      (> 0: member k says fake)
    logit    = max_k margin_k                                      (> 0: some member says fake)

The offsets and the temperature of the combined logit are fitted on validation faces by detect/combine.py; the
threshold stays 0.5, which is the OR of the members' verdicts.

Members must share their input (size, JPEG policy, patch setting), so one preprocessed face feeds every member.
Grad-CAM works through `feature_map` (the members' maps side by side) and `logit_from_map`: the gradient of the
max flows into the member that decided. A member that pools its input (spec.pool) has a coarser map; it is
repeated up to the finest member's size, which leaves its average, and so its logit, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from machinegaze import GazeError
from machinegaze.detect.model import Detector, detector_from_state


class AnyOf(nn.Module):
    """Detectors combined by OR (see the module docstring). Behaves like a Detector for predict, eval, Grad-CAM,
    the web lab, dream and uncanny: `spec`, raw logits from `forward`, `temperature`, `threshold`."""

    def __init__(self, members: Sequence[Detector], offsets: Sequence[float] | None = None):
        super().__init__()
        if len(members) < 2:
            raise GazeError("an any-of detector needs at least two member detectors")
        first = members[0].spec
        for m in members[1:]:
            if (m.spec.size, m.spec.jpeg_quality, m.spec.patch) != (first.size, first.jpeg_quality, first.patch):
                raise GazeError(
                    "member detectors must take the same input: size, JPEG quality and patch "
                    f"{(first.size, first.jpeg_quality, first.patch)} vs {(m.spec.size, m.spec.jpeg_quality, m.spec.patch)}"
                )
        offsets = [0.0] * len(members) if offsets is None else [float(o) for o in offsets]
        if len(offsets) != len(members):
            raise GazeError(f"{len(offsets)} offsets for {len(members)} member detectors")
        self.members = nn.ModuleList(members)
        self.spec = first
        self.register_buffer("offsets", torch.tensor(offsets))
        self.register_buffer("temperature", torch.tensor(1.0))
        self.register_buffer("threshold", torch.tensor(0.5))

    def margins(self, member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """[N, K]: each member's calibrated logit minus the logit of its threshold and its offset."""
        cols = []
        for m, z, off in zip(self.members, member_logits, self.offsets):
            t = m.threshold.clamp(1e-6, 1 - 1e-6)
            cols.append(z.float() / m.temperature - torch.log(t / (1 - t)) - off)
        return torch.stack(cols, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw logits [N]: the largest member margin (P(fake) = sigmoid(logit / temperature))."""
        return self.margins([m(x) for m in self.members]).amax(1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        maps = [m.feature_map(x) for m in self.members]
        h, w = max(f.shape[-2] for f in maps), max(f.shape[-1] for f in maps)
        for i, f in enumerate(maps):
            if f.shape[-2:] != (h, w):
                if h % f.shape[-2] or w % f.shape[-1]:
                    raise GazeError(f"member maps of {tuple(f.shape[-2:])} and {(h, w)} cells cannot be aligned")
                maps[i] = f.repeat_interleave(h // f.shape[-2], -2).repeat_interleave(w // f.shape[-1], -1)
        return torch.cat(maps, 1)

    def logit_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        parts = fmap.split([m.body.out_channels for m in self.members], 1)
        return self.margins([m.logit_from_map(f) for m, f in zip(self.members, parts)]).amax(1)

    @torch.no_grad()
    def prob_fake(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x) / self.temperature)

    def set_calibration(self, temperature: float, threshold: float) -> None:
        if not temperature > 0:
            raise GazeError(f"temperature must be > 0, got {temperature}")
        self.temperature.fill_(float(temperature))
        self.threshold.fill_(float(threshold))


def anyof_from_state(member_specs: Sequence[dict], state: dict[str, torch.Tensor]) -> AnyOf:
    """Rebuild an AnyOf from its members' saved specs and its tensors (used by checkpoints.load_detector)."""
    members = []
    for i, spec in enumerate(member_specs):
        prefix = f"members.{i}."
        members.append(
            detector_from_state(spec, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        )
    model = AnyOf(members)
    rest = {k: v.float() for k, v in state.items() if not k.startswith("members.")}
    if set(rest) != {"offsets", "temperature", "threshold"} or rest["offsets"].shape != model.offsets.shape:
        raise GazeError(f"any-of detector tensors do not match {len(members)} members: {sorted(rest)[:4]}")
    for k, v in rest.items():
        getattr(model, k).copy_(v)
    return model.eval()
