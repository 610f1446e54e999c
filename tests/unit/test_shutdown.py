"""The grace period of a shutdown: it ends on time, or sooner when shortened (a second signal),
and a wait for the calls in flight ends as soon as they are done."""

from __future__ import annotations

import asyncio

from stateward_service.shutdown import Grace


def test_the_wait_ends_when_the_event_is_set_within_the_grace() -> None:
    async def scenario() -> tuple[bool, float]:
        grace, done = Grace(60), asyncio.Event()
        asyncio.get_running_loop().call_soon(done.set)
        return await grace.wait(done), grace.remaining()

    answered, left = asyncio.run(scenario())
    assert answered and left > 30


def test_the_wait_ends_with_the_grace() -> None:
    async def scenario() -> bool:
        return await Grace(0.01).wait(asyncio.Event())

    assert asyncio.run(scenario()) is False


def test_shortening_the_grace_ends_a_wait_under_way() -> None:
    async def scenario() -> tuple[bool, float]:
        grace = Grace(60)
        asyncio.get_running_loop().call_soon(grace.shorten, 0)
        answered = await asyncio.wait_for(grace.wait(asyncio.Event()), 30)
        grace.shorten(10)  # a later grace does not lengthen it
        return answered, grace.remaining()

    assert asyncio.run(scenario()) == (False, 0.0)
