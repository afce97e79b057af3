"""A property over every path: however a request is split and paused, the app gets the
same messages (the whole body, in order, ended once) and the client the same bytes.

The examples run in a worker thread (hypothesis drives them synchronously) against
the one server the ``http_path`` fixture started; each exchange goes back into trio.
Pauses are a few milliseconds: long enough that the server reads the pieces apart.
"""

from __future__ import annotations

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .app import echo_body
from .drivers import Driver, Pause, Request, Step, new_key
from .scenarios import body_entry


@st.composite
def split_requests(draw: st.DrawFn, unknown_length: bool) -> Request:
    body = draw(st.binary(max_size=3000))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(body)), max_size=8))))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    plan: list[Step] = []
    if draw(st.booleans()):
        plan.append(b"")  # the head alone first
        plan.append(Pause(0.003))
    for piece in pieces:
        if piece:
            plan.append(piece)
        if draw(st.booleans()):
            plan.append(Pause(0.002))
    length_known = draw(st.booleans()) if unknown_length else True
    return Request(plan=plan, length_known=length_known)


async def test_any_split_same_messages(http_path: Driver) -> None:
    driver = http_path

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,
    )
    @given(split_requests("unknown_length" in driver.features))
    def check(request: Request) -> None:
        key = new_key("property")
        answer = trio.from_thread.run(driver.exchange, request, key)
        assert answer is not None
        assert (answer.status, answer.body, answer.complete) == (
            200,
            echo_body(request.body),
            True,
        ), answer
        record = trio.from_thread.run(driver.record, key)
        assert record["splits"] == "", record
        assert record["events"] == [body_entry(request.body)], (request, record)

    await trio.to_thread.run_sync(check)
