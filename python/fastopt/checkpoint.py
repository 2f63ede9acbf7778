"""Safe checkpoints: ``fastopt.save(obj, path)`` / ``fastopt.load(path)``.

What can be saved: nested dicts (keys: str, int, float, bool or None), lists, tuples,
strings, bools, ints, floats, None, numpy arrays of numeric or bool dtype, and numpy scalars:
everything an optimizer's, a scheduler's or a module's ``state_dict()`` holds (torch tensors
are stored as numpy arrays). Functions and arbitrary objects are refused with a TypeError that
names where they are.

Safety:

- No pickle anywhere: loading parses JSON and copies raw bytes into new arrays, so an
  untrusted file cannot run code. A pickle file is recognised and refused.
- Atomic replacement: the file is written to a temporary file in the same folder, flushed,
  fsynced and renamed over the target, so a crash mid-save leaves the old checkpoint intact.
- A SHA-256 checksum over the whole file: a truncated or corrupted file raises ValueError.

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
``{"s": {"dtype": "<f4", "hex": "0000803f"}}`` a numpy scalar.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save", "load"]

MAGIC = b"FASTOPT\x01"
_ALIGN = 64
_DIGEST = 32


def _pad(n: int) -> int:
    return -n % _ALIGN


class _Writer:
    def __init__(self) -> None:
        self.chunks: list[bytes | memoryview] = []
        self.size = 0

    def array(self, a: np.ndarray, where: str) -> dict:
        if a.dtype.kind not in "biufc" or a.dtype.hasobject:
            raise TypeError(f"{where}: arrays of dtype {a.dtype} cannot be saved (numeric and bool only)")
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            a = a.copy(order="C")
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        a = a.astype(dtype, copy=False)
        offset = self.size
        data = memoryview(a).cast("B") if a.size else b""
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
        if isinstance(v, list):
            return [self.node(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, tuple):
            return {"t": [self.node(x, f"{where}[{i}]") for i, x in enumerate(v)]}
        if isinstance(v, dict):
            items = []
            for k, x in v.items():
                if not (k is None or isinstance(k, (str, int, float, bool))):
                    raise TypeError(f"{where}: dict keys must be str, int, float, bool or None, got {type(k).__name__}")
                items.append([self.node(k, where), self.node(x, f"{where}[{k!r}]")])
            return {"d": items}
        if type(v).__module__.startswith("torch") and hasattr(v, "numpy"):
            return self.array(np.asarray(v.detach().cpu().numpy()), where)
        raise TypeError(
            f"{where} is a {type(v).__name__}: fastopt.save stores dicts, lists, tuples, strings, numbers, "
            "None and numpy arrays (no arbitrary objects, so that loading can never run code)"
        )


def save(obj: Any, path: str | os.PathLike) -> None:
    """Writes ``obj`` to ``path`` atomically (see the module docstring for what it may hold).

    The old file, if any, stays intact until the new one is complete on disk.

    Example:

    >>> w = np.arange(3.0)
    >>> fo.save({'w': w, 'step': 7}, 'ckpt.fo')
    >>> fo.load('ckpt.fo')
    {'w': array([0., 1., 2.]), 'step': 7}
    """
    writer = _Writer()
    tree = writer.node(obj, "obj")
    header = json.dumps({"format": "fastopt-checkpoint", "version": 1, "tree": tree}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<Q", len(header)) + header
    head += b"\0" * _pad(len(head))
    digest = hashlib.sha256(head)
    for chunk in writer.chunks:
        digest.update(chunk)
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
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


def _corrupt(path: Any, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid fastopt checkpoint: {why}")


def load(path: str | os.PathLike) -> Any:
    """Reads what :func:`save` wrote. Arrays come back as new, writeable arrays.

    Raises ValueError for a file that is truncated, corrupted, a pickle, or not a fastopt
    checkpoint; never executes anything from the file."""
    data = Path(path).read_bytes()
    if data[:1] == b"\x80" or data[:2] in (b"PK",):
        raise _corrupt(path, "it looks like a pickle (or a torch.save zip); fastopt.load never unpickles")
    if not data.startswith(MAGIC):
        raise _corrupt(path, "wrong magic bytes")
    if len(data) < len(MAGIC) + 8 + _DIGEST:
        raise _corrupt(path, "truncated")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise _corrupt(path, "checksum mismatch (truncated or corrupted)")
    (hlen,) = struct.unpack_from("<Q", body, len(MAGIC))
    start = len(MAGIC) + 8
    if start + hlen > len(body):
        raise _corrupt(path, "header runs past the end")
    try:
        header = json.loads(body[start : start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _corrupt(path, f"unreadable header ({e})") from None
    if not isinstance(header, dict) or header.get("format") != "fastopt-checkpoint" or header.get("version") != 1:
        raise _corrupt(path, "unknown format or version")
    base = start + hlen
    base += _pad(base)
    blob = memoryview(body)[base:]

    def node(v: Any) -> Any:
        if v is None or isinstance(v, (bool, int, str)):
            return v
        if isinstance(v, list):
            return [node(x) for x in v]
        if not isinstance(v, dict) or len(v) != 1:
            raise _corrupt(path, "malformed node")
        (tag, x), = v.items()
        if tag == "f":
            return float.fromhex(x)
        if tag == "t":
            return tuple(node(y) for y in x)
        if tag == "d":
            return {node(k): node(y) for k, y in x}
        if tag == "a":
            dtype = np.dtype(x["dtype"])
            if dtype.kind not in "biufc":
                raise _corrupt(path, f"array dtype {dtype}")
            shape = tuple(int(d) for d in x["shape"])
            count = int(np.prod(shape, dtype=np.int64))
            offset = int(x["offset"])
            end = offset + count * dtype.itemsize
            if offset < 0 or end > len(blob):
                raise _corrupt(path, "array data runs past the end")
            arr = np.frombuffer(blob[offset:end], dtype=dtype, count=count).reshape(shape)
            return arr.astype(dtype.newbyteorder("="), copy=True)
        if tag == "s":
            dtype = np.dtype(x["dtype"])
            if dtype.kind not in "biufc":
                raise _corrupt(path, f"scalar dtype {dtype}")
            return np.frombuffer(bytes.fromhex(x["hex"]), dtype=dtype)[0].astype(dtype.newbyteorder("="))
        raise _corrupt(path, f"unknown node tag {tag!r}")

    return node(header.get("tree"))
