"""The base of the cores' enums: states and ``NEED_DATA``."""

from __future__ import annotations

import enum

__all__ = ["Named"]


class Named(enum.Enum):
    """An enum whose members show as their bare names and hash by identity."""

    def __repr__(self) -> str:
        return self.name

    # Members are singletons: hash them by identity, in C. (Enum's own
    # __hash__ is Python code, a call on every `state in KNOWN` and every
    # transition-table lookup.)
    __hash__ = object.__hash__
