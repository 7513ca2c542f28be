"""The LMDB store: the value codec, the single batched writer and the lazy per-process reader.

A value is a record of named arrays: a 12-byte prefix (magic, crc32 of everything after the first 8 bytes,
field count, header length), a header (per field: name, dtype code, shape), then each field's raw bytes at
an 8-byte aligned offset. No pickle: only dtype codes, shapes and bytes are ever read back.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch

from detach_framework.atomic import atomic_write_json
from detach_framework.errors import UserError

MAGIC = b"DTC1"
_PREFIX = struct.Struct("<4sIHH")  # magic, crc32 of value[8:], field count, header length
_CODES: dict[int, tuple[np.dtype, torch.dtype]] = {
    1: (np.dtype(np.uint8), torch.uint8),
    2: (np.dtype(np.int8), torch.int8),
    3: (np.dtype(np.int16), torch.int16),
    4: (np.dtype(np.int32), torch.int32),
    5: (np.dtype(np.int64), torch.int64),
    6: (np.dtype(np.float16), torch.float16),
    7: (np.dtype(np.float32), torch.float32),
    8: (np.dtype(np.float64), torch.float64),
    9: (np.dtype(np.bool_), torch.bool),
}
_CODE_OF = {np_dtype: code for code, (np_dtype, _) in _CODES.items()}

COMPLETE = "complete.json"  # the completion marker, written before the store is renamed into place
BUILDING = "building.json"  # written when a build starts: names the uid a partial store belongs to
LAST_RUN = "last_run.json"  # read statistics of the last process that read the store
STORE_FILES = frozenset({"data.mdb", "lock.mdb", COMPLETE, BUILDING, LAST_RUN})
DEFAULT_MAP_SIZE = 256 << 20  # grown by doubling whenever a batch does not fit


class CorruptEntryError(UserError):
    """A stored value fails its checksum or does not parse."""


class DamagedStoreError(UserError):
    """A store's LMDB file is cut short or its pages do not parse: only removing and rebuilding it helps."""

    def __init__(self, message: str, path: Path | None = None, reason: str = "") -> None:
        super().__init__(message)  # (one positional argument: DataLoader workers re-raise it from the message)
        self.path, self.reason = path, reason


def damaged_store(path: Path, reason: str) -> DamagedStoreError:
    """The one-line error for a damaged store: which one, why, and what fixes it."""
    return DamagedStoreError(
        f"cache {path} is damaged ({reason}); `detach cache clear SPEC` removes it (the next build or training "
        "writes it again)",
        path,
        reason,
    )


# A writer's environment failing to open with these is damaged.
_DAMAGE_ON_OPEN = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.VersionMismatchError)


def _align(offset: int) -> int:
    return (offset + 7) & ~7


def encode_record(arrays: Mapping[str, np.ndarray | torch.Tensor]) -> bytes:
    """Named arrays -> one value (header + raw bytes + crc32)."""
    header = bytearray()
    blobs: list[bytes] = []
    for name, array in arrays.items():
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array into 1-d)
            array = array.copy(order="C")
        code = _CODE_OF.get(array.dtype)
        if code is None:
            raise ValueError(f"cache field '{name}': dtype {array.dtype} cannot be stored")
        label = name.encode()
        header += struct.pack("<BBB", len(label), code, array.ndim) + label
        header += struct.pack(f"<{array.ndim}Q", *array.shape)
        blobs.append(array.tobytes())
    body = bytearray(struct.pack("<HH", len(blobs), len(header)) + header)
    for blob in blobs:
        body += bytes(_align(8 + len(body)) - 8 - len(body))
        body += blob
    return struct.pack("<4sI", MAGIC, zlib.crc32(body)) + bytes(body)


# Parsed headers by their bytes: every entry of a store shares one header, so it is parsed once per process.
_LAYOUTS: dict[bytes, tuple[list[tuple[str, np.dtype, tuple[int, ...], int, int]], int]] = {}


def _layout(head: bytes) -> tuple[list[tuple[str, np.dtype, tuple[int, ...], int, int]], int]:
    cached = _LAYOUTS.get(head)
    if cached is not None:
        return cached
    count, _ = struct.unpack_from("<HH", head)
    fields: list[tuple[str, np.dtype, tuple[int, ...], int, int]] = []
    pos, offset = 4, len(head) + 8
    for _ in range(count):
        size, code, ndim = struct.unpack_from("<BBB", head, pos)
        name = head[pos + 3 : pos + 3 + size].decode()
        pos += 3 + size
        shape = struct.unpack_from(f"<{ndim}Q", head, pos)
        pos += 8 * ndim
        np_dtype = _CODES[code][0]
        offset = _align(offset)
        count_items = int(np.prod(shape, dtype=np.int64))
        fields.append((name, np_dtype, tuple(shape), offset, count_items))
        offset += count_items * np_dtype.itemsize
    if pos != len(head):
        raise ValueError("header length mismatch")
    if len(_LAYOUTS) > 256:  # stores with varying shapes: keep the memo bounded
        _LAYOUTS.clear()
    _LAYOUTS[head] = (fields, offset)
    return fields, offset


def decode_record(value: bytes | memoryview, key: str | bytes, *, check: bool = True) -> dict[str, torch.Tensor]:
    """One value -> named tensors sharing one writable copy of its bytes; errors name the key."""
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    view = memoryview(value)
    if len(view) < _PREFIX.size or bytes(view[:4]) != MAGIC:
        raise CorruptEntryError(f"cache entry '{key}' is not a detach cache value (bad magic)")
    _, crc, _, head_size = _PREFIX.unpack_from(view)
    if check and zlib.crc32(view[8:]) != crc:
        raise CorruptEntryError(f"cache entry '{key}': checksum mismatch (the stored bytes were altered)")
    try:
        fields, total = _layout(bytes(view[8 : _PREFIX.size + head_size]))
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntryError(f"cache entry '{key}': unreadable header ({exc})") from None
    if total != len(view):
        raise CorruptEntryError(f"cache entry '{key}': {len(view)} bytes where the header describes {total}")
    data = bytearray(view)  # the only copy: writable, so tensors need no further one
    # numpy views then from_numpy: cheaper per field than torch.frombuffer(...).view(...).
    return {
        name: torch.from_numpy(np.frombuffer(data, dtype, count, offset).reshape(shape))
        for name, dtype, shape, offset, count in fields
    }


# ----------------------------------------------------------------------------------------------
# Opening, writing, reading


def open_env(path: Path, *, readonly: bool, map_size: int = DEFAULT_MAP_SIZE) -> lmdb.Environment:
    """Open an LMDB store whose data file holds every page it committed; anything else is a one-line UserError
    (DamagedStoreError for a damaged store)."""
    try:
        if readonly:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=True)
        else:
            path.mkdir(parents=True, exist_ok=True)
            env = lmdb.open(str(path), map_size=map_size, subdir=True, readahead=False, max_dbs=0)
    except (lmdb.Error, OSError) as exc:
        # Read-only opens are of stores this framework wrote: what stops one is damage (a flipped version or map
        # size, a lost file). A writer's open can also fail for want of permissions or memory.
        if (readonly and isinstance(exc, lmdb.Error)) or isinstance(exc, _DAMAGE_ON_OPEN):
            if not _holds_data(path):  # (LMDB's error says EBADF or ENOENT)
                raise damaged_store(path, "data.mdb is missing or empty") from None
            raise damaged_store(path, f"it cannot be opened as an LMDB store: {exc}") from None
        raise UserError(
            f"cache {path} cannot be opened as an LMDB store ({exc}); "
            "remove it (detach cache clear SPEC) or set cache.dir"
        ) from None
    try:
        check_file_size(path, committed_size(env))
    except DamagedStoreError:
        env.close()
        raise
    return env


def _holds_data(path: Path) -> bool:
    try:
        return (path / "data.mdb").stat().st_size > 0
    except OSError:
        return False


def committed_size(env: lmdb.Environment) -> int:
    """Bytes the data file must hold: every page up to the last one committed. Only the meta pages are read
    (lmdb.open checked that both are in the file), never a page the size has not been checked for."""
    return (env.info()["last_pgno"] + 1) * env.stat()["psize"]


def check_file_size(path: Path, required: int) -> None:
    """LMDB maps the data file and trusts its meta page: a page past the end of a truncated file is a SIGBUS,
    so the size is compared before any other page is touched."""
    try:
        size = (path / "data.mdb").stat().st_size
    except OSError as exc:
        raise damaged_store(path, f"data.mdb: {exc.strerror or exc}") from None
    if size < required:
        raise damaged_store(path, f"data.mdb holds {size} bytes, its own metadata expects at least {required}")


class StoreWriter:
    """The one writer of a store: batched commits; a batch that overflows the map grows it and is retried."""

    def __init__(self, path: Path, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = path
        self.env = open_env(path, readonly=False, map_size=map_size)
        self.grown = 0

    def keys(self) -> set[bytes]:
        try:
            with self.env.begin() as txn:
                return set(txn.cursor().iternext(keys=True, values=False))
        except lmdb.Error as exc:
            raise damaged_store(self.path, f"{type(exc).__name__}: {exc}") from None

    def put_batch(self, items: list[tuple[bytes, bytes]]) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                return
            except lmdb.MapFullError:  # the transaction was aborted: grow and write the whole batch again
                try:
                    self.env.set_mapsize(self.env.info()["map_size"] * 2)
                except lmdb.Error as exc:  # the map cannot grow (address space, file size limit)
                    raise self._failed(exc) from None
                self.grown += 1
            except (lmdb.Error, OSError) as exc:  # a full disk or quota: earlier commits stay, the batch is lost
                raise self._failed(exc) from None

    def _failed(self, exc: Exception) -> UserError:
        return UserError(
            f"cache {self.path}: writing stopped ({type(exc).__name__}: {exc}); the entries committed so far are "
            "kept: free disk space and rerun (the build resumes), or set cache.mode: off"
        )

    def close(self) -> None:
        try:
            self.env.sync(True)
        except lmdb.Error as exc:
            raise self._failed(exc) from None
        finally:
            self.env.close()


class StoreReader:
    """Read side of a complete store, opened lazily in each process (DataLoader workers included) with
    readonly, lock=False, readahead=False. LMDB allows one environment per file and process, so every reader
    of a path in a process shares one environment and one long-lived read transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        self._key = str(self.path)  # one entry per file, however the path was spelled

    def get(self, key: bytes) -> memoryview | None:
        txn = _shared_reader(self._key).txn
        try:
            return txn.get(key)
        except lmdb.Error as exc:  # a page that does not parse (MDB_CORRUPTED, MDB_PAGE_NOTFOUND, ...)
            release_readers(self.path)
            raise damaged_store(self.path, f"reading '{key.decode(errors='replace')}': {exc}") from None


@dataclass
class _Reader:
    pid: int
    env: lmdb.Environment
    txn: lmdb.Transaction
    required: int  # the data file's size its meta page demanded when opened


_READERS: dict[str, _Reader] = {}  # by absolute path
_PID = [os.getpid()]  # refreshed after fork: no getpid() call per read
if hasattr(os, "register_at_fork"):  # (without fork, e.g. Windows, workers are spawned: nothing inherited)
    os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


def _shared_reader(absolute: str) -> _Reader:
    opened = _READERS.get(absolute)
    if opened is None or opened.pid != _PID[0]:  # first use here, or a forked worker: never share an env
        release_readers(Path(absolute))  # an inherited copy blocks reopening the same files (py-lmdb's guard)
        env = open_env(Path(absolute), readonly=True)
        opened = _Reader(_PID[0], env, env.begin(buffers=True), committed_size(env))
        _READERS[absolute] = opened
    return opened


def check_store(path: Path) -> None:
    """Raise DamagedStoreError unless the complete store at `path` opens and its data file is whole. Opens
    this process's shared reader (and keeps it): LMDB would refuse a second environment of the same file."""
    reader = _shared_reader(os.path.abspath(path))
    try:
        check_file_size(path, reader.required)  # again: the file may have been cut short since it was opened
    except DamagedStoreError:
        release_readers(path)
        raise


def release_readers(path: Path) -> None:
    """Close this process's reader of `path`, or the copy a forked worker inherited (never used there)."""
    opened = _READERS.pop(os.path.abspath(path), None)
    if opened is not None:
        opened.txn.abort()
        opened.env.close()


def iterate_entries(path: Path) -> Iterator[tuple[bytes, bytes]]:
    release_readers(path)  # one environment per file and process
    env = open_env(path, readonly=True)
    try:
        with env.begin() as txn:
            yield from txn.cursor()
    except lmdb.Error as exc:
        raise damaged_store(path, f"{type(exc).__name__}: {exc}") from None
    finally:
        env.close()


# ----------------------------------------------------------------------------------------------
# Store directories and their state


@dataclass
class StoreState:
    """What is on disk for one cache uid: complete, damaged, partial, missing, stale or foreign, and why."""

    state: str
    path: Path
    message: str
    marker: dict[str, Any] | None = None
    damage: DamagedStoreError | None = None  # what made the state "damaged"


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def write_marker(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload)


def inspect_store(uid: str, path: Path, partial: Path) -> StoreState:
    root = path.parent
    if root.exists() and not root.is_dir():
        return StoreState("foreign", root, f"cache.dir {root} is not a directory")
    if path.exists():
        marker = read_marker(path / COMPLETE)
        if not path.is_dir() or marker is None:
            return StoreState(
                "foreign", path, f"{path} exists but is not a detach cache (no {COMPLETE}); move it or set cache.dir"
            )
        if marker.get("uid") != uid:
            return StoreState(
                "stale",
                path,
                f"{path} holds cache uid {marker.get('uid')}, not {uid}: never read as this one; "
                "run `detach cache clear SPEC` to rebuild it",
                marker,
            )
        try:
            check_store(path)
        except DamagedStoreError as exc:
            return StoreState("damaged", path, str(exc), marker, exc)
        return StoreState("complete", path, f"complete: {marker.get('entries')} entries", marker)
    if partial.exists():
        marker = read_marker(partial / BUILDING)
        if marker is not None and marker.get("uid") != uid:
            return StoreState("stale", partial, f"{partial} is a partial build of uid {marker.get('uid')}", marker)
        message = "partial: a build was interrupted; `detach cache build` resumes it"
        return StoreState("partial", partial, message, marker)
    return StoreState("missing", path, "not built yet")


def remove_store(path: Path) -> bool:
    """Delete a store directory, refusing anything holding files a store never has."""
    if not path.exists():
        return False
    if not path.is_dir():
        raise UserError(f"{path} is not a cache directory; not removing it")
    strangers = sorted(p.name for p in path.iterdir() if p.name not in STORE_FILES and not p.name.startswith("."))
    if strangers:
        raise UserError(f"{path} holds files a cache never has ({', '.join(strangers[:3])}); not removing it")
    release_readers(path)
    shutil.rmtree(path)
    return True


def directory_size(path: Path) -> int:
    """Bytes actually allocated (LMDB files are sparse up to the map size)."""
    total = 0
    for item in path.rglob("*") if path.is_dir() else []:
        if item.is_file():
            total += item.stat().st_blocks * 512
    return total
