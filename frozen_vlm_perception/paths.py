"""Where things live: the package data (models/, config/, launch/), the shipped model folder, the
``model_dir`` parameter's lookup, the user cache. One place for each path.

Also :func:`make_readable`, for files written into a cache that several users may share. ROS-free:
the ament index is only consulted, lazily, when it is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_NAME = "frozen_vlm_perception"
MODEL_CONFIG_FILE = "config.json"  # what makes a folder a model folder (with model.safetensors)
# The shipped trained model, relative to the package data folder (repo root or share/<package>).
DEFAULT_MODEL_DIR = "models/demo"


def cache_dir(*parts: str) -> Path:
    """$FVP_CACHE_DIR, else $XDG_CACHE_HOME/frozen_vlm_perception, else ~/.cache/frozen_vlm_perception."""
    root = os.environ.get("FVP_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / PACKAGE_NAME)
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_readable(path: Path) -> None:
    """Give a file made by tempfile (mode 0600) the permissions the umask allows (usually 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def source_root() -> Path | None:
    """The repository root when running from a checkout (editable install), else None."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "package.xml").is_file() else None


def share_dir() -> Path | None:
    """The installed ament share folder (colcon install), when there is one."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return Path(get_package_share_directory(PACKAGE_NAME))
    except (PackageNotFoundError, KeyError, ValueError, OSError):  # OSError: AMENT_PREFIX_PATH unset
        return None


def package_data_dirs() -> list[Path]:
    """Where the package's data (models/, config/, launch/) lives: the source checkout, then the
    ament share folder of an installed package."""
    return [d for d in dict.fromkeys((source_root(), share_dir())) if d is not None]


def package_file(relative: str) -> Path:
    """A file shipped with the package (e.g. 'config/perception.yaml'), source checkout first."""
    for base in package_data_dirs():
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"{relative} not found in " + ", ".join(str(d) for d in package_data_dirs()))


def default_model_dir() -> Path | None:
    """The shipped, trained model (models/demo), from the checkout or the share folder."""
    for base in package_data_dirs():
        if (base / DEFAULT_MODEL_DIR / MODEL_CONFIG_FILE).is_file():
            return base / DEFAULT_MODEL_DIR
    return None


def resolve_model_dir(value: str) -> Path:
    """The model_dir parameter -> a model folder: absolute as given; relative to the working directory
    if it exists there, else relative to the package data folder (so the default 'models/demo' finds the
    shipped model from anywhere).

    A parameter is input from outside, so it is checked before anything is read from it: a NUL byte
    or a value that is not a string raises ValueError; a path that is a file, or a folder without
    config.json, raises FileNotFoundError saying so; nothing found raises FileNotFoundError listing
    where it looked."""
    if not isinstance(value, str):
        raise ValueError(f"model_dir must be a string path, got {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"model_dir contains a NUL byte: {value!r}")
    path = Path(value or DEFAULT_MODEL_DIR).expanduser()
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = list(dict.fromkeys([Path.cwd() / path] + [base / path for base in package_data_dirs()]))
    for candidate in candidates:
        if candidate.is_dir() and (candidate / MODEL_CONFIG_FILE).is_file():
            return candidate
    for candidate in candidates:  # nothing usable: say what is wrong with what is there
        if candidate.is_dir():
            raise FileNotFoundError(
                f"model_dir {str(value)!r}: {candidate} is a folder without {MODEL_CONFIG_FILE}, not a model "
                f"folder ({MODEL_CONFIG_FILE} + model.safetensors)"
            )
        if candidate.exists():
            raise FileNotFoundError(
                f"model_dir {str(value)!r}: {candidate} is a file, not a model folder "
                f"({MODEL_CONFIG_FILE} + model.safetensors)"
            )
    raise FileNotFoundError(
        f"model folder {str(value)!r} not found; looked in: " + ", ".join(str(c) for c in candidates)
    )
