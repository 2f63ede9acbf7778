"""Removable hook handles (torch.utils.hooks.RemovableHandle's contract)."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import Any, Callable

_ids = itertools.count()


class RemovableHandle:
    """Returned by every ``register_*_hook``; ``remove()`` (or leaving a ``with`` block)
    unregisters the hook. Removing twice is harmless."""

    def __init__(self, hooks: OrderedDict) -> None:
        self.id = next(_ids)
        self._hooks = hooks

    def remove(self) -> None:
        self._hooks.pop(self.id, None)

    def __enter__(self) -> "RemovableHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def register(hooks: OrderedDict, hook: Callable, prepend: bool = False) -> RemovableHandle:
    if not callable(hook):
        raise TypeError(f"hook must be callable, got {type(hook).__name__}")
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle
