"""Fair use of the Space's queue: per-client shares, per-tab queues, and no work for clients that left.

gradio's queue has one global size limit shared by every event, and it runs a job even if nobody ever opened the
stream its result would be sent on. So one client posting joins it never listens to could fill the queue with
hour-long sampling jobs and lock every tab out. This module adds, on top of gradio's queue (pinned version):

- **a share per client**: a client (its address; behind the Spaces proxy, the entry of ``X-Forwarded-For`` that
  the proxy appended, see ``forwarded_client``) holds at most ``per_client[group]`` waiting or running jobs of a
  concurrency group;
- **a size per group**: each concurrency group (sampling, forward, schedules, ...) has its own queue length, so a
  full sampling queue never refuses the forward or schedules tabs (their jobs also never wait behind sampling:
  each group has its own workers);
- **listeners only**: a job whose client has no open result stream when it starts, ``grace_s`` after it joined,
  is dropped before it computes anything (``require_listener``, called first by every handler); the page's
  heartbeat stream counts as one (between two chained events the page may hold only that stream open);
- **sessions per client**: gradio keeps every session's state (about 1 MB each for this page, even for a call
  that stores nothing) for up to ``state_session_capacity`` sessions; a client that opens more than
  ``sessions_per_client`` sessions loses its own oldest ones, not other visitors';
- **no component functions**: gradio's ``/component_server`` route runs server-side methods of components (the
  image editor's ``accept_blobs`` keeps any number of layers in memory for ever); this page calls none of them
  (``server_functions`` lists what it has), so the route is closed;
- **uploads inside the disk cap**: an upload is admitted only when the cache folder has room for its declared
  size (``ui.files.JANITOR.reserve``), after removing the oldest visitor files if needed.

Refusals are HTTP 503 with a message saying which limit applies.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import Counter, OrderedDict
from urllib.parse import parse_qs

import anyio
import gradio as gr
from gradio.context import LocalContext

log = logging.getLogger("ddpm_explorer")

DEFAULT_PER_CLIENT = 2
DEFAULT_PER_GROUP = 64
DEFAULT_SESSIONS_PER_CLIENT = 8


class NotListening(gr.Error):
    """A job whose client never opened its result stream (or closed it): dropped unrun."""


def _behind_proxy() -> bool:
    # On Spaces every request comes through the platform's proxy, which sets X-Forwarded-For; elsewhere the header
    # is the client's own word and is ignored unless the operator says a proxy sets it.
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("DDPM_TRUST_PROXY", "") in ("1", "true", "True")


def _proxy_hops() -> int:
    """How many proxies in front of the app append to X-Forwarded-For (``DDPM_PROXY_HOPS``, default 1)."""
    try:
        return max(1, int(os.environ.get("DDPM_PROXY_HOPS", "1")))
    except ValueError:
        return 1


def forwarded_client(header: str, hops: int = 1) -> str | None:
    """The client's address in an X-Forwarded-For value behind ``hops`` trusted proxies: the ``hops``-th entry from
    the right. Each proxy appends the address it was reached from, so everything left of that entry is whatever the
    client itself sent and may be forged."""
    entries = [e.strip() for e in header.split(",") if e.strip()]
    return entries[-hops] if len(entries) >= hops else (entries[0] if entries else None)


def server_functions(demo: gr.Blocks) -> list[tuple[str, str]]:
    """(component class, method) of every function ``demo``'s components offer through ``/component_server``."""
    found = []
    for block in demo.blocks.values():
        for name in dir(type(block)):
            if getattr(getattr(type(block), name, None), "_is_server_fn", False):
                found.append((type(block).__name__, name))
    return sorted(set(found))


class QueueGuard:
    def __init__(
        self,
        per_client: dict[str, int],
        per_group: dict[str, int],
        grace_s: float = 5.0,
        trust_proxy: bool | None = None,
        sessions_per_client: int = DEFAULT_SESSIONS_PER_CLIENT,
    ):
        self.per_client, self.per_group, self.grace_s = dict(per_client), dict(per_group), grace_s
        self.trust_proxy = _behind_proxy() if trust_proxy is None else trust_proxy
        self.hops = _proxy_hops()
        self.sessions_per_client = sessions_per_client
        self.sessions: dict[str, OrderedDict[str, None]] = {}  # client -> its sessions, oldest first
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
            forwarded = forwarded_client(request.headers.get("x-forwarded-for", ""), self.hops)
            if forwarded:
                return forwarded
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
            # by index, not route_utils.get_fn, which makes the session's state (1 MB) before anything is admitted
            fn = demo.fns.get(body.fn_index) if isinstance(body.fn_index, int) else None
            if fn is None:  # gradio's own push reports a bad request in its own words
                return await original(body=body, request=request, username=username)
            client = self.client_key(request)
            refusal = self.admit(fn.concurrency_id, client)
            if refusal:
                self.stats["refused"] += 1
                return False, refusal, "queue_full"
            if not body.session_hash:  # a REST call: gradio would make up a session of its own, unseen here
                body.session_hash = uuid.uuid4().hex
            self.note_session(client, body.session_hash)
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

    def note_session(self, client: str, session: str | None) -> None:
        """Record that ``client`` uses ``session``; past ``sessions_per_client``, forget the client's oldest session
        (its state, in gradio's state holder, goes with it)."""
        if not session:
            return
        with self._lock:
            mine = self.sessions.setdefault(client, OrderedDict())
            mine[session] = None
            mine.move_to_end(session)
            evicted = []
            while len(mine) > self.sessions_per_client:
                evicted.append(mine.popitem(last=False)[0])
            if len(self.sessions) > 4 * DEFAULT_PER_GROUP * self.sessions_per_client:  # bound the book-keeping too
                self.sessions.pop(next(iter(self.sessions)))
        self.stats["sessions_evicted"] += len(evicted)
        self.forget_sessions()

    def forget_sessions(self) -> None:
        """Drop from gradio's state holder every session that no client holds any more (a session's state is made
        when its first job runs, which may be after the client's share pushed it out)."""
        holder = getattr(self._blocks, "state_holder", None)
        if holder is None:
            return
        with self._lock:
            kept = set().union(*self.sessions.values()) if self.sessions else set()
        with holder.lock:
            for old in [s for s in holder.session_data if s not in kept]:
                holder.session_data.pop(old, None)
                holder.time_last_used.pop(old, None)

    def still_listening(self) -> bool:
        """False once this handler's client has closed every result stream (it hung up); True outside a request."""
        request = LocalContext.request.get(None)
        if request is None or self._queue is None:
            return True
        return bool(self.listening.get(request.session_hash))

    def visitor(self) -> str:
        """This handler's client (``client_key`` of its request); "local" outside a gradio request."""
        request = LocalContext.request.get(None)
        return "local" if request is None else self.client_key(request)

    # ------------------------------------------------------------ listeners
    def stream_session(self, scope) -> str | None:
        """The session whose results an HTTP request streams, if it is a result stream or the page's heartbeat."""
        if scope.get("type") != "http" or scope.get("method") != "GET":
            return None
        path = scope.get("path", "")
        if path.endswith("/queue/data"):
            values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash")
            return values[0] if values else None
        parts = path.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] == "heartbeat":  # .../heartbeat/<session>: open while the page is open
            return parts[-1] or None
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


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _StreamCounter:
    """Pure ASGI (a streaming response must pass through untouched): +1 while a result stream is open; closes
    ``/component_server``; admits an upload only when the disk cap has room for it."""

    def __init__(self, app, guard: QueueGuard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/") if scope.get("type") == "http" else ""
        if path.endswith("/component_server"):
            self.guard.stats["component_server_refused"] += 1
            return await _refuse(send, 404, "This Space offers no component functions.")
        if path.endswith("/upload") and scope.get("method") == "POST":
            return await self._upload(scope, receive, send)
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

    async def _upload(self, scope, receive, send):
        from ui.files import JANITOR

        length = dict(scope.get("headers") or []).get(b"content-length")
        try:
            size = int(length)
        except (TypeError, ValueError):
            return await _refuse(send, 411, "An upload must declare its size (Content-Length).")
        # off the event loop: making room may walk the cache folder, seconds for a large one on a cold disk, and
        # every other request would wait that long
        if not await anyio.to_thread.run_sync(JANITOR.reserve, size):
            self.guard.stats["uploads_refused"] += 1
            return await _refuse(send, 503, "The Space's disk is full right now; please try again in a minute.")
        try:
            await self.app(scope, receive, send)
        finally:
            JANITOR.release(size)
