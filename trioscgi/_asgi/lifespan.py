"""The ASGI lifespan protocol: startup and shutdown under deadlines."""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._apps.apploop import other_framework_hint, other_framework_hint_in_text
from .._config import Config
from .._types import ASGIApp, Message

log = logging.getLogger("trioscgi")

_ASGI = {"version": "3.0", "spec_version": "2.0"}


def _hint(exc: BaseException) -> str:
    """``". <hint>"`` when ``exc`` says the app needs the other event loop, else ``""``."""
    hint = other_framework_hint(exc)
    return f". {hint}" if hint else ""


class LifespanFailure(Exception):
    """The application's lifespan startup failed or did not finish in time."""


class Lifespan:
    """Run the application's lifespan task beside the server.

    ``startup()`` and ``shutdown()`` each wait for the application's answer
    under their timeout. Under ``lifespan = "auto"``, an application that
    raises before answering the startup message has no lifespan support,
    and serving goes on without it (the ASGI spec's rule).
    """

    def __init__(self, app: ASGIApp, config: Config, state: dict[str, Any]) -> None:
        self._app = app
        self._mode = config.lifespan
        self._startup_timeout = config.startup_timeout
        self._shutdown_timeout = config.shutdown_timeout
        self._state = state
        self._startup_done = trio.Event()
        self._shutdown_asked = trio.Event()
        self._shutdown_done = trio.Event()
        self._failure: str | None = None
        self._supported = True
        self._asked_startup = False
        self._cancel_scope = trio.CancelScope()

    async def startup(self, nursery: trio.Nursery) -> None:
        """Start the lifespan task in ``nursery`` and wait for startup.

        Raises:
            LifespanFailure: the application reported ``lifespan.startup.failed``,
                raised under ``lifespan = "on"``, or did not answer within
                ``startup_timeout``.
        """
        if self._mode == "off":
            return
        nursery.start_soon(self._run)
        with trio.move_on_after(self._startup_timeout) as scope:
            await self._startup_done.wait()
        if scope.cancelled_caught:
            self._cancel_scope.cancel()
            raise LifespanFailure(
                f"lifespan startup did not complete within {self._startup_timeout:g} s"
                " (startup_timeout)"
            )
        if self._failure is not None:
            # No shutdown for a startup that never completed (the ASGI spec
            # sends none after startup.failed): shutdown() must not log this
            # failure a second time, as a shutdown one.
            self._supported = False
            self._cancel_scope.cancel()
            raise LifespanFailure(f"lifespan startup failed: {self._failure}")

    async def shutdown(self) -> None:
        """Ask the application to shut down; wait at most ``shutdown_timeout``.

        Nothing to do when startup failed or never completed.
        """
        if self._mode == "off" or not self._supported or not self._startup_done.is_set():
            self._cancel_scope.cancel()
            return
        self._shutdown_asked.set()
        with trio.move_on_after(self._shutdown_timeout) as scope:
            await self._shutdown_done.wait()
        if scope.cancelled_caught:
            log.warning(
                "lifespan shutdown did not complete within %g s (shutdown_timeout)",
                self._shutdown_timeout,
            )
        elif self._failure is not None:
            log.error("lifespan shutdown failed: %s", self._failure)
        self._cancel_scope.cancel()

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self._state}
        with self._cancel_scope:
            try:
                await self._app(scope, self._receive, self._send)
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if self._failure is not None:
                    # It reported startup.failed (or shutdown.failed) and then
                    # raised, as Starlette does: the failure is already logged
                    # with its message; the traceback adds nothing.
                    log.debug("lifespan task raised after reporting a failure", exc_info=exc)
                elif self._startup_done.is_set() and not self._shutdown_asked.is_set():
                    # Raising after a good startup and before shutdown: the
                    # app's lifespan task died; serving goes on.
                    log.error("lifespan task raised after startup%s", _hint(exc), exc_info=exc)
                elif (
                    self._mode == "auto"
                    and not self._startup_done.is_set()
                    and (hint := other_framework_hint(exc)) is not None
                ):
                    # Not "no lifespan support": the app's startup met the
                    # wrong event loop, and its requests will too.
                    log.warning(
                        "ASGI lifespan failed (%s: %s); going on without. %s",
                        type(exc).__name__,
                        exc,
                        hint,
                    )
                    self._supported = False
                elif self._mode == "auto" and not self._startup_done.is_set():
                    log.info(
                        "ASGI lifespan unsupported by the application (%s: %s); going on without",
                        type(exc).__name__,
                        exc,
                    )
                    self._supported = False
                elif not self._startup_done.is_set():
                    self._failure = f"{type(exc).__name__}: {exc}{_hint(exc)}"
                    log.error("lifespan startup raised%s", _hint(exc), exc_info=exc)
                else:
                    self._failure = f"{type(exc).__name__}: {exc}{_hint(exc)}"
            else:
                if not self._startup_done.is_set():
                    if self._mode == "on":
                        self._failure = "the application returned without answering startup"
                    else:
                        self._supported = False
            finally:
                self._startup_done.set()
                self._shutdown_done.set()

    async def _receive(self) -> Message:
        if not self._asked_startup:
            self._asked_startup = True
            await trio.lowlevel.checkpoint()
            return {"type": "lifespan.startup"}
        await self._shutdown_asked.wait()
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        await trio.lowlevel.checkpoint()
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self._startup_done.set()
        elif kind == "lifespan.startup.failed":
            text = str(message.get("message", "")).rstrip() or "(no message)"
            # Starlette (FastAPI) catches the error and sends its traceback:
            # the wrong-loop hint is then found in the text only.
            hint = other_framework_hint_in_text(text)
            if hint is not None:
                text += f"\n{hint}" if "\n" in text else f". {hint}"
            self._failure = text
            self._startup_done.set()
        elif kind == "lifespan.shutdown.complete":
            self._shutdown_done.set()
        elif kind == "lifespan.shutdown.failed":
            self._failure = str(message.get("message", "")) or "(no message)"
            self._shutdown_done.set()
        else:
            raise RuntimeError(f"unexpected message on the lifespan scope: {kind!r}")
