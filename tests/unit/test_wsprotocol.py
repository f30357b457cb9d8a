"""The lean stand-ins for asyncio.Queue and asyncio.Event in uvicorn's WebSocket protocol."""

from __future__ import annotations

import asyncio

from api.wsprotocol import _Inbox, _Writable


async def test_the_inbox_hands_messages_over_in_order_and_survives_a_cancelled_read() -> None:
    inbox = _Inbox()
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    waiting.cancel()  # a read given up (the lobby's timeout) loses nothing
    await asyncio.gather(waiting, return_exceptions=True)
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"n": 1})
    inbox.put_nowait({"n": 2})
    assert await reader == {"n": 1}
    assert not inbox.empty()
    assert await inbox.get() == {"n": 2}
    assert inbox.empty()


async def test_a_send_waits_while_the_transport_is_paused() -> None:
    writable = _Writable()
    assert await writable.wait()
    writable.clear()
    waiters = [asyncio.create_task(writable.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    writable.set()
    assert await asyncio.gather(*waiters) == [True, True]
