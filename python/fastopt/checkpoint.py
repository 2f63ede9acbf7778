"""Safe checkpoints: ``fastopt.save(obj, path)`` / ``fastopt.load(path)``.

What can be saved: nested dicts (keys: str, int, float, bool or None), lists, tuples,
strings, bools, ints, floats, None, numpy arrays of numeric or bool dtype (bfloat16 arrays of
``ml_dtypes`` too: loading them needs ml_dtypes imported), and numpy scalars:
everything an optimizer's, a scheduler's or a module's ``state_dict()`` holds (torch tensors
are stored as numpy arrays). Functions and arbitrary objects are refused with a TypeError that
names where they are.

Safety:

- No pickle anywhere: loading parses JSON and copies raw bytes into new arrays, so an
  untrusted file cannot run code. A pickle file is recognised and refused.
- Atomic replacement: the file is written to a temporary file in the same folder, flushed,
  fsynced and renamed over the target, so a crash mid-save leaves the old checkpoint intact.
- A SHA-256 checksum over the whole file: a truncated or corrupted file raises ValueError. The
  checksum has no key, so it detects accidents, not tampering: what keeps a crafted file
  harmless is that ``load`` validates the header against a strict schema before it allocates
  anything (integer shapes and offsets, array regions inside the file and not overlapping, a
  nesting limit), reads no more than the file's size, streams the checksum instead of holding
  a copy of the file, and raises ValueError for anything malformed.
- Saving keeps the mode of the file it replaces (a new file gets the umask's), writes through
  a symbolic link to its target, and removes temporary files that an interrupted save to the
  same path left behind (unchanged for a minute).

Format (version 1), all integers little-endian::

    magic      8 bytes   b"FASTOPT\\x01"
    hlen       8 bytes   length of the header
    header     hlen bytes UTF-8 JSON: {"format": "fastopt-checkpoint", "version": 1, "tree": NODE}
    padding    zero bytes up to a multiple of 64
    data       the arrays' bytes, each starting at a multiple of 64 (offsets relative to here)
    checksum   32 bytes  SHA-256 of everything before it

NODE is a JSON value: null, true/false, integers and strings stand for themselves; a list is a
list of NODEs; other values are one-key objects: ``{"f": "0x1.8p+1"}`` a float (``float.hex``,
bit-exact, also inf and nan), ``{"t": [NODE, ...]}`` a tuple, ``{"d": [[KEY, NODE], ...]}`` a
dict (KEY is a NODE), ``{"a": {"dtype": "<f4", "shape": [2, 3], "offset": 0}}`` an array and
``{"s": {"dtype": "<f4", "hex": "0000803f"}}`` a numpy scalar. A bfloat16 array's dtype is
``"bfloat16"`` (its 16-bit patterns, little-endian).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .parameter import as_numpy, bfloat16_dtype, is_bfloat16

__all__ = ["save", "load"]

MAGIC = b"FASTOPT\x01"
_ALIGN = 64
_DIGEST = 32
_MAX_DEPTH = 100  # containers inside containers, saving and loading
_MAX_NODES = 10_000_000  # values in one header
_CHUNK = 1 << 20  # bytes read at a time for the checksum
_STALE_S = 60.0  # a temporary file unchanged this long belongs to an interrupted save


def _pad(n: int) -> int:
    return -n % _ALIGN


class _Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.size = 0
        self.active: set[int] = set()  # the containers on the path being written

    def _enter(self, v: Any, where: str) -> None:
        if id(v) in self.active:
            raise TypeError(f"{where} contains itself: a checkpoint cannot hold a cycle")
        if len(self.active) >= _MAX_DEPTH:
            raise TypeError(f"{where}: nested more than {_MAX_DEPTH} levels deep")
        self.active.add(id(v))

    def array(self, a: np.ndarray, where: str) -> dict:
        if is_bfloat16(a.dtype):
            a = np.ascontiguousarray(a) if a.ndim else a.copy()
            entry = self.array(a.view(np.uint16), where)
            entry["a"]["dtype"] = _BF16
            return entry
        if a.dtype.kind not in "biufc" or a.dtype.hasobject:
            raise TypeError(f"{where}: arrays of dtype {a.dtype} cannot be saved (numeric and bool only)")
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            a = a.copy(order="C")
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = a.astype(dtype, copy=False)
        offset = self.size
        data = a.data.cast("B") if a.size else b""
        self.chunks.append(data)
        self.size += len(data)
        pad = _pad(self.size)
        if pad:
            self.chunks.append(b"\0" * pad)
            self.size += pad
        return {"a": {"dtype": dtype.str, "shape": list(a.shape), "offset": offset}}

    def node(self, v: Any, where: str) -> Any:
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return {"f": v.hex()}
        if isinstance(v, np.ndarray):
            return self.array(v, where)
        if isinstance(v, np.generic):
            if v.dtype.kind not in "biufc":
                raise TypeError(f"{where}: numpy scalars of dtype {v.dtype} cannot be saved")
            le = np.asarray(v).astype(v.dtype.newbyteorder("<"))
            return {"s": {"dtype": le.dtype.str, "hex": le.tobytes().hex()}}
        if isinstance(v, (list, tuple, dict)):
            self._enter(v, where)
            try:
                if isinstance(v, list):
                    return [self.node(x, f"{where}[{i}]") for i, x in enumerate(v)]
                if isinstance(v, tuple):
                    return {"t": [self.node(x, f"{where}[{i}]") for i, x in enumerate(v)]}
                items = []
                for k, x in v.items():
                    if not (k is None or isinstance(k, (str, int, float, bool))):
                        raise TypeError(f"{where}: dict keys must be str, int, float, bool or None, got {type(k).__name__}")
                    items.append([self.node(k, where), self.node(x, f"{where}[{k!r}]")])
                return {"d": items}
            finally:
                self.active.discard(id(v))
        if type(v).__module__.startswith("torch") and hasattr(v, "numpy"):
            return self.array(as_numpy(v), where)
        raise TypeError(
            f"{where} is a {type(v).__name__}: fastopt.save stores dicts, lists, tuples, strings, numbers, "
            "None and numpy arrays (no arbitrary objects, so that loading can never run code)"
        )


def save(obj: Any, path: str | os.PathLike, comm: Any = None) -> None:
    """Writes ``obj`` to ``path`` atomically (see the module docstring for what it may hold).

    The old file, if any, stays intact until the new one is complete on disk.

    With ``comm`` (an mpi4py communicator; a collective call), ``path`` is a folder: every
    rank writes its own ``obj`` there (typically its
    :class:`~fastopt.distributed.ZeroRedundancyOptimizer` shard and the model) and rank 0
    commits a manifest of the files' sizes and checksums; a crash mid-save leaves the previous
    checkpoint in the folder current. :func:`load` reads it back on any number of ranks.

    Example:

    >>> w = np.arange(3.0)
    >>> fo.save({'w': w, 'step': 7}, 'ckpt.fo')
    >>> fo.load('ckpt.fo')
    {'w': array([0., 1., 2.]), 'step': 7}
    """
    if comm is not None:
        from .distributed import _checkpoint

        return _checkpoint.save(obj, path, comm)
    writer = _Writer()
    tree = writer.node(obj, "obj")
    header = json.dumps({"format": "fastopt-checkpoint", "version": 1, "tree": tree}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<Q", len(header)) + header
    head += b"\0" * _pad(len(head))
    digest = hashlib.sha256(head)
    for chunk in writer.chunks:
        digest.update(chunk)
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)  # through a link
    folder = target.parent if str(target.parent) else Path(".")
    _remove_stale_temporaries(folder, target.name)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)  # the mode of the file being replaced
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for chunk in writer.chunks:
                f.write(chunk)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _umask() -> int:
    """The process's umask (read without changing it where Linux tells it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def _remove_stale_temporaries(folder: Path, name: str) -> None:
    """Removes ``.NAME.*.tmp`` files of interrupted saves to ``NAME`` (unchanged for
    ``_STALE_S`` seconds: a save in progress keeps writing to its own)."""
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if e.name.startswith(f".{name}.") and e.name.endswith(".tmp"):
            try:
                if e.is_file(follow_symlinks=False) and now - e.stat(follow_symlinks=False).st_mtime > _STALE_S:
                    os.unlink(e.path)
            except OSError:
                pass


def _corrupt(path: Any, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid fastopt checkpoint: {why}")


def load(path: str | os.PathLike, comm: Any = None) -> Any:
    """Reads what :func:`save` wrote. Arrays come back as new, writeable arrays.

    Raises ValueError for a file that is truncated, corrupted, crafted, a pickle, or not a
    fastopt checkpoint; never executes anything from the file, and never allocates more than
    the file's arrays need (see the module docstring).

    A folder written with ``save(..., comm=comm)`` on N ranks: with ``comm`` of N ranks each
    rank gets its own object back; of M ranks, rank 0's object with each optimizer shard
    re-sharded for the M ranks; without ``comm``, rank 0's object with each shard turned into
    the full state in the unsharded optimizer's (torch's) layout. Every file is checked against
    the manifest (size and checksum) before it is read; an error is raised on every rank."""
    from .distributed import _checkpoint

    if comm is not None or _checkpoint.is_checkpoint(path):
        return _checkpoint.load(path, comm)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise _corrupt(path, "it is a directory") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _corrupt(path, "not a regular file (a FIFO, device or socket is never read)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return _load(f, info.st_size, path)
    finally:
        os.close(fd)


def _load(f: Any, size: int, path: Any) -> Any:
    head = f.read(min(size, 16))
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise _corrupt(path, "it looks like a pickle (or a torch.save zip); fastopt.load never unpickles")
    if not head.startswith(MAGIC):
        raise _corrupt(path, "wrong magic bytes")
    if size < len(MAGIC) + 8 + _DIGEST:
        raise _corrupt(path, "truncated")
    body_size = size - _DIGEST
    # The checksum, streamed: no copy of the file is held.
    digest = hashlib.sha256()
    f.seek(0)
    left = body_size
    while left:
        chunk = f.read(min(_CHUNK, left))
        if not chunk:
            raise _corrupt(path, "truncated (the file shrank while it was read)")
        digest.update(chunk)
        left -= len(chunk)
    if f.read(_DIGEST) != digest.digest():
        raise _corrupt(path, "checksum mismatch (truncated or corrupted)")
    (hlen,) = struct.unpack_from("<Q", head, len(MAGIC))
    start = len(MAGIC) + 8
    if hlen > body_size - start:
        raise _corrupt(path, "header runs past the end")
    f.seek(start)
    raw = f.read(hlen)
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _corrupt(path, f"unreadable header ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != "fastopt-checkpoint" or header.get("version") != 1:
        raise _corrupt(path, "unknown format or version")
    base = start + hlen
    base += _pad(base)
    if base > body_size:
        raise _corrupt(path, "header runs past the end")
    plan = _Plan(path, body_size - base)
    tree = plan.node(header.get("tree"), 0)
    plan.check_regions()
    # Only now, with every shape, dtype and region valid, are the arrays allocated and read.
    for arr, offset, nbytes in plan.arrays:
        if nbytes:
            f.seek(base + offset)
            view = arr.reshape(-1).view(np.uint8).data
            if f.readinto(view) != nbytes:
                raise _corrupt(path, "truncated (the file shrank while it was read)")
        if arr.dtype.byteorder not in ("=", "|"):
            arr.byteswap(inplace=True)
    return plan.build(tree)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: The dtypes a checkpoint may hold (what ``save`` writes: little-endian numbers and bools).
_DTYPES = {
    np.dtype(t).newbyteorder("<").str: np.dtype(t)
    for t in ("b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16")
}


#: The name a checkpoint gives ml_dtypes' bfloat16.
_BF16 = "bfloat16"


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Plan:
    """The validated header: every node checked against the schema, every array's dtype,
    shape and region known, nothing read or allocated yet (arrays are allocated, empty, only
    after the whole header passed)."""

    def __init__(self, path: Any, data_size: int) -> None:
        self.path = path
        self.data_size = data_size
        self.nodes = 0
        self.regions: list[tuple[int, int]] = []
        self.arrays: list[tuple[np.ndarray, int, int]] = []
        self.pending: list[tuple[np.dtype, tuple, int, int]] = []

    def bad(self, why: str) -> ValueError:
        return _corrupt(self.path, why)

    def node(self, v: Any, depth: int) -> Any:
        """Checks ``v``; returns it in a form :meth:`build` turns into the value."""
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise self.bad(f"more than {_MAX_NODES} values")
        if depth > _MAX_DEPTH:
            raise self.bad(f"nested more than {_MAX_DEPTH} levels deep")
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, list):
            return [self.node(x, depth + 1) for x in v]
        if not isinstance(v, dict) or len(v) != 1:
            raise self.bad("malformed node")
        ((tag, x),) = v.items()
        if tag == "f":
            if not isinstance(x, str):
                raise self.bad("a float node must hold a string")
            try:
                return ("f", float.fromhex(x))
            except (ValueError, OverflowError):
                raise self.bad(f"float {x[:40]!r} is not a hexadecimal float") from None
        if tag == "t":
            if not isinstance(x, list):
                raise self.bad("a tuple node must hold a list")
            return ("t", [self.node(y, depth + 1) for y in x])
        if tag == "d":
            if not isinstance(x, list) or not all(isinstance(kv, list) and len(kv) == 2 for kv in x):
                raise self.bad("a dict node must hold a list of [key, value] pairs")
            pairs = []
            for k, y in x:
                key = self.node(k, depth + 1)
                if not (key is None or isinstance(key, (bool, int, str)) or (isinstance(key, tuple) and key[0] == "f")):
                    raise self.bad("a dict key must be None, a bool, an int, a float or a string")
                pairs.append((key, self.node(y, depth + 1)))
            return ("d", pairs)
        if tag == "a":
            return ("a", self.array(x))
        if tag == "s":
            if not isinstance(x, dict) or set(x) != {"dtype", "hex"} or not isinstance(x["hex"], str):
                raise self.bad("malformed scalar")
            dtype = self.dtype(x["dtype"])
            try:
                raw = bytes.fromhex(x["hex"])
            except ValueError:
                raise self.bad("a scalar's bytes are not hexadecimal") from None
            if len(raw) != dtype.itemsize:
                raise self.bad(f"a {dtype} scalar needs {dtype.itemsize} bytes, not {len(raw)}")
            return ("s", np.frombuffer(raw, dtype=dtype)[0].astype(dtype.newbyteorder("=")))
        raise self.bad(f"unknown node tag {str(tag)[:40]!r}")

    def dtype(self, name: Any) -> np.dtype:
        if name == _BF16:
            bf = bfloat16_dtype()
            if bf is None:
                raise TypeError(f"{self.path} holds bfloat16 arrays, which NumPy has through ml_dtypes: "
                                "pip install 'fastopt[bf16]' and import ml_dtypes before loading it")
            return bf
        if not isinstance(name, str) or name not in _DTYPES:
            raise self.bad(f"dtype {str(name)[:40]!r} is not one a checkpoint holds")
        return np.dtype(name)

    def array(self, x: Any) -> int:
        if not isinstance(x, dict) or set(x) != {"dtype", "shape", "offset"}:
            raise self.bad("an array node needs exactly dtype, shape and offset")
        dtype = self.dtype(x["dtype"])
        shape, offset = x["shape"], x["offset"]
        if not isinstance(shape, list) or len(shape) > 64 or not all(_int(d) and d >= 0 for d in shape):
            raise self.bad(f"shape {str(shape)[:60]} is not a list of at most 64 integers >= 0")
        if not _int(offset) or offset < 0 or offset % _ALIGN:
            raise self.bad(f"offset {str(offset)[:40]} is not an integer >= 0 aligned to {_ALIGN}")
        count = 1
        for d in shape:
            count *= d  # Python ints: no wrap-around
        nbytes = count * dtype.itemsize
        if offset + nbytes > self.data_size:
            raise self.bad("array data runs past the end")
        if nbytes:
            self.regions.append((offset, offset + nbytes))
        self.pending.append((dtype, tuple(shape), offset, nbytes))
        return len(self.pending) - 1

    def check_regions(self) -> None:
        """No two arrays may share bytes: otherwise a small file could stand for huge data."""
        self.regions.sort()
        for (_, end), (start, _) in zip(self.regions, self.regions[1:]):
            if start < end:
                raise self.bad("two arrays' data overlap")
        for dtype, shape, offset, nbytes in self.pending:
            self.arrays.append((np.empty(shape, dtype), offset, nbytes))

    def build(self, v: Any) -> Any:
        if isinstance(v, list):
            return [self.build(x) for x in v]
        if not isinstance(v, tuple):
            return v
        tag, x = v
        if tag == "f":
            return x
        if tag == "t":
            return tuple(self.build(y) for y in x)
        if tag == "d":
            return {self.build(k): self.build(y) for k, y in x}
        if tag == "a":
            arr = self.arrays[x][0]
            return arr if arr.dtype.byteorder in ("=", "|") else arr.view(arr.dtype.newbyteorder("="))
        return x  # "s": the scalar itself
