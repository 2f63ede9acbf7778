"""The change-tracking containers behind an optimizer's ``state`` and its groups' ``params``:
each counts its changes, so a step can reuse the state lists it gathered last time while
nothing changed (see ``Optimizer._buffers``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

class _ParamState(dict):
    """One parameter's state: a dict that tells its :class:`_State` when it changes, so the
    optimizer may reuse the lists of state buffers it gathered for the previous step. It holds
    the state's change counter (a one-element list), not the state itself: a reference back
    would make a cycle, and the optimizer's buffers would then wait for the cyclic garbage
    collector instead of being freed when the optimizer is dropped."""

    __slots__ = ("_counter",)

    def __init__(self, counter: list, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counter = counter

    def _changed(self) -> None:
        self._counter[0] += 1

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def popitem(self) -> Any:
        self._changed()
        return super().popitem()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        self._changed()
        return super().setdefault(key, default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def __ior__(self, other: Any) -> "_ParamState":  # type: ignore[misc]  # (dict.__ior__ is overloaded)
        self.update(other)
        return self

    def __reduce__(self) -> Any:
        # Copies (deepcopy, pickle) stay tracked, by the copy of the counter.
        return (_ParamState, (self._counter, dict(self)))


class _ParamList(list):
    """A param group's ``'params'``: a list that counts its in-place changes in ``_version``,
    so the optimizer knows when the buffer lists it gathered for it are stale."""

    __slots__ = ("_version",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._version = 0

    def __reduce__(self) -> Any:
        return (_ParamList, (list(self),))


def _counting(name: str) -> Callable:
    method = getattr(list, name)

    def changed(self: _ParamList, *args: Any, **kwargs: Any) -> Any:
        self._version += 1
        return method(self, *args, **kwargs)

    changed.__name__ = name
    return changed


for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse"):
    setattr(_ParamList, _name, _counting(_name))


class _State(MutableMapping):
    """Per-parameter state keyed by the parameter object itself (ndarrays are unhashable,
    so keys are compared by identity). Like torch's ``defaultdict(dict)``, reading a missing
    key creates an empty dict. Each parameter's dict counts its changes in ``_version`` (a dict
    assigned with ``state[p] = d`` is copied into such a dict)."""

    __slots__ = ("_items", "_counter")

    def __init__(self) -> None:
        self._items: dict[int, tuple[Any, _ParamState]] = {}
        self._counter = [0]

    @property
    def _version(self) -> int:
        return self._counter[0]

    def __getitem__(self, key: Any) -> dict:
        item = self._items.get(id(key))
        if item is None:
            item = self._items[id(key)] = (key, _ParamState(self._counter))
            self._counter[0] += 1
        return item[1]

    def get(self, key: Any, default: Any = None) -> Any:
        item = self._items.get(id(key))
        return default if item is None else item[1]

    def __setitem__(self, key: Any, value: dict) -> None:
        own = isinstance(value, _ParamState) and value._counter is self._counter
        self._items[id(key)] = (key, value if own else _ParamState(self._counter, value))  # type: ignore[assignment]
        self._counter[0] += 1

    def __delitem__(self, key: Any) -> None:
        del self._items[id(key)]
        self._counter[0] += 1

    def __contains__(self, key: object) -> bool:
        return id(key) in self._items

    def __iter__(self) -> Iterator[Any]:
        return (k for k, _ in list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"_State({len(self)} parameters)"

    def __reduce__(self) -> Any:
        # Keys are ids, which a copy (deepcopy, pickle) does not keep: rebuild from the pairs.
        return (_State._rebuild, ([(k, dict(d)) for k, d in self._items.values()],))

    @staticmethod
    def _rebuild(pairs: list) -> "_State":
        state = _State()
        for key, d in pairs:
            state[key] = d
        state._counter[0] = 0
        return state
