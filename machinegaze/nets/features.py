"""Activations of any nn.Module by layer name, through forward hooks.

    fx = FeatureExtractor(net, ["_blocks.10", "_blocks.15", OUTPUT])
    acts = fx(x)     # {"_blocks.10": tensor, "_blocks.15": tensor, "output": net(x)}

Hooks live only for the duration of one call (nothing is left attached to the network). By default the forward
pass stops as soon as every requested layer has fired, so dreaming at a middle layer does not pay for the rest
of the network. Layer names are those of `net.named_modules()`; `list_layers` shows them with output shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from machinegaze import GazeError

OUTPUT = "output"  # pseudo-layer: whatever the forward function returns (logits for a classifier)


@dataclass(frozen=True)
class LayerInfo:
    name: str
    shape: tuple[int, ...]  # output shape for the probe input, batch dimension included
    kind: str  # module class name

    @property
    def channels(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else 0


class _Stop(Exception):
    """Raised inside a hook once every requested activation is captured (never escapes this module)."""


def _first_tensor(out: Any) -> Optional[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def layer_names(net: nn.Module) -> list[str]:
    """Names of all submodules (definition order), the root excluded."""
    return [name for name, _ in net.named_modules() if name]


def _suggest(names: Sequence[str], limit: int = 40) -> str:
    names = list(names)
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names)} in all; see --list-layers)" if len(names) > limit else "")


class FeatureExtractor:
    """Capture the outputs of named submodules of `net` during `forward(x)` (default: `net(x)`)."""

    def __init__(
        self,
        net: nn.Module,
        layers: Sequence[str],
        forward: Callable[[torch.Tensor], Any] | None = None,
        stop_early: bool = True,
    ):
        self.net = net
        self.forward = forward if forward is not None else net
        self.layers = list(dict.fromkeys(layers))
        modules = dict(net.named_modules())
        unknown = [n for n in self.layers if n != OUTPUT and (n not in modules or n == "")]
        if unknown:
            raise GazeError(f"unknown layer {unknown[0]!r}; valid layers: {_suggest(layer_names(net) + [OUTPUT])}")
        self.modules = {n: modules[n] for n in self.layers if n != OUTPUT}
        self.stop_early = stop_early and OUTPUT not in self.layers

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        acts: dict[str, torch.Tensor] = {}
        wanted = len(self.modules)

        def hook_for(name: str):
            def hook(_module, _inputs, output):
                if name in acts:  # a module called twice: keep the first call
                    return
                t = _first_tensor(output)
                if t is not None:
                    acts[name] = t
                if self.stop_early and wanted and len(acts) == wanted:
                    raise _Stop

            return hook

        handles = [m.register_forward_hook(hook_for(n)) for n, m in self.modules.items()]
        try:
            out = self.forward(x)
            if OUTPUT in self.layers:
                t = _first_tensor(out)
                if t is None:
                    raise GazeError("the network's forward returned no tensor")
                acts[OUTPUT] = t
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in acts]
        if missing:
            raise GazeError(
                f"layer {missing[0]!r} produced no tensor output in the forward pass "
                "(a container that is never called? pick one of --list-layers)"
            )
        return {n: acts[n] for n in self.layers}


def list_layers(
    net: nn.Module, input_size: int | tuple[int, int] = 224, forward: Callable[[torch.Tensor], Any] | None = None
) -> list[LayerInfo]:
    """Every submodule that produces a tensor on a [1, 3, H, W] probe, in execution order, with its output shape;
    the forward result comes last as OUTPUT."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    forward = forward if forward is not None else net
    seen: dict[str, LayerInfo] = {}
    handles = []
    for name, module in net.named_modules():
        if not name:
            continue

        def hook(m, _i, out, name=name):
            t = _first_tensor(out)
            if t is not None and name not in seen:
                seen[name] = LayerInfo(name, tuple(t.shape), type(m).__name__)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = forward(torch.zeros(1, 3, h, w))
    finally:
        for hd in handles:
            hd.remove()
    infos = list(seen.values())
    t = _first_tensor(out)
    if t is not None:
        infos.append(LayerInfo(OUTPUT, tuple(t.shape), "output"))
    return infos
