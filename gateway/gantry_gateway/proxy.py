"""The OpenAI-compatible front: authenticate, limit, route, hold, forward, account.

Requests arrive through ``server.py`` and go to the pods through ``upstream.py``; a streamed
answer is relayed chunk by chunk from the upstream connection's read callback to the client's
transport, and a client that goes away cancels the request (its upstream connection is
dropped, which vLLM takes as an abort)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gantry_gateway import errors, usage
from gantry_gateway.audit import AuditLog, AuditRecord, now_rfc3339, request_content
from gantry_gateway.config import GatewayConfig
from gantry_gateway.errors import GatewayError
from gantry_gateway.limits import Limiter
from gantry_gateway.metrics import Metrics
from gantry_gateway.server import HttpConnection, Request
from gantry_gateway.state import State
from gantry_gateway.tenants import Tenant
from gantry_gateway.upstream import ConnectError, UpstreamConnection, UpstreamError, UpstreamPool
from gantry_gateway.view import ModelEntry, Replica

log = logging.getLogger(__name__)

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
#: Retry-After for 503s other than a hold timeout.
RETRY_SECONDS = 5
#: Pause before trying replicas again once each has refused a connection.
CONNECT_RETRY_PAUSE = 0.5
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
JSON = (("Content-Type", "application/json"),)
TEXT = (("Content-Type", "text/plain; charset=utf-8"),)


@dataclass
class Services:
    config: GatewayConfig
    state: State
    limiter: Limiter
    metrics: Metrics
    audit: AuditLog
    pool: UpstreamPool
    #: Scale a ModelDeployment from zero (runs the API call off the event loop).
    wake: Callable[[ModelEntry], None]


def _labels(entry: ModelEntry | None) -> tuple[str, str]:
    return (entry.namespace, entry.name) if entry else ("", "")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


class Handler:
    def __init__(self, services: Services, expected_streams: set[str]) -> None:
        self.s = services
        self.expected = expected_streams

    async def __call__(self, request: Request, conn: HttpConnection) -> None:
        """Route one request (the server's handler)."""
        path, method = request.path, request.method
        if path in ROUTES:
            if method == "POST":
                return await self.infer(request, conn)
            allowed = "POST"
        elif path in GETS:
            if method in ("GET", "HEAD"):
                return GETS[path](self, request, conn)
            allowed = "GET, HEAD"
        else:
            failure = GatewayError(404, f"No route {path}; the API is under /v1.", code="not_found")
            return conn.respond(404, failure.headers().items(), failure.body())
        failure = GatewayError(405, f"{path} takes {allowed}.", code="method_not_allowed")
        conn.respond(405, [*failure.headers().items(), ("Allow", allowed)], failure.body())

    # --- authentication -------------------------------------------------------------------

    def authenticate(self, request: Request) -> Tenant:
        key = _bearer(request)
        if not len(self.s.state.tenants):
            raise errors.unauthorized(
                "This gateway has no API keys: an administrator creates a Secret labelled "
                "gantry.dev/tenant in the gateway's tenant namespace (see docs/gateway.md)."
            )
        if key is None:
            raise errors.unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        tenant = self.s.state.tenants.authenticate(key)
        if tenant is None:
            raise errors.unauthorized("Incorrect API key provided.")
        return tenant

    # --- /v1/models ---------------------------------------------------------------------------

    def models(self, request: Request, conn: HttpConnection) -> None:
        try:
            tenant = self.authenticate(request)
        except GatewayError as exc:
            return conn.respond(exc.status, exc.headers().items(), exc.body())
        data = [
            {
                "id": served,
                "object": "model",
                "created": 0,
                "owned_by": f"{key[0]}/{key[1]}",
            }
            for served, key in sorted(self.s.state.catalog.by_served.items())
            if tenant.allows(served)
        ]
        conn.respond(200, JSON, json.dumps({"object": "list", "data": data}).encode())

    # --- inference routes -------------------------------------------------------------------

    def _body(self, request: Request) -> dict[str, Any]:
        if request.too_large:
            raise errors.too_large(self.s.config.max_body_bytes)
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise errors.bad_request(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise errors.bad_request("The request body must be a JSON object.")
        return body

    async def infer(self, request: Request, conn: HttpConnection) -> None:
        started = time.monotonic()
        incoming = request.headers.get("x-request-id", "")
        record = AuditRecord(
            time=now_rfc3339(),
            request_id=incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex,
        )
        entry: ModelEntry | None = None
        body: dict[str, Any] = {}
        try:
            tenant = self.authenticate(request)
            record.tenant = tenant.name
            body = self._body(request)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise errors.bad_request("Set 'model' to a model name from /v1/models.", "model")
            record.model = model
            record.stream = body.get("stream") is True
            entry = self.s.state.catalog.lookup(model)
            if entry is None:
                raise errors.not_found(
                    f"The model '{model}' does not exist or is not served here; "
                    "GET /v1/models lists the models you may use.",
                    "model",
                )
            record.namespace, record.model_deployment = entry.namespace, entry.name
            if not tenant.allows(model):
                raise errors.forbidden(
                    f"Tenant '{tenant.name}' may not use model '{model}'; an administrator "
                    f"adds it to 'models' in Secret {tenant.secret}."
                )
            refusal = self.s.limiter.admit(
                tenant.name,
                tenant.requests_per_minute,
                tenant.tokens_per_minute,
                self.s.state.share,
                time.monotonic(),
            )
            if refusal is not None:
                self.s.metrics.child(self.s.metrics.rate_limited, tenant.name, refusal.limit).inc()
                raise errors.rate_limited(
                    f"Tenant '{tenant.name}' reached its limit of {refusal.per_minute} "
                    f"{refusal.limit} per minute; retry in {refusal.retry_after} s.",
                    refusal.retry_after,
                    refusal.limit,
                )
            if self.s.config.audit_include_content:
                record.prompt = request_content(body)
            await self.forward(request, conn, entry, tenant, body, record, started)
        except GatewayError as exc:
            record.status, record.error = exc.status, exc.code
            headers = [*exc.headers().items(), ("X-Request-Id", record.request_id)]
            conn.respond(exc.status, headers, exc.body())
        except asyncio.CancelledError:
            if not record.delivered:
                record.status, record.error = 499, "client_disconnected"
            self._finish(record, entry, started)
            raise
        except Exception:
            log.exception("Request %s failed", record.request_id)
            failure = GatewayError(500, "The gateway failed; see its log.", "server_error")
            record.status, record.error = 500, "internal_error"
            if conn.started:  # the stream ends short; the client sees it incomplete
                conn.end_stream()
            else:
                conn.respond(500, failure.headers().items(), failure.body())
        self._finish(record, entry, started)

    def _finish(self, record: AuditRecord, entry: ModelEntry | None, started: float) -> None:
        record.duration_seconds = time.monotonic() - started
        ns, md = _labels(entry)
        m = self.s.metrics
        m.child(m.requests, ns, md, record.tenant or "", str(record.status)).inc()
        if entry is not None:
            m.child(m.duration, ns, md).observe(record.duration_seconds)
            if record.stream and record.ttft_seconds is not None:
                m.child(m.ttft, ns, md).observe(record.ttft_seconds)
            if record.tenant is not None and (record.prompt_tokens or record.completion_tokens):
                m.child(m.tokens, ns, md, record.tenant, "prompt").inc(record.prompt_tokens)
                completion = m.child(m.tokens, ns, md, record.tenant, "completion")
                completion.inc(record.completion_tokens)
        self.s.audit.write(record)

    async def _replica(self, entry: ModelEntry, body: dict[str, Any]) -> Replica:
        state = self.s.state
        replica = state.pick(entry, body)
        if replica is not None:
            return replica
        ns, md = _labels(entry)
        if state.held.get(entry.key, 0) >= self.s.config.max_held_per_model:
            raise errors.unavailable(
                f"Model '{entry.served_name}' has no Ready replica and "
                f"{self.s.config.max_held_per_model} requests already wait for one.",
                RETRY_SECONDS,
                code="hold_queue_full",
            )
        gauge = self.s.metrics.child(self.s.metrics.held, ns, md)
        ok = await state.wait_ready(
            entry, self.s.config.hold_timeout_seconds, self.s.wake, lambda n: gauge.set(n)
        )
        replica = state.pick(entry, body) if ok else None
        if replica is None:
            self.s.metrics.child(self.s.metrics.hold_timeouts, ns, md).inc()
            raise errors.unavailable(
                f"Model '{entry.served_name}' has no Ready replica: none became Ready within "
                f"{self.s.config.hold_timeout_seconds:g} s.",
                RETRY_SECONDS,
                code="hold_timeout",
            )
        return replica

    async def forward(
        self,
        request: Request,
        conn: HttpConnection,
        entry: ModelEntry,
        tenant: Tenant,
        body: dict[str, Any],
        record: AuditRecord,
        started: float,
    ) -> None:
        state, metrics = self.s.state, self.s.metrics
        ns, md = _labels(entry)
        tried: set[str] = set()
        first_refusal = 0.0
        replica = await self._replica(entry, body)
        gauge = metrics.child(metrics.outstanding, ns, md)
        fresh = False
        while True:
            record.replica = replica.pod
            tried.add(replica.address)
            state.begin(replica)
            gauge.inc()
            upstream: UpstreamConnection | None = None
            relay = _Relay(conn, record, started, self.s.config.audit_include_content)
            try:
                key = (replica.namespace, replica.pod, replica.address)
                upstream = await self.s.pool.acquire(key, replica.ip, replica.port, fresh)
                upstream.send(_upstream_request(request, replica, record.request_id), relay.head)
                data = await upstream.finish()
            except (ConnectError, UpstreamError) as exc:
                state.end(replica)
                gauge.dec()
                if upstream is not None:
                    upstream.abort()
                if isinstance(exc, UpstreamError):
                    if relay.streaming:
                        relay.fail(
                            f"Replica pod {replica.pod} failed during the stream ({exc}); the "
                            "response is incomplete."
                        )
                        return self._finish_stream(relay, tenant, body)
                    if upstream is None or not upstream.reused or exc.answered or fresh:
                        raise errors.upstream_failed(
                            f"Replica pod {replica.pod} failed before answering ({exc}); not "
                            "retried because it may have processed the request."
                        ) from None
                    # A kept-alive connection the pod closed as it was reused: the pod read
                    # nothing; the same pod again, on a new connection.
                    fresh = True
                    continue
                fresh = False
                nxt = state.pick(entry, body, frozenset(tried))
                if nxt is None:
                    # Every Ready replica refused: a pod marked Ready before its server
                    # listens, or replicas that just died. Try again for a while.
                    now = time.monotonic()
                    first_refusal = first_refusal or now
                    if now - first_refusal >= self.s.config.connect_retry_seconds:
                        raise errors.unavailable(
                            f"Could not connect to a replica of model '{entry.served_name}' "
                            f"for {self.s.config.connect_retry_seconds:g} s "
                            f"(last: pod {replica.pod}: {exc}).",
                            RETRY_SECONDS,
                            code="replica_unreachable",
                        ) from None
                    await asyncio.sleep(CONNECT_RETRY_PAUSE)
                    tried.clear()
                    nxt = await self._replica(entry, body)
                metrics.child(metrics.retries, ns, md).inc()
                record.retries += 1
                replica = nxt
                continue
            except BaseException:  # cancelled: the client went away
                state.end(replica)
                gauge.dec()
                if upstream is not None:
                    upstream.abort()
                if relay.streaming:
                    record.delivered = record.delivered or relay.scanner.done
                    self._account(record, tenant, relay.scanner.result(body))
                raise
            self.s.pool.release(upstream)
            state.end(replica)
            gauge.dec()
            if relay.streaming:
                return self._finish_stream(relay, tenant, body)
            record.ttft_seconds = time.monotonic() - started
            used = usage.from_body(data, body) if record.status < 400 else None
            self._account(record, tenant, used)
            if self.s.config.audit_include_content:
                record.completion = data.decode(errors="replace")
            return conn.respond(record.status, relay.headers, data)

    def _finish_stream(self, relay: _Relay, tenant: Tenant, body: dict[str, Any]) -> None:
        record, conn = relay.record, relay.conn
        if conn.closed:
            # A client may close as soon as it has read the stream's closing event, before
            # the upstream's end: it has had the whole answer (no 499).
            if not relay.scanner.done:
                record.status, record.error = 499, "client_disconnected"
        else:
            record.delivered = True
        conn.end_stream()
        self._account(record, tenant, relay.scanner.result(body))
        if relay.content:
            record.completion = b"".join(relay.content).decode(errors="replace")

    def _account(self, record: AuditRecord, tenant: Tenant, used: usage.Usage | None) -> None:
        if used is None:
            return
        record.prompt_tokens, record.completion_tokens = used.prompt_tokens, used.completion_tokens
        record.usage_estimated = used.estimated
        self.s.limiter.charge(
            tenant.name, used.total, tenant.tokens_per_minute, self.s.state.share, time.monotonic()
        )

    # --- probes -------------------------------------------------------------------------------

    def healthz(self, request: Request, conn: HttpConnection) -> None:
        conn.respond(200, TEXT, b"ok")

    def readyz(self, request: Request, conn: HttpConnection) -> None:
        if self.s.state.synced >= self.expected:
            conn.respond(200, TEXT, b"ok")
        else:
            conn.respond(503, TEXT, b"watches not listed yet")


class _Relay:
    """One answer on its way from a pod to the client. ``head`` runs in the upstream
    connection's read callback when the answer's head arrives: a stream's head goes to the
    client at once and its body follows chunk by chunk from that callback (``chunk``); any
    other answer is gathered and sent whole."""

    def __init__(
        self, conn: HttpConnection, record: AuditRecord, started: float, keep: bool
    ) -> None:
        self.conn, self.record, self.started = conn, record, started
        self.headers = [("X-Request-Id", record.request_id)]
        self.streaming = False
        self.scanner = usage.StreamScanner()
        self.content: list[bytes] | None = [] if keep else None

    def head(self, upstream: UpstreamConnection) -> Callable[[bytes], None] | None:
        record = self.record
        record.status = upstream.status
        if upstream.status >= 400:
            record.error = "upstream_status"
        if upstream.content_type:
            self.headers.append(("Content-Type", upstream.content_type))
        if not upstream.content_type.startswith("text/event-stream") or self.conn.closed:
            return None
        self.streaming = True
        self.conn.start_stream(upstream.status, self.headers)
        # A slow client pauses the pod's connection (its buffer is full) until it drains.
        self.conn.on_pause, self.conn.on_resume = upstream.pause_reading, upstream.resume_reading
        return self.chunk

    def chunk(self, data: bytes) -> None:
        if self.record.ttft_seconds is None:
            self.record.ttft_seconds = time.monotonic() - self.started
        self.scanner.feed(data)
        if self.content is not None:
            self.content.append(data)
        self.conn.write(data)

    def fail(self, message: str) -> None:
        """The pod failed mid-stream: an error event ends what the client gets."""
        self.record.status, self.record.error = 502, "upstream_error"
        event = errors.error_body(message, "server_error", "upstream_error")
        self.conn.write(b"data: " + event + b"\n\n")


GETS: dict[str, Callable[[Handler, Request, HttpConnection], None]] = {
    "/v1/models": Handler.models,
    "/healthz": Handler.healthz,
    "/readyz": Handler.readyz,
}


def _upstream_request(request: Request, replica: Replica, request_id: str) -> bytes:
    """The request for the pod: the client's body as received, the gateway's own headers."""
    head = (
        f"POST {request.path} HTTP/1.1\r\nHost: {replica.address}\r\n"
        f"Content-Type: application/json\r\nX-Request-Id: {request_id}\r\n"
        f"Content-Length: {len(request.body)}\r\n\r\n"
    )
    return head.encode("latin-1") + request.body


def metrics_app(metrics: Metrics) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
