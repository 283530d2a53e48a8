"""gateway.turns.Turns on its own: pure asyncio (the API takes each message's check through it)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from gateway.turns import Turns

REQUEST = contextvars.ContextVar("request", default="none")


async def test_one_piece_per_pass_lets_what_became_ready_run_between() -> None:
    loop = asyncio.get_running_loop()
    turns = Turns()
    events: list[str] = []

    def piece(name: str) -> str:
        events.append(name)
        if name == "check 1":  # a reply from the database arriving while the first check runs
            loop.call_soon(events.append, "reply")
        return name.upper()

    results = await asyncio.gather(*(turns.run(piece, f"check {i}") for i in (1, 2, 3)))
    assert results == ["CHECK 1", "CHECK 2", "CHECK 3"]
    # all at once, the reply would have waited for every check: check 1, check 2, check 3, reply
    assert events == ["check 1", "reply", "check 2", "check 3"]
    assert len(turns) == 0


async def test_an_error_goes_to_its_caller_and_the_others_go_on() -> None:
    turns = Turns()

    def piece(n: int) -> int:
        if n == 2:
            raise ValueError("bad body")
        return n

    first, second, third = turns.run(piece, 1), turns.run(piece, 2), turns.run(piece, 3)
    assert await first == 1
    with pytest.raises(ValueError, match="bad body"):
        await second
    assert await third == 3


async def test_a_piece_whose_caller_went_away_is_not_run() -> None:
    turns = Turns()
    ran: list[int] = []

    async def caller(n: int) -> int:
        return await turns.run(lambda: ran.append(n) or n)

    tasks = [asyncio.create_task(caller(n)) for n in (1, 2, 3)]
    await asyncio.sleep(0)  # each caller has handed over its piece
    assert len(turns) == 3
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert done[0] == 1 and isinstance(done[1], asyncio.CancelledError) and done[2] == 3
    assert ran == [1, 3]


async def test_a_piece_runs_in_its_callers_context() -> None:
    turns = Turns()

    async def caller(name: str) -> str:
        REQUEST.set(name)  # what a request binds (its log fields)
        return await turns.run(REQUEST.get)

    assert await asyncio.gather(caller("a"), caller("b")) == ["a", "b"]


async def test_turns_go_on_after_the_queue_ran_dry() -> None:
    turns = Turns()
    assert await turns.run(len, "ab") == 2
    await asyncio.sleep(0)
    assert await turns.run(len, "abc") == 3  # scheduled anew: the first pass had ended
