"""``Llama.from_pretrained``: a GGUF in a Hugging Face repository, found through
``huggingface_hub`` (an optional dependency: ``pip install huggingface_hub``).

``filename`` (and each of ``additional_files``) is a file name or a glob pattern over the
repository's paths (``*Q4_K_M.gguf``), as in llama-cpp-python. The local copy is looked up
first (``local_dir``, else the Hugging Face cache: ``cache_dir``, ``HF_HUB_CACHE``, ...) so a
model already downloaded loads offline; only when it is missing, and ``HF_HUB_OFFLINE`` is not
set, are the repository's files listed and the match downloaded.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace


def _hub() -> SimpleNamespace:
    try:
        from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise ImportError(
            "Llama.from_pretrained requires the huggingface_hub package: pip install huggingface_hub "
            "(or pip install 'ferrollm[hub]')"
        ) from None
    return SimpleNamespace(HfApi=HfApi, constants=constants, hf_hub_download=hf_hub_download,
                           snapshot_download=snapshot_download, LocalEntryNotFoundError=LocalEntryNotFoundError,
                           validate_repo_id=validate_repo_id)  # fmt: skip


def _offline() -> bool:
    # Read now, not at huggingface_hub's import: a script may set it after importing.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _files_under(root: str) -> dict[str, str]:
    """Relative POSIX path -> absolute path of every readable file (a snapshot's links whose
    blob is missing, i.e. an interrupted download, are left out)."""
    found = {}
    for d, _, names in os.walk(root):
        for name in names:
            path = os.path.join(d, name)
            rel = Path(os.path.relpath(path, root)).as_posix()
            if os.path.isfile(path) and not rel.startswith(".cache/"):  # local_dir's metadata
                found[rel] = path
    return found


def _local_files(hub: SimpleNamespace, repo_id: str, local_dir: str | None, cache_dir: str | None,
                 revision: str | None) -> tuple[dict[str, str], str]:  # fmt: skip
    """(files of the local copy, where it was looked for)."""
    if local_dir is not None:
        return (_files_under(local_dir) if os.path.isdir(local_dir) else {}), local_dir
    where = cache_dir or hub.constants.HF_HUB_CACHE
    try:
        snapshot = hub.snapshot_download(
            repo_id, cache_dir=cache_dir, revision=revision, local_files_only=True
        )
    except (hub.LocalEntryNotFoundError, OSError):
        return {}, where
    return _files_under(snapshot), where


def _one_match(files: Sequence[str], pattern: str, repo_id: str) -> str | None:
    matches = sorted(f for f in files if fnmatch.fnmatch(f, pattern))
    if len(matches) > 1:
        raise ValueError(f"Multiple files found in {repo_id} matching {pattern}: {', '.join(matches)}")
    return matches[0] if matches else None


def resolve(
    repo_id: str,
    filename: str,
    additional_files: Sequence[str] | None = None,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    revision: str | None = None,
) -> str:
    """The local path of ``filename``'s match (downloading it and the additional files'
    matches if they are not local and downloads are allowed)."""
    if not filename:
        raise ValueError("from_pretrained needs a filename or glob pattern of the GGUF in the repository")
    hub = _hub()
    hub.validate_repo_id(repo_id)
    local_dir = os.fspath(local_dir) if local_dir is not None else None
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else os.environ.get("HF_HUB_CACHE") or None
    local, where = _local_files(hub, repo_id, local_dir, cache_dir, revision)
    remote: list[str] | None = None
    paths = []
    for pattern in [filename, *(additional_files or [])]:
        match = _one_match(list(local), pattern, repo_id)
        if match is not None:
            paths.append(local[match])
            continue
        if _offline():
            raise FileNotFoundError(
                f"No file of {repo_id} in {where} matches {pattern!r}, and HF_HUB_OFFLINE is set so "
                f"nothing is downloaded (local files: {', '.join(sorted(local)) or 'none'})"
            )
        if remote is None:
            remote = hub.HfApi().list_repo_files(repo_id, revision=revision)
        match = _one_match(remote, pattern, repo_id)
        if match is None:
            raise ValueError(
                f"No file found in {repo_id} that matches {pattern!r} (files: {', '.join(remote)})"
            )
        paths.append(
            hub.hf_hub_download(repo_id, match, revision=revision, cache_dir=cache_dir, local_dir=local_dir)
        )
    return paths[0]
