"""Checkpoints of sharded runs: one file per rank and a manifest, loadable on any world size.

Layout of a checkpoint folder::

    folder/manifest.fastopt               the commit point: which save is current, its files'
                                          checksums and sizes, the world size that wrote it,
                                          where the optimizer shards are and their layouts
    folder/save-<id>/rank-00000-of-00003.fastopt    each rank's object (fastopt.save format)
    ...

A save writes every rank's file into a new ``save-<id>`` folder, then rank 0 replaces the
manifest atomically (write, fsync, rename) and only then removes older ``save-*`` folders: a
crash anywhere before the rename leaves the previous manifest and its files untouched.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from .. import checkpoint
from ._optimizer import _comm
from ._zero import Layout, _plain_state, check_manifest, full_layout, is_shard, reshard

MANIFEST = "manifest.fastopt"
FORMAT = "fastopt-sharded-checkpoint"
_DIGEST = 32  # the SHA-256 that ends every fastopt checkpoint file


def _trailer(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < _DIGEST:
            return b""
        f.seek(-_DIGEST, os.SEEK_END)
        return f.read(_DIGEST)


def _agree(comm: Any, error: str | None) -> None:
    """Raises the first rank's error on every rank, if any rank has one (a collective)."""
    errors = comm.allgather(error)
    for r, e in enumerate(errors):
        if e is not None:
            raise ValueError(e if r == comm.rank or error is None else f"rank {r}: {e}")


def save(obj: Any, path: str | os.PathLike, comm: Any) -> None:
    """Collective: every rank of ``comm`` writes its ``obj`` (its shard of the optimizer
    state, and anything else) into the checkpoint folder ``path``; rank 0 then commits the
    manifest. Returns on every rank once the checkpoint is complete; raises on every rank if
    any rank failed (the previous checkpoint stays current)."""
    comm = _comm(comm)
    folder = Path(path)
    name = None
    if comm.rank == 0:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            name = f"save-{uuid.uuid4().hex}"
            (folder / name).mkdir()
            error = None
        except OSError as e:
            error = f"cannot create the checkpoint folder {folder}: {e}"
    else:
        error = None
    name, first = comm.bcast((name, error), root=0)
    if first is not None:
        raise OSError(first)
    file = folder / name / f"rank-{comm.rank:05d}-of-{comm.size:05d}.fastopt"
    error = None
    try:
        checkpoint.save(obj, file)
        entry = {"name": file.name, "sha256": _trailer(file).hex(), "bytes": file.stat().st_size}
    except (OSError, TypeError, ValueError) as e:
        error, entry = f"{type(e).__name__}: {e}", None
    entries = comm.gather((entry, error), root=0)
    if comm.rank == 0:
        assert entries is not None
        errors = [(r, e) for r, (_, e) in enumerate(entries) if e is not None]
        if errors:
            shutil.rmtree(folder / name, ignore_errors=True)
            error = f"rank {errors[0][0]} could not write its file ({errors[0][1]}): the previous checkpoint is kept"
        else:
            try:
                checkpoint.save({"format": FORMAT, "version": 1, "world_size": comm.size, "folder": name,
                                 "files": [e for e, _ in entries], "shards": _layouts(obj)}, folder / MANIFEST)
                error = None
            except OSError as e:
                error = f"cannot write the manifest: {e}"
            if error is None:
                for old in folder.iterdir():
                    if old.name.startswith("save-") and old.name != name and old.is_dir():
                        shutil.rmtree(old, ignore_errors=True)
    error = comm.bcast(error, root=0)
    if error is not None:
        raise OSError(error)


def _layouts(obj: Any) -> list[dict[str, Any]]:
    """Where the optimizer shards are in ``obj`` and their layouts (what every rank's manifest
    has but its rank)."""
    return [{"at": list(at), "layout": {k: v for k, v in _get(obj, at)["zero"].items() if k != "rank"}}
            for at in _shards(obj)]


def _check_layouts(folder: Path, m: dict[str, Any], tree: Any, rank: int) -> None:
    for at in _shards(tree):
        check_manifest(_get(tree, at)["zero"], f"the shard at {list(at)} in rank {rank}'s file")
    if _layouts(tree) != m["shards"]:
        raise ValueError(f"rank {rank}'s file in {folder} holds other optimizer shards than the manifest lists")


def is_checkpoint(path: Any) -> bool:
    """Whether ``path`` is a folder written by :func:`save`."""
    try:
        return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))
    except TypeError:
        return False


def _manifest(folder: Path) -> dict[str, Any]:
    m = checkpoint.load(folder / MANIFEST)
    bad = checkpoint._corrupt(folder / MANIFEST, "not a sharded checkpoint's manifest")
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("version") != 1:
        raise bad
    n, files, sub = m.get("world_size"), m.get("files"), m.get("folder")
    if (not isinstance(n, int) or isinstance(n, bool) or n < 1 or not isinstance(files, list) or len(files) != n
            or not isinstance(sub, str) or "/" in sub or not sub.startswith("save-")
            or not isinstance(m.get("shards"), list)):
        raise bad
    for i, f in enumerate(files):
        if (not isinstance(f, dict) or f.get("name") != f"rank-{i:05d}-of-{n:05d}.fastopt"
                or not isinstance(f.get("sha256"), str) or not isinstance(f.get("bytes"), int)):
            raise bad
    return m


def _read(folder: Path, m: dict[str, Any], rank: int) -> Any:
    """Rank ``rank``'s file, checked against the manifest (size, then checksum) first."""
    entry = m["files"][rank]
    path = folder / m["folder"] / entry["name"]
    if not path.is_file():
        raise ValueError(f"{path} is missing (the checkpoint's manifest lists it)")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ValueError(f"{path} has {size} bytes but the manifest says {entry['bytes']}: truncated or replaced")
    if _trailer(path).hex() != entry["sha256"]:
        raise ValueError(f"{path} is not the file this checkpoint wrote (its checksum differs from the manifest's): "
                         "a shard of another save or run")
    return checkpoint.load(path)


def _shards(tree: Any, at: tuple = ()) -> list[tuple]:
    """The paths (key sequences) of the optimizer shards in ``tree``."""
    if is_shard(tree):
        return [at]
    if isinstance(tree, dict):
        return [p for k, v in tree.items() for p in _shards(v, at + (k,))]
    if isinstance(tree, (list, tuple)):
        return [p for i, v in enumerate(tree) for p in _shards(v, at + (i,))]
    return []


def _get(tree: Any, at: tuple) -> Any:
    for k in at:
        tree = tree[k]
    return tree


def _set(tree: Any, at: tuple, value: Any) -> Any:
    """``tree`` with the value at ``at`` replaced (tuples rebuilt, dicts and lists in place)."""
    if not at:
        return value
    head, rest = at[0], at[1:]
    if isinstance(tree, tuple):
        items = list(tree)
        items[head] = _set(items[head], rest, value)
        return tuple(items)
    tree[head] = _set(tree[head], rest, value)
    return tree


def load(path: str | os.PathLike, comm: Any = None) -> Any:
    """Reads a checkpoint folder written by :func:`save` on N ranks.

    On the same N ranks (``comm``), each rank gets its own object back. On M != N ranks, each
    gets rank 0's object with every optimizer shard in it re-sharded for its place among the
    M (reading only the files that hold its elements). Without ``comm`` (one process), every
    shard becomes the full state in the unsharded optimizer's (torch's) layout. A file that
    is missing, truncated, corrupted or from another save raises ValueError on every rank,
    before anything is returned."""
    folder = Path(path)
    if comm is not None:
        comm = _comm(comm)
    world, rank = (comm.size, comm.rank) if comm is not None else (1, 0)
    error, out = None, None
    try:
        m = _manifest(folder)
        if comm is not None and world == m["world_size"]:
            out = _read(folder, m, rank)
            _check_layouts(folder, m, out, rank)
        else:
            out = _reshard(folder, m, world, rank, full=comm is None)
    except (OSError, ValueError, KeyError, TypeError) as e:
        error = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
        if isinstance(e, (KeyError, TypeError)):
            error = f"{folder} holds an optimizer shard that cannot be re-sharded ({error})"
    if comm is not None:
        _agree(comm, error)
    elif error is not None:
        raise ValueError(error)
    return out


def _reshard(folder: Path, m: dict[str, Any], world: int, rank: int, full: bool) -> Any:
    trees = {0: _read(folder, m, 0)}
    out = trees[0]
    _check_layouts(folder, m, out, 0)
    for at in _shards(out):
        shard = _get(out, at)
        mf = shard["zero"]
        old = Layout.of(mf)
        if old.world != m["world_size"]:
            raise ValueError(f"the shard at {list(at)} says it was written on {old.world} ranks, the manifest on "
                             f"{m['world_size']}")
        new = full_layout(old.shapes, old.dtypes, old.groups) if full else Layout.of(mf, world=world)
        me = 0 if full else rank
        # The old ranks holding elements (or per-tensor values) of this rank's new pieces.
        wanted = {k: (lo, hi) for k, lo, hi in new.pieces[me]}

        def overlaps(k: int, lo: int, hi: int) -> bool:  # (an empty piece holds per-tensor values)
            if k not in wanted:
                return False
            a, b = wanted[k]
            return lo == hi or a == b or (lo < b and a < hi)

        needed = sorted({r for r in range(old.world) for k, lo, hi in old.pieces[r] if overlaps(k, lo, hi)})
        common = {k: v for k, v in mf.items() if k != "rank"}
        sources = []
        for r in needed:
            if r not in trees:
                trees[r] = _read(folder, m, r)
            theirs = _get(trees[r], at)
            if (not is_shard(theirs) or theirs["zero"].get("rank") != r
                    or {k: v for k, v in theirs["zero"].items() if k != "rank"} != common):
                raise ValueError(f"rank {r}'s file holds another shard at {list(at)} than rank 0's (another run's?)")
            sources.append((old, r, _plain_state(theirs["state"], f"rank {r}'s shard")))
        state = reshard(sources, new, me, tuple(mf.get("counters", ("step",))))
        result: dict[str, Any] = {"state": state, "param_groups": shard["param_groups"]}
        if not full:
            result["zero"] = dict(mf, world_size=world, rank=rank)
        out = _set(out, at, result)
    return out
