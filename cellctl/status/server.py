"""The status page server: aiohttp on the daemon's own event loop (see
docs/decisions/0011-status-page-server.md), read-only, GET only.

    GET /             the page (static HTML; every value is put in by page.js as text)
    GET /page.js      the script, /page.css the style: no build step, no CDN
    GET /api/state    the whole state as JSON
    GET /events       server-sent events: the whole state whenever it changed (at most
                      every PUSH_INTERVAL), and a comment every KEEPALIVE seconds

Nothing a device or the config provides reaches the page but as JSON that the script
puts into the DOM with `textContent`; the CSP forbids inline script anyway.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog
from aiohttp import web

from cellctl import __version__
from cellctl.config.cell import StatusPage
from cellctl.errors import ConfigError
from cellctl.exits import finite
from cellctl.status.feed import StatusFeed, now_ms

if TYPE_CHECKING:
    from cellctl.daemon import Daemon

log = structlog.get_logger("cellctl.status")

PUSH_INTERVAL: Final = 0.25
OUTBOX_INTERVAL: Final = 1.0
KEEPALIVE: Final = 15.0
STATIC: Final = {"/": ("page.html", "text/html"), "/page.js": ("page.js", "text/javascript"),
                 "/page.css": ("page.css", "text/css")}  # fmt: skip
HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _secret(path: Any, what: str) -> str:
    try:
        value = str(path.read_text(encoding="utf-8")).strip()
    except OSError as exc:
        raise ConfigError([f"status_page.{what}: cannot read {str(path)!r}: {exc.strerror}"]) from None
    if not value:
        raise ConfigError([f"status_page.{what}: {str(path)!r} is empty"])
    return value


class StatusServer:
    """Serves one daemon's state. `run()` until cancelled; `port` once listening."""

    def __init__(self, daemon: Daemon, config: StatusPage) -> None:
        self.daemon = daemon
        self.config = config
        self.feed = StatusFeed(config.events)
        self.port: int | None = None
        self.listening = asyncio.Event()
        self.failed: str | None = None  # why it could not listen
        self.token = _secret(config.token_file, "token_file") if config.token_file else None
        self.password = _secret(config.password_file, "password_file") if config.password_file else None
        self._outbox: dict[str, Any] | None = None
        self._clients: set[asyncio.Queue[bytes | None]] = set()
        self._state: bytes = b"{}"
        self._pages = {route: (resources.files("cellctl.status").joinpath(name).read_bytes(), kind)
                       for route, (name, kind) in STATIC.items()}  # fmt: skip
        self._connected: dict[str, bool] = {}

    # -- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        d = self.daemon
        cfg = d.compiled.config
        devices = []
        for snap in d.cell.snapshots():
            devices.append({
                "id": snap.device_id, "driver": snap.driver, "profile": snap.profile,
                "available": snap.available, "known": snap.known, "reason": snap.reason,
                "degraded": snap.degraded,
                "machine": snap.machine.as_dict() if snap.machine is not None else None,
                "job": snap.job.as_dict() if snap.job is not None else None,
                "oee": snap.oee.as_dict() if snap.oee is not None else None,
                "points": [{"id": p.id, "v": p.value, "unit": p.unit, "q": p.quality.value, "reason": p.reason}
                           for p in snap.points],
            })  # fmt: skip
        return {
            "ts": now_ms(),
            "version": __version__,
            "cell": {"identity": cfg.identity.model_dump(mode="json"), "root": d.root},
            "broker": [
                {"format": dl.fmt, "host": "{}:{}".format(*dl.session.node), "connected": dl.session.is_connected}
                for dl in d.deliveries
            ],
            "outbox": self._outbox,
            "devices": devices,
            "events": list(self.feed.events),
        }

    def _watch_broker(self) -> None:
        for dl in self.daemon.deliveries:
            up = dl.session.is_connected
            if self._connected.get(dl.fmt) != up:
                if dl.fmt in self._connected or up:
                    self.feed.note("broker_connected" if up else "broker_disconnected", session=dl.fmt)
                self._connected[dl.fmt] = up

    async def _refresh_outbox(self) -> None:
        stats = await self.daemon.writer.call(lambda ob: ob.stats())
        figures = {
            "messages": stats.messages, "bytes": stats.bytes, "max_bytes": stats.max_bytes,
            "oldest_ts": stats.oldest_created_ms, "dropped_total": stats.dropped_total,
            "dropped": dict(stats.dropped_by_reason),
        }  # fmt: skip
        if figures != self._outbox:
            self._outbox = figures
            self.feed.version += 1

    def on_drop(self, reason: str, count: int) -> None:
        self.feed.note("outbox_dropped", reason=reason, count=count)

    # -- serving --------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled. A port that cannot be bound is logged and the daemon
        goes on without its page (one component failing does not stop the cell)."""
        @web.middleware
        async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
            return await self._guard(request, handler)

        app = web.Application(middlewares=[guard])
        app.router.add_get("/api/state", self._api_state)
        app.router.add_get("/events", self._events)
        for route in STATIC:
            app.router.add_get(route, self._static)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.host, self.config.port)
            try:
                await site.start()
            except OSError as exc:
                self.failed = str(exc)
                log.error(  # noqa: TRY400 - the reason is the message; a traceback adds nothing
                    "status_page_failed", host=self.config.host, port=self.config.port, error=str(exc)
                )
                return
            self.port = int(runner.addresses[0][1])
            log.info("status_page_listening", url=f"http://{self.config.host}:{self.port}/")
            self.listening.set()
            await self._push_loop()
        finally:
            for q in self._clients:
                q.put_nowait(None)  # streams end first, so cleanup does not wait for them
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await runner.cleanup()

    async def _push_loop(self) -> None:
        loop = asyncio.get_running_loop()
        sent = -1
        next_outbox = 0.0
        while True:
            if loop.time() >= next_outbox:
                next_outbox = loop.time() + OUTBOX_INTERVAL
                with contextlib.suppress(Exception):  # the outbox's own errors are reported elsewhere
                    await self._refresh_outbox()
            self._watch_broker()
            if self.feed.version != sent:
                sent = self.feed.version
                self._state = orjson.dumps(finite(self.state()))
                frame = b"data: " + self._state + b"\n\n"
                for q in self._clients:
                    if q.full():  # a slow client gets the newest state, not a backlog
                        q.get_nowait()
                    q.put_nowait(frame)
            await asyncio.sleep(PUSH_INTERVAL)

    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Auth (when configured) and the security headers, on every response."""
        if not self._allowed(request):
            headers = dict(HEADERS)
            if self.password is not None:
                headers["WWW-Authenticate"] = 'Basic realm="cellctl", charset="UTF-8"'
            return web.Response(status=401, text="authentication required\n", headers=headers)
        response: web.StreamResponse = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    def _allowed(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if self.token is not None:
            given = request.query.get("token") or auth.removeprefix("Bearer ").strip()
            return hmac.compare_digest(given.encode(), self.token.encode())
        if self.password is not None:
            if not auth.startswith("Basic "):
                return False
            try:
                user, _, password = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            ok_user = hmac.compare_digest(user.encode(), str(self.config.username).encode())
            return ok_user & hmac.compare_digest(password.encode(), self.password.encode())
        return True

    async def _static(self, request: web.Request) -> web.Response:
        body, kind = self._pages[request.path]
        return web.Response(body=body, content_type=kind, charset="utf-8")

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(finite(self.state())), content_type="application/json"
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        queue.put_nowait(b"data: " + orjson.dumps(finite(self.state())) + b"\n\n")
        self._clients.add(queue)
        try:
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE):
                        frame = await queue.get()
                except TimeoutError:
                    frame = b": keepalive\n\n"
                if frame is None:
                    break
                await response.write(frame)
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self._clients.discard(queue)
        return response
