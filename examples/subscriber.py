"""A service that receives exocall's events: it verifies each delivery with the
`standardwebhooks` package, and drops a repeat (by its id) or an event older than what it
already knows of the call (by its `sequence`)."""

import os

from fastapi import FastAPI, HTTPException, Request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The endpoint's secret (`whsec_...`), shown when it was created or its secret rotated.
webhook = Webhook(os.environ["EXOCALL_WEBHOOK_SECRET"])
app = FastAPI()
# In production, keep these in your database: ids for the whole retry horizon (about 28 hours).
seen: set[str] = set()
latest: dict[str, int] = {}  # call id -> the newest sequence applied


@app.post("/exocall-events")
async def receive(request: Request) -> dict[str, str]:
    body = await request.body()  # the raw bytes: verify before parsing
    try:
        event = webhook.verify(body, dict(request.headers))
    except (WebhookVerificationError, ValueError):  # ValueError: a malformed header
        raise HTTPException(400, "not signed by exocall") from None
    if event["id"] in seen:
        return {"status": "duplicate"}
    seen.add(event["id"])
    call, sequence = event["data"]["call"], event["data"]["sequence"]
    if sequence <= latest.get(call["id"], 0):
        return {"status": "stale"}
    latest[call["id"]] = sequence
    if event["type"] == "call.completed":
        print(f"order {call['custom_field']}: confirmed by phone")
    elif event["type"] in ("call.busy", "call.no_answer"):
        print(f"order {call['custom_field']}: call again later")
    return {"status": "ok"}
