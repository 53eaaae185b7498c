"""The deadline that stands for an asyncio.timeout scope on the hot path."""

from __future__ import annotations

import asyncio

import pytest

from tokenstile.gateway.expiry import Expiry


async def _wait(delay_s: float, expiry_s: float) -> str:
    expiry = Expiry(expiry_s)
    try:
        await asyncio.sleep(delay_s)
    except asyncio.CancelledError:
        if expiry.stop():
            return "timeout"
        raise
    finally:
        expiry.stop()
    return "done"


async def test_the_deadline_cancels_and_is_told_apart() -> None:
    assert await _wait(1.0, 0.01) == "timeout"
    assert await _wait(0.0, 1.0) == "done"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_an_outside_cancel_stays_a_cancel() -> None:
    task = asyncio.create_task(_wait(1.0, 5.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outside_cancel_on_top_of_the_deadline_is_not_swallowed() -> None:
    async def both() -> str:
        expiry = Expiry(0.01)
        me = asyncio.current_task()
        assert me is not None
        asyncio.get_running_loop().call_later(0.01, me.cancel)
        try:
            await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # both have fired
            if expiry.stop():
                return "timeout"
            raise
        return "done"

    task = asyncio.create_task(both())
    with pytest.raises(asyncio.CancelledError):
        await task
