"""Outputs that appear only when complete.

A run writes to a hidden temporary file in the destination's own directory (so the final
rename is atomic, on one file system) and renames it over the destination at the end. An
interrupted or failed run deletes its temporary file and leaves an existing destination as it
was; a full disk is reported naming the destination.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile


class OutputError(OSError):
    pass


class OverwritesInput(ValueError):
    """An output that is, or would replace, one of the tool's inputs."""


def _inside(path: str, folder: str) -> bool:
    return path != folder and os.path.commonpath([path, folder]) == folder


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(output: str | os.PathLike, inputs) -> None:
    """Refuses an ``output`` whose folder does not exist, or that is one of ``inputs`` or would
    replace or damage one: the same file (also through a symlink or a hard link), a folder that
    holds an input (a folder output replaces the whole folder), or an existing file inside an
    input folder (a checkpoint's weights or config). Every tool that writes calls it before it
    reads anything; ``None`` entries and objects that are not paths are skipped."""
    check_folder(os.path.abspath(os.fspath(output)))
    out = os.path.realpath(os.fspath(output))
    for given in inputs:
        if not isinstance(given, (str, os.PathLike)):
            continue
        try:
            src = os.path.realpath(os.fspath(given))
        except ValueError:  # not a path at all (calibration given as text with a NUL in it)
            continue
        why = None
        if out == src or _same_file(out, src):
            why = "is"
        elif _inside(src, out):
            why = "is a folder that holds"
        elif os.path.isdir(src) and os.path.lexists(out):
            if _inside(out, src):
                why = "would replace a file of"
            elif os.path.isfile(out) and any(
                _same_file(out, e.path) for e in os.scandir(src) if e.is_file(follow_symlinks=False)
            ):
                why = "is a hard link to a file of"
        if why:
            raise OverwritesInput(
                f"output {os.fspath(output)} {why} the input {os.fspath(given)}: refusing to write over it "
                "(nothing was written; choose another output path)"
            )


def check_folder(path: str) -> None:
    """The error for an output whose folder is missing, naming the output (not a temporary)."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise OutputError(errno.ENOENT, f"cannot write {path}: the folder {parent} does not exist")


def _disk_full(path: str, e: OSError) -> OSError:
    if e.errno == errno.ENOSPC:
        return OutputError(errno.ENOSPC, f"disk full while writing {path}: nothing was written there "
                           "(free some space, or write elsewhere)")  # fmt: skip
    return e


class AtomicFile:
    """``with AtomicFile(path) as f: f.write(...)``: binary file, renamed to ``path`` on success.
    ``verify(temporary_path)``, when given, runs on the complete file before the rename: if it
    raises, the file is deleted and ``path`` is left as it was."""

    def __init__(self, path: str | os.PathLike, verify=None):
        self.path = os.path.abspath(os.fspath(path))
        self.verify = verify
        if os.path.isdir(self.path):
            raise IsADirectoryError(f"output {self.path} is a directory")
        self._f = None

    def __enter__(self):
        check_folder(self.path)
        d, base = os.path.split(self.path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".partial", dir=d)
        self._f = os.fdopen(fd, "wb")
        return self

    def write(self, data) -> None:
        try:
            self._f.write(data)
        except OSError as e:
            raise _disk_full(self.path, e) from e

    def tell(self) -> int:
        return self._f.tell()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._f.flush()
                os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            os.unlink(self.tmp)
            raise _disk_full(self.path, e) from e
        except BaseException:
            os.unlink(self.tmp)
            raise
        if exc_type is not None:
            os.unlink(self.tmp)
            return
        if self.verify is not None:
            try:
                self.verify(self.tmp)
            except BaseException:
                os.unlink(self.tmp)
                raise
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)


class AtomicDir:
    """A directory built under a temporary name beside ``path``, renamed to it on success (an
    existing ``path`` is replaced only then)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    def __enter__(self) -> str:
        parent, base = os.path.split(self.path)
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=parent)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, 0o755)
        if os.path.isdir(self.path):
            old = self.path + ".old-" + os.path.basename(self.tmp)
            os.replace(self.path, old)
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)
