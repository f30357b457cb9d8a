"""The webhook receiver of bench/webhooks.py, in its own process (its CPU is not counted).

`python -m bench._receiver PORT` serves POST (answers 204 at once, noting the receipt time of
each `webhook-id`, or of `x-id` for the baseline) and `GET /times` (every noted time, JSON).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import uvicorn

times: dict[str, float] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["method"] == "GET":
        body = json.dumps(times).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    headers = dict(scope["headers"])
    key = (headers.get(b"webhook-id") or headers.get(b"x-id") or b"").decode()
    times.setdefault(key, time.time())
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
                access_log=False, interface="asgi3")
