"""Test helper: write networks in NVIDIA's snapshot pickle format (persistent objects with module_src,
EasyDict kwargs, numpy scalars, legacy tensor storages) without NVIDIA's code, so the loader can be tested on
configurations the golden files don't cover, and so malicious variants can be hand-made."""

from __future__ import annotations

import collections
import pickle
import sys
import types

import numpy as np
import torch

FAKE_SRC = "# training/networks.py would be here; a loader must never exec it\nimport os\n"


def _install_fake_modules():
    """Register importable stand-ins so pickle can name the NVlabs globals."""
    if "torch_utils.persistence" in sys.modules and hasattr(sys.modules["torch_utils.persistence"], "_mg_fake"):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, sys.modules["dnnlib.util"].EasyDict
    tu = types.ModuleType("torch_utils")
    pers = types.ModuleType("torch_utils.persistence")
    pers._mg_fake = True

    def _reconstruct_persistent_obj(meta):  # never called by our loader
        raise RuntimeError("fake")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    dn = types.ModuleType("dnnlib")
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn, "dnnlib.util": util})
    return _reconstruct_persistent_obj, EasyDict


class Persistent:
    """Pickles as torch_utils.persistence._reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name: str, state: dict, module_src: str = FAKE_SRC):
        self.meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)

    def __reduce__(self):
        fn, _ = _install_fake_modules()
        return fn, (self.meta,)


def module_record(m: torch.nn.Module, init_kwargs: dict | None = None) -> Persistent:
    _, EasyDict = _install_fake_modules()
    state = {
        "training": False,
        "_parameters": collections.OrderedDict((k, v) for k, v in m._parameters.items()),
        "_buffers": collections.OrderedDict((k, v) for k, v in m._buffers.items()),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": collections.OrderedDict((k, module_record(v)) for k, v in m._modules.items()),
        "_init_args": (),
        "_init_kwargs": EasyDict(
            {k: (EasyDict(v) if isinstance(v, dict) else v) for k, v in (init_kwargs or {}).items()}
        ),
    }
    if hasattr(m, "weight_gain"):
        state["weight_gain"] = np.float64(m.weight_gain)
    return Persistent(type(m).__name__, state)


def snapshot_bytes(G=None, D=None, G_ema=None) -> bytes:
    _install_fake_modules()
    data = {"training_set_kwargs": {"path": "datasets/none.zip", "resolution": 32}}
    for key, net in (("G", G), ("D", D), ("G_ema", G_ema)):
        data[key] = module_record(net, net.init_kwargs) if net is not None else None
    data["augment_pipe"] = None
    return pickle.dumps(data, protocol=4)
