"""The tests' one way of waiting (tests/support/eventually.py): it returns what held, and a
condition that never holds fails saying what was awaited and what was last seen."""

from __future__ import annotations

import itertools

import pytest

from tests.support.eventually import NotInTime, eventually, eventually_sync

pytestmark = pytest.mark.anyio


async def test_the_value_that_held_is_returned() -> None:
    counter = itertools.count()

    async def next_value() -> int:
        return next(counter)

    assert await eventually(next_value, what="three", until=lambda n: n >= 3) == 3
    assert eventually_sync(lambda: next(counter), what="ten", until=lambda n: n >= 10) == 10


async def test_a_condition_that_never_holds_says_what_and_the_last_value() -> None:
    counter = itertools.count()
    with pytest.raises(NotInTime, match=r"not within 0.05 s: the answer \(last seen: \d+\)"):
        await eventually(
            lambda: next(counter), what="the answer", until=lambda n: n < 0, within=0.05
        )
    with pytest.raises(NotInTime, match=r"the call ended \(last seen: 'queued'\)"):
        eventually_sync(
            lambda: "queued", what="the call ended", until=lambda s: s == "ended", within=0.05
        )


async def test_a_broken_check_fails_at_once() -> None:
    def broken() -> bool:
        raise KeyError("status")

    with pytest.raises(KeyError):
        await eventually(broken, what="never reached")
