"""The analytics API of the incident, in Python: FastAPI served by one uvicorn process per
port, one event loop each. It is the component sloguard is built to guard, written the way
such services are written (pydantic models, JSON in and out, an in-memory aggregate standing
in for the database), with the incident's faults as switches:

- ``block``: a synchronous call on the event loop (``time.sleep``), like the sync ORM write
  or the legacy SDK's blocking HTTP call; nothing else on this worker runs meanwhile.
- ``cpu``: CPU-heavy work on the loop (JSON normalisation), same effect, but it burns a core.
- ``every``: the fault hits one ``POST /v1/events`` in N (default every one).
- ``query_block``: every ``GET /v1/metrics`` blocks the loop this long (a heavy aggregation
  done synchronously).
- ``stall``: the next request of any kind blocks the loop this long, once.

Faults come from ``FLEET_FAULT`` at start (``block=250ms,every=4``, the syntax of
``analytics-backend --fault``) or from ``POST /admin/fault`` at run time (JSON
``{"block_ms": 250, "every": 4}``; ``{}`` clears).

Every answer carries ``x-worker-id`` and ``x-loop-lag-ms``: the worst lateness of a 10 ms
timer over the last second, counting the tick that is overdue right now (so an answer written
just after a 250 ms block already says ~250). ``FLEET_LAG_HEADER=0`` turns the header off, to
show sloguard in front of a service that reports nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections import defaultdict
from typing import Optional

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

WORKER_ID = os.environ.get("FLEET_WORKER_ID", "0")
LAG_HEADER_ON = os.environ.get("FLEET_LAG_HEADER", "1") != "0"

TICK = 0.010
SLOTS = 10
SLOT_LEN = 0.100


class LagWindow:
    """Worst timer lateness per 100 ms slot over the last second, plus the overdue tick."""

    def __init__(self) -> None:
        self.slots = [(-1, 0.0)] * SLOTS
        self.next_expected: Optional[float] = None

    def record(self, now: float, lag: float) -> None:
        n = int(now / SLOT_LEN)
        i = n % SLOTS
        slot, worst = self.slots[i]
        self.slots[i] = (n, max(worst, lag) if slot == n else lag)

    def worst(self, now: float) -> float:
        n = int(now / SLOT_LEN)
        w = max((lag for slot, lag in self.slots if n - slot < SLOTS), default=0.0)
        if self.next_expected is not None:
            w = max(w, now - self.next_expected)
        return w


LAG = LagWindow()


async def lag_monitor() -> None:
    loop = asyncio.get_running_loop()
    while True:
        expected = loop.time() + TICK
        LAG.next_expected = expected
        await asyncio.sleep(TICK)
        now = loop.time()
        LAG.record(now, max(0.0, now - expected))


def lag_ms() -> int:
    return int(LAG.worst(asyncio.get_running_loop().time()) * 1000)


_DURATION = re.compile(r"^(\d+)(us|ms|s)$")


def parse_duration(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r} (e.g. 250ms)")
    n, unit = int(m.group(1)), m.group(2)
    return n / {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]


class Faults:
    def __init__(self) -> None:
        self.block = 0.0
        self.cpu = 0.0
        self.every = 1
        self.stall = 0.0
        self.query_block = 0.0
        self.seen = 0

    @classmethod
    def parse(cls, spec: str) -> "Faults":
        f = cls()
        for pair in filter(None, (p.strip() for p in spec.split(","))):
            key, _, value = pair.partition("=")
            if key in ("block", "cpu", "stall", "query_block"):
                setattr(f, key, parse_duration(value))
            elif key == "every":
                f.every = max(1, int(value))
            else:
                raise ValueError(f"unknown fault key {key!r}")
        return f

    def on_event(self) -> None:
        """Runs the configured fault for one event POST, on the loop, synchronously."""
        self.seen += 1
        if self.seen % self.every or not (self.block or self.cpu):
            return
        COUNTS["faults"] += 1
        if self.block:
            time.sleep(self.block)
        if self.cpu:
            end = time.perf_counter() + self.cpu
            x = 0
            while time.perf_counter() < end:
                x += 1


FAULTS = Faults.parse(os.environ.get("FLEET_FAULT", ""))


class Event(BaseModel):
    customer_id: str = Field(min_length=1, max_length=128)
    event: str = Field(min_length=1, max_length=128)
    ts: int = Field(ge=0)
    dimensions: dict[str, str] = Field(default_factory=dict)
    value: float = 1.0


class FaultBody(BaseModel):
    block_ms: int = 0
    cpu_ms: int = 0
    every: int = 1
    stall_ms: int = 0
    query_block_ms: int = 0


# (customer, event, minute) -> dimension value (or "") -> [count, sum, min, max]
STORE: dict = defaultdict(lambda: defaultdict(lambda: [0, 0.0, float("inf"), float("-inf")]))
COUNTS = {"events": 0, "requests": 0, "faults": 0}

BUCKETS = {"1s": 1_000, "10s": 10_000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}

@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI):
    task = asyncio.create_task(lag_monitor())
    yield
    task.cancel()


app = FastAPI(title="analytics (python fleet)", lifespan=lifespan)


class Stamp:
    """Pure ASGI middleware: the worker id and loop lag on every answer, and the stall fault."""

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        COUNTS["requests"] += 1
        if FAULTS.stall:
            stall, FAULTS.stall = FAULTS.stall, 0.0
            time.sleep(stall)

        async def stamped(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-worker-id", WORKER_ID.encode()))
                if LAG_HEADER_ON:
                    headers.append((b"x-loop-lag-ms", str(lag_ms()).encode()))
                message = dict(message, headers=headers)
            await send(message)

        return await self.inner(scope, receive, stamped)


app.add_middleware(Stamp)


@app.post("/v1/events", status_code=202)
async def ingest(event: Event) -> dict:
    FAULTS.on_event()
    minute = event.ts // 60_000
    groups = STORE[(event.customer_id, event.event, minute)]
    dims = [""] + [f"{k}={v}" for k, v in event.dimensions.items()]
    for d in dims:
        agg = groups[d]
        agg[0] += 1
        agg[1] += event.value
        agg[2] = min(agg[2], event.value)
        agg[3] = max(agg[3], event.value)
    COUNTS["events"] += 1
    return {"accepted": 1}


@app.get("/v1/metrics")
async def metrics(
    customer: str,
    event: str,
    bucket: str = "1m",
    group_by: Optional[str] = None,
    from_: Optional[int] = Query(None, alias="from"),
    to: Optional[int] = None,
) -> dict:
    if FAULTS.query_block:
        COUNTS["faults"] += 1
        time.sleep(FAULTS.query_block)
    width = BUCKETS.get(bucket)
    if width is None:
        raise HTTPException(400, f"bucket must be one of {', '.join(BUCKETS)}")
    series: dict = defaultdict(lambda: defaultdict(lambda: [0, 0.0]))
    prefix = f"{group_by}=" if group_by else None
    for (c, e, minute), groups in STORE.items():
        if c != customer or e != event:
            continue
        ts = minute * 60_000
        if (from_ is not None and ts < from_) or (to is not None and ts >= to):
            continue
        start = ts // width * width
        for d, (count, total, _lo, _hi) in groups.items():
            if prefix is None and d == "":
                key = ""
            elif prefix is not None and d.startswith(prefix):
                key = d[len(prefix):]
            else:
                continue
            s = series[key][start]
            s[0] += count
            s[1] += total
    return {
        "customer": customer,
        "event": event,
        "bucket": bucket,
        "series": [
            {
                "group": key or None,
                "points": [
                    {"ts": t, "count": c, "sum": s, "avg": s / c if c else 0.0}
                    for t, (c, s) in sorted(points.items())
                ],
            }
            for key, points in sorted(series.items())
        ],
    }


@app.get("/healthz")
async def healthz() -> dict:
    return {"worker": int(WORKER_ID), "status": "ok", "loop_lag_ms": lag_ms()}


@app.get("/debug/stats")
async def stats() -> dict:
    return {"worker": int(WORKER_ID), **COUNTS}


@app.post("/admin/fault")
async def set_fault(body: FaultBody) -> JSONResponse:
    FAULTS.block = body.block_ms / 1e3
    FAULTS.cpu = body.cpu_ms / 1e3
    FAULTS.every = max(1, body.every)
    FAULTS.stall = body.stall_ms / 1e3
    FAULTS.query_block = body.query_block_ms / 1e3
    FAULTS.seen = 0
    return JSONResponse({"worker": int(WORKER_ID), "fault": body.model_dump()})


@app.exception_handler(json.JSONDecodeError)
async def bad_json(_request: Request, exc: json.JSONDecodeError) -> JSONResponse:
    return JSONResponse({"error": f"malformed JSON: {exc}"}, status_code=400)
