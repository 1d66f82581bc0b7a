"""The HTTP endpoint: GET /metrics (Prometheus text, via prometheus_client) and
GET /health (JSON; 200 when nothing is wrong, 503 saying what is). It runs in a thread
of its own (wsgiref) so a slow scraper never holds up the event loop; each request
asks the loop for its figures with a deadline, so a stuck loop shows as unhealthy."""

from __future__ import annotations

import asyncio
import contextlib
import socketserver
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
import structlog
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import make_wsgi_app

from cellctl.config.cell import MetricsConfig
from cellctl.observe.figures import Figures, LoopNotResponding, take
from cellctl.observe.health import health
from cellctl.observe.metrics import CellCollector

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIEnvironment

    from cellctl.daemon import Daemon

log = structlog.get_logger("cellctl.observe")
SCRAPE_TIMEOUT = 2.0


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a hung client never keeps the process alive
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a scrape is no event
        pass


class ObserveServer:
    """Serve /metrics and /health for `daemon` on `config.listen` until `close()`."""

    def __init__(self, daemon: Daemon, config: MetricsConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.daemon = daemon
        self.config = config
        self.loop = loop
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(CellCollector(self._figures_or_none))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._metrics_app = make_wsgi_app(self.registry)
        self.server = make_server(
            config.host, config.port, self._app, server_class=_Server, handler_class=_QuietHandler
        )
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def _figures(self) -> Figures:
        return take(self.daemon, self.loop, timeout=SCRAPE_TIMEOUT)

    def _figures_or_none(self) -> Figures | None:
        try:
            return self._figures()
        except LoopNotResponding:
            return None

    def _app(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json(start_response, "405 Method Not Allowed", {"error": "only GET"})
        if path == "/metrics":
            answer: Iterable[bytes] = self._metrics_app(environ, start_response)
            return answer
        if path == "/health":
            try:
                body = health(self._figures(), outbox_filling=self.config.outbox_filling)
            except LoopNotResponding as exc:
                body = {"status": "unresponsive", "problems": [str(exc)]}
            status = "200 OK" if body["status"] == "ok" else "503 Service Unavailable"
            return _json(start_response, status, body)
        return _json(start_response, "404 Not Found", {"error": f"no such page {path!r}: try /metrics or /health"})

    def start(self) -> None:
        self.thread.start()
        log.info("metrics_listening", url=f"http://{self.config.listen.rpartition(':')[0]}:{self.port}/metrics")

    def close(self) -> None:
        """Stop serving (bounded: serve_forever polls its shutdown flag every 0.5 s)."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(2.0)


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterator[bytes]:
    data = orjson.dumps(body, option=orjson.OPT_INDENT_2)
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    yield data


@contextlib.asynccontextmanager
async def serving(daemon: Daemon, config: MetricsConfig | None) -> AsyncIterator[ObserveServer | None]:
    """The endpoint for the daemon's lifetime; a port that cannot be bound is logged and
    the daemon runs on without it (metrics are never worth a dead cell)."""
    if config is None:
        yield None
        return
    try:
        server = ObserveServer(daemon, config, asyncio.get_running_loop())
    except OSError as exc:
        log.warning("metrics_unavailable", listen=config.listen, error=exc.strerror or str(exc))
        yield None
        return
    server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)
