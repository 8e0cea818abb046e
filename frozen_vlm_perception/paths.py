"""Where things live: the shipped model folder, the user cache. One place for each path.

Also :func:`make_readable`, for files written into a cache that several users may share.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_NAME = "frozen_vlm_perception"
MODEL_CONFIG_FILE = "config.json"  # what makes a folder a model folder (with model.safetensors)


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


def default_model_dir() -> Path | None:
    """The shipped, trained model (models/demo), from the checkout or the share folder."""
    for base in (source_root(), share_dir()):
        if base is not None and (base / "models" / "demo" / MODEL_CONFIG_FILE).is_file():
            return base / "models" / "demo"
    return None
