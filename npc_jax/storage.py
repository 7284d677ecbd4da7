"""Files of a run: JSON-lines logs, atomic writes, flax checkpoints, the workdir lock.

Every log of the project (a run's ``results.jsonl``, a person's
``human_labels.jsonl``) is a file of whole JSON objects, one per line. The
rules that keep them safe:

* **A reader never modifies a file.** `read_jsonl` returns every line that
  parses, including a complete last line that lacks its final newline (an
  editor that saves without one); only an unparsable *last* line is skipped
  (a writer killed mid-line, or one writing right now). An unparsable line
  anywhere else is an error that names the file and the line.
* **Repairs happen only when a log is opened to append** (`JsonlLog.append`):
  a last line that parses gets its newline; a torn one (it does not parse) is
  cut off. Nothing that parses is ever dropped.
* Appends write one whole line and fsync it; `write_atomically` replaces a
  file by rename, so a reader sees the old or the new bytes, never a mix.
* **One process per records file** (`WorkdirLock`): a second process started
  on a workdir in use fails at once, naming the holder, instead of training
  twice and appending duplicate records. The workers of a grid
  (``config.shard``, `npc_jax.loop`) share the workdir and each lock their own
  records file.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from pathlib import Path

from npc_jax.data import DataError

__all__ = [
    "HUMAN_LABELS_FILE",
    "LOCK_FILE",
    "JsonlLog",
    "RecordsError",
    "WorkdirBusy",
    "WorkdirLock",
    "check_writable_dir",
    "numbered_objects",
    "read_flax",
    "read_jsonl",
    "write_atomically",
]

LOCK_FILE = ".npc_jax.lock"
HUMAN_LABELS_FILE = "human_labels.jsonl"   # a person's label store (npc_jax.labelling)


class RecordsError(DataError):
    """A records file or workdir that cannot be used; the message names it and the fix."""


class WorkdirBusy(RecordsError):
    """Another process holds the workdir's lock."""


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(complete lines without their newline, the bytes after the last newline)."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def _parse(line: bytes):
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file, in order; never writes.

    Args:
      path: the file; a missing file reads as empty.

    Returns:
      One dict per non-blank line. A last line without a final newline is
      kept if it parses, skipped if not (torn, or still being written).

    Raises:
      RecordsError: a line before the last is not a JSON object (the message
        gives ``file:line``).
    """
    return [value for _, value in numbered_objects(Path(path))]


def numbered_objects(path: Path) -> list[tuple[int, dict]]:
    """`read_jsonl`'s objects with their 1-based line numbers (for errors naming them)."""
    if not path.exists():
        return []
    lines, tail = _split_lines(path.read_bytes())
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        value = _parse(line)
        if value is None:
            raise RecordsError(
                f"{path}:{number} is not a JSON object: {line[:80]!r}. The file is damaged; "
                "remove or fix that line (every other line is kept).")
        out.append((number, value))
    if tail.strip():
        value = _parse(tail)
        if value is not None:
            out.append((len(lines) + 1, value))
    return out


class JsonlLog:
    """An append-only JSON-lines file (see the module docstring for the rules)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._repaired = False

    def read(self) -> list[dict]:
        """Every record (`read_jsonl`); the file is left as it is."""
        return read_jsonl(self.path)

    def _repair_tail(self) -> None:
        """Before the first append: end the file on a newline, keeping what parses."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        lines, tail = _split_lines(data)
        with open(self.path, "r+b") as f:
            if _parse(tail) is not None or not tail.strip():
                f.seek(0, os.SEEK_END)
                f.write(b"\n")                      # a whole record: keep it
            else:
                f.truncate(len(data) - len(tail))   # a torn write: drop its bytes
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: Mapping) -> None:
        """Appends `record` (a JSON object, e.g. ``RoundRecord.to_json()``) as one line, fsync'd."""
        if not self._repaired:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            self._repaired = True
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to a temporary file, fsyncs it, and renames it over `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_flax(path: str | os.PathLike, template, *, fix: str):
    """A pytree written by ``flax.serialization.to_bytes``, restored into `template`.

    Raises:
      RecordsError: the file is damaged or truncated; the message names it and
        ends with `fix` (what to delete to recompute it).
    """
    import flax.serialization  # imported here: the rest of this module needs no JAX

    path = Path(path)
    try:
        return flax.serialization.from_bytes(template, path.read_bytes())
    except Exception as error:  # msgpack and flax raise several unrelated types
        raise RecordsError(f"{path} is damaged or truncated ({type(error).__name__}: "
                           f"{error}); {fix}") from None


def check_writable_dir(path: str | os.PathLike, *, what: str = "--workdir") -> Path:
    """Creates `path` if needed and checks that files can be created in it.

    Raises:
      RecordsError: an empty path, a path that is a file, or a directory that
        cannot be created or written (read-only file system, permissions).
    """
    if not str(path).strip():
        raise RecordsError(f"{what} is empty (an unset shell variable?); give the directory "
                           "for the run's records and checkpoints, e.g. runs/mine.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RecordsError(f"{what} {path} is a file, not a directory; choose another path.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise RecordsError(f"{what} {path} is not writable ({error.strerror}); choose a "
                           "writable directory.") from None
    return path


class WorkdirLock:
    """A non-blocking (or waiting), exclusive (or shared) lock on a workdir, held while
    a run writes to it.

    The lock is an ``flock`` on ``workdir/<name>`` (by default ``.npc_jax.lock``,
    the whole workdir): the kernel releases it when its process dies (a SIGKILL
    included), so a killed run never leaves a stale lock behind. Use as a
    context manager.

    Args:
      workdir: the directory holding the lock file.
      name: the lock file; other names lock one part of a workdir (a grid
        worker's records file, a seed's round-0 checkpoint).
      shared: many holders at once (the workers of one grid on its workdir),
        each excluding an exclusive holder.
      wait: block until the lock is free instead of failing at once.
      what: the thing in use, for the message (default: the workdir).
      fix: what to do instead, for the message.
      holder: who holds it, written into the lock file for the message of a
        process that finds it busy (default ``pid <this process>``).

    Raises (on entry):
      WorkdirBusy: another process holds the lock (not with ``wait``).
    """

    def __init__(self, workdir: str | os.PathLike, name: str = LOCK_FILE, *,
                 shared: bool = False, wait: bool = False, what: str | None = None,
                 fix: str = ("wait for it to finish, or use another --workdir (two processes "
                             "on one workdir would train twice and append duplicate records)"),
                 holder: str | None = None):
        self.path = Path(workdir) / name
        self.shared, self.wait, self.fix = shared, wait, fix
        self.what = what or str(Path(workdir))
        self.holder = holder
        self._handle = None

    def __enter__(self) -> "WorkdirLock":
        import fcntl  # POSIX only; imported here so the module imports everywhere

        handle = open(self.path, "a+")
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle, mode if self.wait else mode | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise WorkdirBusy(f"{self.what} is in use by {holder}; {self.fix}.") from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{self.holder or f'pid {os.getpid()}'}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
