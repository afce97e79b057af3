"""Other ways of running an asyncio app in trioscgi, for bench/peers_apps.py.

trioscgi picks the host of an asyncio app's loop by the app
(trioscgi/_apploop.py: a thread of its own for Django, the loop driven from
the trio thread for the rest). These probes run the app named by
``$PROBE_APP`` with one host forced, or trio-asyncio instead; each is served as
a trio app (``--app-loop trio --lifespan on``) that opens its loop in the
lifespan startup:

- :func:`thread_app`: trioscgi's :class:`ThreadHost` (uvloop when installed,
  in a second thread, batched hand-offs) whatever the app;
- :func:`driven_app`: trioscgi's :class:`DrivenHost` (a ``SelectorEventLoop``
  run in passes by a trio task) whatever the app;
- :func:`trio_asyncio_app`: trio-asyncio's loop in the trio thread
  (``aio_as_trio`` / ``trio_as_aio``), with the shim asgiref needs: trio-asyncio
  refuses executors other than its own, and ``sync_to_async`` passes its own.

Probes, not products: no lifespan is forwarded to the app.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Any

import trio

from trioscgi._asynciohost import DrivenHost, ThreadHost, _Bridge, _Host


def _load() -> Any:
    module, _, attr = os.environ["PROBE_APP"].partition(":")
    obj: Any = importlib.import_module(module)
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


APP = _load()


async def _lifespan(receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "lifespan.startup.complete"})
    await receive()
    await send({"type": "lifespan.shutdown.complete"})


# --------------------------------------------------------------------------- trioscgi's hosts

_host: _Host | None = None


async def _hosted(kind: str, scope: Any, receive: Any, send: Any) -> None:
    global _host
    if scope["type"] == "lifespan":
        async with trio.open_nursery() as nursery:
            if kind == "thread":
                thread_host = ThreadHost()
                thread_host.start()
                _host = thread_host
            else:
                driven_host = DrivenHost()
                nursery.start_soon(driven_host.run)
                _host = driven_host
            await _lifespan(receive, send)
            await _host.drain()
            await _host.close()
        return
    assert _host is not None
    await _Bridge(_host, receive, send).call(APP, scope)


async def thread_app(scope: Any, receive: Any, send: Any) -> None:
    await _hosted("thread", scope, receive, send)


async def driven_app(scope: Any, receive: Any, send: Any) -> None:
    await _hosted("driven", scope, receive, send)


# --------------------------------------------------------------------------- trio-asyncio

_trio_asyncio_loop: Any = None


async def trio_asyncio_app(scope: Any, receive: Any, send: Any) -> None:
    import trio_asyncio

    global _trio_asyncio_loop
    if scope["type"] == "lifespan":
        async with trio_asyncio.open_loop() as loop:
            own = loop.run_in_executor

            def run_in_executor(executor: Any, func: Any, *args: Any) -> Any:
                # The shim: an executor of the app's own runs the call, the
                # result comes back through the loop's thread-safe path.
                if executor is None:
                    return own(None, func, *args)
                return asyncio.wrap_future(executor.submit(func, *args), loop=loop)

            loop.run_in_executor = run_in_executor
            _trio_asyncio_loop = loop
            await _lifespan(receive, send)
        return
    loop = _trio_asyncio_loop
    await trio_asyncio.aio_as_trio(APP, loop=loop)(
        scope,
        trio_asyncio.trio_as_aio(receive, loop=loop),
        trio_asyncio.trio_as_aio(send, loop=loop),
    )
