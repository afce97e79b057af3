"""The scenarios of the conformance suite, each written once against a :class:`Driver`.

Each scenario sends one request (twice at once, or twice in a row, on the
multiplexed and keep-conn paths: the driver checks that both agree), then checks
what the client got and what the app received (``app.normalize``: the body as
one entry however the wire split it) against what the ASGI spec says
(asgiref ``specs/www.rst``). Every path is held to the same expected record,
so every path gives the app the same messages.

A scenario that a path can't express says so (``@needs``, with why); the tests
skip it there. Scenarios are plain async functions so that
bench/conformance_peers.py runs the same ones over HTTP against other servers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

from .app import (
    AFTER_PATIENCE,
    PATHSEND_BODY,
    READ_STARTED,
    STATE_TOKEN,
    echo_body,
    expected_stream,
)
from .drivers import Driver, Pause, Request, Shutdown, new_key

Scenario = Callable[[Driver], Awaitable[None]]


# What a scenario may need of a path, and why a path without it can't run it.
NEEDS = {
    "asgi": "WSGI has no receive() after the body, no disconnect, no lifespan, no pathsend",
    "streams_body": (
        "the front-end buffers the whole body before it connects (nginx scgi_pass): a "
        "client gone before the body's end never reaches the server"
    ),
    "in_process": "needs the server in this process (the app's clock, a shutdown on cue)",
    "pathsend": "the server does not offer http.response.pathsend (an optional extension)",
    "unknown_length": (
        "SCGI and uwsgi frame the body by CONTENT_LENGTH: front-ends buffer a chunked "
        "upload whole (nginx) or refuse it (Apache: 411) before passing it on"
    ),
}


def needs(*features: str) -> Callable[[Scenario], Scenario]:
    """Declare what the scenario needs of a path (keys of ``NEEDS``)."""
    assert all(f in NEEDS for f in features), features

    def mark(scenario: Scenario) -> Scenario:
        scenario.needs = features  # type: ignore[attr-defined]
        return scenario

    return mark


def missing(scenario: Scenario, features: frozenset[str]) -> str | None:
    """Why a path with ``features`` can't run ``scenario``, or None when it can."""
    for need in getattr(scenario, "needs", ()):
        if need not in features:
            return NEEDS[need]
    return None


def sha16(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def body_entry(data: bytes, ended: bool = True) -> list[Any]:
    return ["body", len(data), sha16(data), ended]


async def _echo(driver: Driver, request: Request, label: str) -> None:
    """Send ``request`` to /echo: the client gets the body's digest, the app the whole body."""
    key = new_key(label)
    answer = await driver.exchange(request, key)
    assert answer is not None
    body = request.body
    assert (answer.status, answer.body, answer.complete) == (200, echo_body(body), True), answer
    record = await driver.record(key)
    assert record["splits"] == "", record
    assert record["events"] == [body_entry(body)], record


def payload(n: int, seed: int = 0) -> bytes:
    period = bytes((i * 7 + seed) % 256 for i in range(256))
    return (period * (n // 256 + 1))[:n]


# --- the body, as the network delivers it ---------------------------------------------


async def body_in_one_piece(driver: Driver) -> None:
    await _echo(driver, Request(plan=[payload(1000)]), "one-piece")


async def body_in_many_pieces(driver: Driver) -> None:
    data = payload(2000)
    plan: list[Any] = []
    for i in range(0, len(data), 97):
        plan += [data[i : i + 97], Pause(0.001)]
    await _echo(driver, Request(plan=plan), "many-pieces")


async def body_byte_by_byte(driver: Driver) -> None:
    plan: list[Any] = []
    for b in payload(40):
        plan += [bytes([b]), Pause(0.001)]
    await _echo(driver, Request(plan=plan), "byte-by-byte")


async def body_after_pause(driver: Driver) -> None:
    # The head alone, then the body once the app waits in receive(): the app
    # must wait for it (the asyncio host gave http.disconnect here, issue 19).
    await _echo(driver, Request(plan=[b"", Pause(0.05), payload(3)]), "after-pause")


async def empty_body(driver: Driver) -> None:
    await _echo(driver, Request(method="POST", plan=[]), "empty-post")
    await _echo(driver, Request(method="GET", plan=[]), "empty-get")


@needs("unknown_length")
async def chunked_upload(driver: Driver) -> None:
    plan: list[Any] = [b"", Pause(0.02), payload(300), Pause(0.02), payload(500, 1), Pause(0.02)]
    plan.append(payload(7, 2))
    await _echo(driver, Request(plan=plan, length_known=False), "chunked")


# How much of a body the app has not asked for yet may be taken off the wire: the
# FastCGI connection's buffer (1 MiB), socket buffers (Unix: a few hundred KiB) and
# one read. A server that read on regardless would take the whole 12 MiB.
HELD_BACK_BOUND = 4 << 20


@needs("in_process")
async def large_body_held_back(driver: Driver) -> None:
    """Back-pressure: while the app leaves its body unread, the client can't send much of
    it; then the app gets every byte."""
    key = new_key("held-back")
    data = payload(12 << 20)
    plan: list[Any] = [data[i : i + (256 << 10)] for i in range(0, len(data), 256 << 10)]
    request = Request(path="/slow-read", plan=plan)
    answer = await driver.exchange(request, key)
    assert answer is not None
    assert (answer.status, answer.body, answer.complete) == (200, echo_body(data), True), answer
    started = min(t for k, t in READ_STARTED.items() if k.partition("#")[0] == key)
    sent = max((n for n, t in driver.progress if t <= started), default=0)
    assert sent <= HELD_BACK_BOUND, f"{sent} bytes taken before the app read any"
    record = await driver.record(key)
    assert record["events"] == [body_entry(data)], record


@needs("asgi")
async def receive_cancelled_at_call(driver: Driver) -> None:
    """A receive() cancelled before it could wait (Starlette's ``is_disconnected()``)
    returns nothing: what it would have returned comes from the next receive()."""
    data = payload(500)
    # The app peeks at 0, 30 and 60 ms: the first piece comes between the first two.
    plan: list[Any] = [b"", Pause(0.015), data[:200], Pause(0.06), data[200:]]
    await _echo(driver, Request(path="/peek", plan=plan), "peek")


async def large_body(driver: Driver) -> None:
    # Larger than every buffer on the way (socket buffers, FastCGI records of
    # 64 KiB, the server's reads): the app gets every byte in order.
    data = payload(3 << 20)
    plan: list[Any] = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    await _echo(driver, Request(plan=plan), "large")


# --- receive() after the body, and http.disconnect ---------------------------------------


@needs("asgi")
async def receive_after_body(driver: Driver) -> None:
    """ASGI: ``http.disconnect`` is "sent to the application if receive is called after
    a response has been sent or after the HTTP connection has been closed". A receive()
    pending while the response is half sent waits; it ends once the response is sent."""
    key = new_key("after")
    data = payload(100)
    answer = await driver.exchange(Request(path="/after", plan=[data]), key)
    assert answer is not None
    assert (answer.status, answer.body, answer.complete) == (
        200,
        b"first half, second half",
        True,
    ), answer
    events = (await driver.record(key))["events"]
    waiting = ["mark", f"receive() still waiting {AFTER_PATIENCE} s after the response"]
    assert waiting not in events, f"receive() never returned once the response was sent: {events}"
    # The disconnect may come just before or just after the app's mark that
    # its last send() returned; never before the response was sent.
    assert events[:2] == [body_entry(data), ["mark", "response half sent"]], events
    assert sorted(map(tuple, events[2:])) == [("http.disconnect",), ("mark", "response sent")], (
        events
    )


@needs("asgi")
async def no_disconnect_while_client_stays(driver: Driver) -> None:
    """After the body, with the client still there and no response sent, receive()
    waits: ``http.disconnect`` only once the response is sent or the client is gone."""
    key = new_key("linger")
    data = payload(100)
    answer = await driver.exchange(Request(path="/linger", plan=[data]), key)
    assert answer is not None
    assert (answer.status, answer.body, answer.complete) == (200, b"lingered", True), answer
    record = await driver.record(key)
    assert record["events"] == [body_entry(data), ["mark", "0.1 s in receive()"]], record


@needs("asgi", "streams_body")
async def client_gone_before_body(driver: Driver) -> None:
    key = new_key("gone-before")
    request = Request(plan=[b"", Pause(0.03)], declared_length=100, end_body=False, vanish=True)
    assert await driver.exchange(request, key) is None
    record = await driver.record(key)
    assert record["events"] == [["http.disconnect"]], record


@needs("asgi", "streams_body")
async def client_gone_during_body(driver: Driver) -> None:
    key = new_key("gone-during")
    half = payload(50)
    request = Request(plan=[half, Pause(0.03)], declared_length=100, end_body=False, vanish=True)
    assert await driver.exchange(request, key) is None
    record = await driver.record(key)
    assert record["events"] == [body_entry(half, ended=False), ["http.disconnect"]], record


@needs("asgi")
async def client_gone_after_body(driver: Driver) -> None:
    """The app waits in receive() after the whole body: it gets http.disconnect when the
    client goes, and a send() after that raises an OSError (ASGI 2.4)."""
    key = new_key("gone-after")
    data = payload(100)
    request = Request(path="/wait", plan=[data, Pause(0.03)], vanish=True)
    assert await driver.exchange(request, key) is None
    record = await driver.record(key)
    assert record["events"] == [
        body_entry(data),
        ["http.disconnect"],
        ["send raised OSError", True],
    ], record


@needs("asgi")
async def client_gone_while_app_busy(driver: Driver) -> None:
    """The client goes while the app is busy elsewhere; its next receive() says so."""
    key = new_key("gone-busy")
    data = payload(100)
    request = Request(path="/wait", query="busy", plan=[data, Pause(0.03)], vanish=True)
    assert await driver.exchange(request, key) is None
    record = await driver.record(key)
    assert record["events"] == [
        body_entry(data),
        ["http.disconnect"],
        ["send raised OSError", True],
    ], record


@needs("asgi")
async def client_gone_during_response(driver: Driver) -> None:
    """The client goes while the app streams its answer: the app's send() raises an
    OSError (ASGI 2.4), on every path and both loops."""
    key = new_key("gone-response")
    data = payload(10)
    request = Request(path="/stream-until-gone", plan=[data, Pause(0.05)], vanish=True)
    assert await driver.exchange(request, key) is None
    record = await driver.record(key)
    assert record["events"] == [body_entry(data), ["send raised OSError", True]], record


@needs("asgi", "in_process")
async def shutdown_while_waiting(driver: Driver) -> None:
    """A graceful shutdown while the app waits in receive() after its body: past
    graceful_timeout the app is cancelled where it waits, on both loops alike, and the
    front-end gets no response that looks whole."""
    key = new_key("shutdown")
    data = payload(10)
    plan: list[Any] = [data, Pause(0.03), Shutdown()]
    answer = await driver.exchange(Request(path="/wait", plan=plan, cut_must_show=True), key)
    assert answer is not None
    # Today nothing is sent (nginx answers 502); a whole 503 would do as well.
    assert not answer.complete or answer.status == 503, answer
    record = await driver.record(key)
    assert record["events"] == [body_entry(data), ["raised", "cancelled"]], record


# --- the response ----------------------------------------------------------------------


async def streamed_response_slow_reader(driver: Driver) -> None:
    key = new_key("stream")
    n, size = 24, 65536
    request = Request(
        path="/stream", query=f"n={n}&size={size}", plan=[], read_size=8192, read_pause=0.0005
    )
    answer = await driver.exchange(request, key)
    assert answer is not None
    assert answer.status == 200 and answer.complete, answer.status
    assert answer.body == expected_stream(n, size), len(answer.body)
    events = (await driver.record(key))["events"]
    assert events == (
        [body_entry(b""), ["mark", "sent"]] if "asgi" in driver.features else [body_entry(b"")]
    )


async def app_error_before_start(driver: Driver) -> None:
    key = new_key("error-before")
    data = payload(10)
    answer = await driver.exchange(Request(path="/error-before", plan=[data]), key)
    assert answer is not None
    assert (answer.status, answer.complete) == (500, True), answer
    record = await driver.record(key)
    assert record["events"] == [body_entry(data), ["raised", "AppError"]], record


async def app_error_after_start(driver: Driver) -> None:
    """The app raises after its response began: the front-end must be able to tell the
    response was cut (else it passes a truncated body on as a whole one)."""
    key = new_key("error-after")
    data = payload(10)
    request = Request(path="/error-after", plan=[data], cut_must_show=True)
    answer = await driver.exchange(request, key)
    assert answer is not None
    # A front-end that buffers the response may drop the part it holds (nginx
    # scgi_buffering): the status and no more.
    assert answer.status == 200, answer
    assert answer.body == b"partial" or (not driver.in_process and answer.body == b""), answer
    record = await driver.record(key)
    # WSGI: the error comes from the response iterable, after the app returned.
    expected = (
        [body_entry(data), ["raised", "AppError"]]
        if "asgi" in driver.features
        else [body_entry(data)]
    )
    assert record["events"] == expected, record
    assert not answer.complete, f"a cut response looks complete on {driver.name}: {answer}"


# --- lifespan and extensions -----------------------------------------------------------


@needs("asgi")
async def lifespan_state(driver: Driver) -> None:
    answer = await driver.exchange(Request(path="/state", method="GET"), new_key("state"))
    assert answer is not None
    assert (answer.status, answer.body) == (200, STATE_TOKEN.encode()), answer


@needs("asgi", "pathsend")
async def pathsend(driver: Driver) -> None:
    key = new_key("pathsend")
    answer = await driver.exchange(Request(path="/pathsend", method="GET"), key)
    assert answer is not None
    assert (answer.status, answer.body, answer.complete) == (200, PATHSEND_BODY, True), answer
    record = await driver.record(key)
    assert record["events"] == [body_entry(b""), ["mark", "pathsend offered"]], record


SCENARIOS = {
    f.__name__: f
    for f in (
        body_in_one_piece,
        body_in_many_pieces,
        body_byte_by_byte,
        body_after_pause,
        empty_body,
        chunked_upload,
        large_body,
        large_body_held_back,
        receive_cancelled_at_call,
        receive_after_body,
        no_disconnect_while_client_stays,
        client_gone_before_body,
        client_gone_during_body,
        client_gone_after_body,
        client_gone_while_app_busy,
        client_gone_during_response,
        shutdown_while_waiting,
        streamed_response_slow_reader,
        app_error_before_start,
        app_error_after_start,
        lifespan_state,
        pathsend,
    )
}
