"""User paths, local or in an object store (gs://), through etils.epath.

Object stores have no rename and no append: a local file is written under a temporary name and renamed, so a reader
never sees half of it; an object is written whole in one request, which gives readers the same guarantee.
"""
import os

from etils import epath


def is_remote(path) -> bool:
    """True for URIs such as gs://bucket/dir."""
    return "://" in os.fspath(path)


def resolved(path) -> epath.Path:
    """An absolute local path (the same directory whatever the current one), or the URI as it is."""
    return epath.Path(path) if is_remote(path) else epath.Path(path).resolve()


def write_text(path: epath.Path, text: str) -> None:
    """Replaces the file's content whole (see the module docstring)."""
    if is_remote(path):
        path.write_text(text)
        return
    tmp = path.parent / f"{path.name}.tmp{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(path)
