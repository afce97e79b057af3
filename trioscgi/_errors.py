"""The errors that cross layers: a front-end gone, a write or read out of patience, a cut task.

A leaf (it imports nothing of trioscgi): the wires raise these, the ASGI layer and the app
hosts catch or raise them too, so they live below all of them (docs/architecture.md).
"""

from __future__ import annotations

__all__ = ["ClientDisconnected", "RequestCancelled", "Timeout", "WriteTimeout"]


class ClientDisconnected(OSError):
    """The front-end closed the connection (its client went away), or stopped reading.

    ASGI spec 2.4: ``send()`` after the connection is gone raises an
    ``OSError`` subclass.
    """


class WriteTimeout(ClientDisconnected):
    """The front-end read nothing of the response for write_timeout (metrics count it)."""


class Timeout(Exception):
    """A read did not complete within its patience."""


class RequestCancelled(OSError):
    """What ``send()`` raises in an asyncio task the server has cancelled.

    An ``OSError``, as ASGI 2.4 asks of a ``send()`` that can't reach the
    client any more: the task was cancelled (``graceful_timeout``, or the
    connection ended) and can't answer.
    """
