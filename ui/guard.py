"""Fair use of the Space's queue: per-client shares, per-tab queues, and no work for clients that left.

gradio's queue has one global size limit shared by every event, and it runs a job even if nobody ever opened the
stream its result would be sent on. So one client posting joins it never listens to could fill the queue with
hour-long sampling jobs and lock every tab out. This module adds, on top of gradio's queue (pinned version):

- **a share per client**: a client (its address; behind the Spaces proxy, the first address of
  ``X-Forwarded-For``) holds at most ``per_client[group]`` waiting or running jobs of a concurrency group;
- **a size per group**: each concurrency group (sampling, forward, schedules, ...) has its own queue length, so a
  full sampling queue never refuses the forward or schedules tabs (their jobs also never wait behind sampling:
  each group has its own workers);
- **listeners only**: a job whose client has no open result stream when it starts, ``grace_s`` after it joined,
  is dropped before it computes anything (``require_listener``, called first by every handler).

Refusals are HTTP 503 with a message saying which limit applies.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from urllib.parse import parse_qs

import gradio as gr
from gradio import route_utils
from gradio.context import LocalContext

log = logging.getLogger("ddpm_explorer")

DEFAULT_PER_CLIENT = 4
DEFAULT_PER_GROUP = 64


class NotListening(gr.Error):
    """A job whose client never opened its result stream (or closed it): dropped unrun."""


def _behind_proxy() -> bool:
    # On Spaces every request comes through the platform's proxy, which sets X-Forwarded-For; elsewhere the header
    # is the client's own word and is ignored unless the operator says a proxy sets it.
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("DDPM_TRUST_PROXY", "") in ("1", "true", "True")


class QueueGuard:
    def __init__(
        self,
        per_client: dict[str, int],
        per_group: dict[str, int],
        grace_s: float = 5.0,
        trust_proxy: bool | None = None,
    ):
        self.per_client, self.per_group, self.grace_s = dict(per_client), dict(per_group), grace_s
        self.trust_proxy = _behind_proxy() if trust_proxy is None else trust_proxy
        self.listening: Counter[str] = Counter()  # session hash -> open result streams
        self.stats = Counter()
        self._queue = None
        self._blocks = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ who is who
    def client_key(self, request) -> str:
        if request is None:
            return "?"
        if self.trust_proxy:
            forwarded = request.headers.get("x-forwarded-for", "")
            if forwarded.strip():
                return forwarded.split(",")[0].strip()
        client = getattr(request, "client", None)
        return getattr(client, "host", None) or "?"

    def limits(self, group: str) -> tuple[int, int]:
        return self.per_client.get(group, DEFAULT_PER_CLIENT), self.per_group.get(group, DEFAULT_PER_GROUP)

    # ------------------------------------------------------------ admission
    def install(self, demo: gr.Blocks) -> gr.Blocks:
        """Put the admission check in front of ``demo``'s queue (call after ``demo.queue()``)."""
        queue = demo._queue
        original = queue.push
        self._queue, self._blocks = queue, demo

        async def push(body, request, username):
            try:
                fn = route_utils.get_fn(demo, None, body)
            except Exception:  # gradio's own push reports a bad request in its own words
                return await original(body=body, request=request, username=username)
            refusal = self.admit(fn.concurrency_id, self.client_key(request))
            if refusal:
                self.stats["refused"] += 1
                return False, refusal, "queue_full"
            return await original(body=body, request=request, username=username)

        queue.push = push
        return demo

    def _events(self):
        """Every job waiting or running: (event, running?)."""
        queue = self._queue
        for event_queue in list(queue.event_queue_per_concurrency_id.values()):
            for event in list(event_queue.queue):
                yield event, False
        for job in list(queue.active_jobs):
            for event in job or ():
                yield event, True

    def admit(self, group: str, client: str) -> str | None:
        """None if a new job of ``group`` from ``client`` may join; else the reason it may not."""
        per_client, per_group = self.limits(group)
        mine = waiting = 0
        for event, running in self._events():
            if event.concurrency_id != group:
                continue
            waiting += not running
            mine += self.client_key(event.request) == client
        if mine >= per_client:
            return (
                f"You already have {mine} request(s) of this kind waiting or running, the most one visitor may "
                "have at once: wait for them to finish (or cancel one), then try again."
            )
        if waiting >= per_group:
            return f"This queue is full ({waiting} requests waiting). Please try again in a minute."
        return None

    # ------------------------------------------------------------ listeners
    def stream_session(self, scope) -> str | None:
        """The session whose results an HTTP request streams, if it is a result stream."""
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return None
        path = scope.get("path", "")
        if path.endswith("/queue/data"):
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash")
            return values[0] if values else None
        parts = path.rstrip("/").split("/")
        if len(parts) >= 3 and parts[-3] == "call" and self._queue is not None:  # .../call/<api>/<event id>
            event = self._queue.event_ids_to_events.get(parts[-1])
            return event.session_hash if event is not None else None
        return None

    def middleware(self):
        """A starlette middleware that counts the open result streams of each session."""
        from starlette.middleware import Middleware

        return Middleware(_StreamCounter, guard=self)

    def require_listener(self) -> None:
        """Raise ``NotListening`` if this handler's client has no open result stream, ``grace_s`` after its job
        joined the queue. A no-op outside a gradio request (direct calls from Python)."""
        request = LocalContext.request.get(None)
        if request is None or self._queue is None:
            return
        session = request.session_hash
        if self.listening.get(session):
            return
        event = self._queue.event_ids_to_events.get(LocalContext.event_id.get(None))
        deadline = (event.enqueue_time if event is not None else time.monotonic()) + self.grace_s
        while time.monotonic() < deadline:
            time.sleep(0.02)
            if self.listening.get(session):
                return
        self.stats["dropped"] += 1
        log.info("dropped a %s job unrun: nobody listening", getattr(event, "concurrency_id", "?"))
        raise NotListening(
            "Nobody is listening for this result: the request was dropped unrun.", print_exception=False
        )


class _StreamCounter:
    """Pure ASGI (a streaming response must pass through untouched): +1 while a result stream is open."""

    def __init__(self, app, guard: QueueGuard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        session = self.guard.stream_session(scope)
        if session is None:
            return await self.app(scope, receive, send)
        self.guard.listening[session] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.guard.listening[session] -= 1
            if self.guard.listening[session] <= 0:
                del self.guard.listening[session]
