"""The OpenAI-compatible HTTP front (aiohttp): authenticate, limit, route, hold, forward,
account. Streams pass through chunk by chunk; a client that goes away cancels the upstream
request (the server runs with handler cancellation)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from yarl import URL

from gantry_gateway import errors, usage
from gantry_gateway.audit import AuditLog, AuditRecord, now_rfc3339, request_content
from gantry_gateway.config import GatewayConfig
from gantry_gateway.errors import GatewayError
from gantry_gateway.limits import Limiter
from gantry_gateway.metrics import Metrics
from gantry_gateway.state import State
from gantry_gateway.tenants import Tenant
from gantry_gateway.view import REPLICA_DOMAIN, ModelEntry, Replica

log = logging.getLogger(__name__)

ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
#: Retry-After for 503s other than a hold timeout.
RETRY_SECONDS = 5
#: Pause before trying replicas again once each has refused a connection.
CONNECT_RETRY_PAUSE = 0.5
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
FORWARDED_RESPONSE_HEADERS = ("Content-Type",)
MAX_CACHED_URLS = 4096

STATE_KEY = web.AppKey("state", State)
CONFIG_KEY = web.AppKey("config", GatewayConfig)


@dataclass
class Services:
    config: GatewayConfig
    state: State
    limiter: Limiter
    metrics: Metrics
    audit: AuditLog
    session: aiohttp.ClientSession
    #: Scale a ModelDeployment from zero (runs the API call off the event loop).
    wake: Callable[[ModelEntry], None]


def _labels(entry: ModelEntry | None) -> tuple[str, str]:
    return (entry.namespace, entry.name) if entry else ("", "")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


class Handler:
    def __init__(self, services: Services, expected_streams: set[str]) -> None:
        self.s = services
        self.expected = expected_streams
        #: Upstream URLs by (replica host, port, path), parsed once.
        self._urls: dict[tuple[str, int, str], URL] = {}

    def _url(self, replica: Replica, path: str) -> URL:
        key = (replica.host, replica.port, path)
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= MAX_CACHED_URLS:  # pods come and go
                self._urls.clear()
            url = self._urls[key] = URL.build(scheme="http", host=key[0], port=key[1], path=path)
        return url

    # --- authentication -------------------------------------------------------------------

    def authenticate(self, request: web.Request) -> Tenant:
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

    async def models(self, request: web.Request) -> web.Response:
        try:
            tenant = self.authenticate(request)
        except GatewayError as exc:
            return web.Response(status=exc.status, body=exc.body(), headers=exc.headers())
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
        return web.json_response({"object": "list", "data": data})

    # --- inference routes -------------------------------------------------------------------

    async def _body(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        limit = self.s.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise errors.too_large(limit)
        data = await request.content.read(limit + 1)
        if len(data) > limit:
            raise errors.too_large(limit)
        try:
            body = json.loads(data)
        except ValueError as exc:
            raise errors.bad_request(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise errors.bad_request("The request body must be a JSON object.")
        return data, body

    async def infer(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        incoming = request.headers.get("X-Request-Id", "")
        record = AuditRecord(
            time=now_rfc3339(),
            request_id=incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex,
        )
        entry: ModelEntry | None = None
        body: dict[str, Any] = {}
        response: web.StreamResponse | None = None
        try:
            tenant = self.authenticate(request)
            record.tenant = tenant.name
            raw, body = await self._body(request)
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
            response = await self.forward(request, entry, tenant, raw, body, record, started)
        except GatewayError as exc:
            record.status, record.error = exc.status, exc.code
            response = web.Response(status=exc.status, body=exc.body(), headers=exc.headers())
        except asyncio.CancelledError:
            if not record.delivered:
                record.status, record.error = 499, "client_disconnected"
            self._finish(record, entry, started)
            raise
        except Exception:
            log.exception("Request %s failed", record.request_id)
            failure = GatewayError(500, "The gateway failed; see its log.", "server_error")
            record.status, record.error = 500, "internal_error"
            response = web.Response(status=500, body=failure.body(), headers=failure.headers())
        self._finish(record, entry, started)
        return response

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
        request: web.Request,
        entry: ModelEntry,
        tenant: Tenant,
        raw: bytes,
        body: dict[str, Any],
        record: AuditRecord,
        started: float,
    ) -> web.StreamResponse:
        state, metrics = self.s.state, self.s.metrics
        ns, md = _labels(entry)
        headers = {"Content-Type": "application/json", "X-Request-Id": record.request_id}
        tried: set[str] = set()
        first_refusal = 0.0
        replica = await self._replica(entry, body)
        gauge = metrics.child(metrics.outstanding, ns, md)
        while True:
            record.replica = replica.pod
            tried.add(replica.address)
            state.begin(replica)
            gauge.inc()
            try:
                upstream = await self.s.session.post(
                    self._url(replica, request.path),
                    data=raw,
                    headers=headers,
                )
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                state.end(replica)
                gauge.dec()
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
            except aiohttp.ClientError as exc:  # sent, then the replica failed: not retried
                state.end(replica)
                gauge.dec()
                raise errors.upstream_failed(
                    f"Replica pod {replica.pod} failed before answering ({exc.__class__.__name__}"
                    "); not retried because it may have processed the request."
                ) from None
            except BaseException:
                state.end(replica)
                gauge.dec()
                raise
            try:
                return await self._relay(request, upstream, replica, tenant, body, record, started)
            finally:
                upstream.release()
                state.end(replica)
                gauge.dec()

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        replica: Replica,
        tenant: Tenant,
        body: dict[str, Any],
        record: AuditRecord,
        started: float,
    ) -> web.StreamResponse:
        headers = {
            h: upstream.headers[h] for h in FORWARDED_RESPONSE_HEADERS if h in upstream.headers
        }
        headers["X-Request-Id"] = record.request_id
        record.status = upstream.status
        if upstream.status >= 400:
            record.error = "upstream_status"
        content_type = upstream.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            try:
                data = await upstream.read()
            except aiohttp.ClientError as exc:
                raise errors.upstream_failed(
                    f"Replica pod {replica.pod} failed during the request ({exc}); it was not "
                    "retried because it may have been processed."
                ) from None
            record.ttft_seconds = time.monotonic() - started
            self._account(
                record, tenant, usage.from_body(data, body) if upstream.status < 400 else None
            )
            if self.s.config.audit_include_content:
                record.completion = data.decode(errors="replace")
            return web.Response(status=upstream.status, body=data, headers=headers)
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        scanner = usage.StreamScanner()
        content: list[bytes] = []
        keep_content = self.s.config.audit_include_content
        stream = upstream.content
        try:
            while True:
                try:
                    chunk = await stream.readany()  # whatever has arrived, as it arrives
                except aiohttp.ClientError as exc:
                    record.status, record.error = 502, "upstream_error"
                    message = (
                        f"Replica pod {replica.pod} failed during the stream "
                        f"({exc.__class__.__name__}); the response is incomplete."
                    )
                    event = errors.error_body(message, "server_error", "upstream_error")
                    await response.write(b"data: " + event + b"\n\n")
                    break
                if not chunk:  # the end of the stream
                    break
                if record.ttft_seconds is None:
                    record.ttft_seconds = time.monotonic() - started
                scanner.feed(chunk)
                if keep_content:
                    content.append(chunk)
                await response.write(chunk)
            record.delivered = True
            await response.write_eof()
        except ConnectionResetError:  # the client went away (aiohttp's write error)
            if not record.delivered:
                record.status, record.error = 499, "client_disconnected"
        except asyncio.CancelledError:
            # A client may close as soon as it has read the stream's closing event, before the
            # upstream's end or the closing chunk: it has had the whole answer (no 499).
            record.delivered = record.delivered or scanner.done
            raise
        finally:
            self._account(record, tenant, scanner.result(body))
            if content:
                record.completion = b"".join(content).decode(errors="replace")
        return response

    def _account(self, record: AuditRecord, tenant: Tenant, used: usage.Usage | None) -> None:
        if used is None:
            return
        record.prompt_tokens, record.completion_tokens = used.prompt_tokens, used.completion_tokens
        record.usage_estimated = used.estimated
        self.s.limiter.charge(
            tenant.name, used.total, tenant.tokens_per_minute, self.s.state.share, time.monotonic()
        )

    # --- probes -------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.s.state.synced >= self.expected:
            return web.Response(text="ok")
        return web.Response(status=503, text="watches not listed yet")


class ReplicaResolver(AbstractResolver):
    """Resolves ``Replica.host`` names from the gateway's own view (no DNS): a pod that is no
    longer Ready resolves to nothing, which the caller retries on another replica."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        replica = self.state.catalog.by_host(host)
        if replica is None:
            raise OSError(f"pod {host.removesuffix('.' + REPLICA_DOMAIN)} is not a Ready replica")
        ip = replica.ip
        return [
            {
                "hostname": host,
                "host": ip,
                "port": port,
                "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        return None


def connector(state: State) -> aiohttp.TCPConnector:
    """Upstream connections: pooled per pod, resolved from the view, unlimited in number."""
    return aiohttp.TCPConnector(
        limit=0, resolver=ReplicaResolver(state), use_dns_cache=False, enable_cleanup_closed=True
    )


def client_session(state: State, config: GatewayConfig) -> aiohttp.ClientSession:
    """The one upstream session: kept-alive connections per pod, no cookie jar (the gateway
    forwards no cookies, and a jar is looked up and updated on every request otherwise), no
    decompression (bodies pass through as sent), no User-Agent of its own."""
    return aiohttp.ClientSession(
        connector=connector(state),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_seconds),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    )


def api_app(handler: Handler, max_body: int) -> web.Application:
    app = web.Application(client_max_size=max_body)
    app.router.add_get("/v1/models", handler.models)
    for path in ROUTES:
        app.router.add_post(path, handler.infer)
    app.router.add_get("/healthz", handler.healthz)
    app.router.add_get("/readyz", handler.readyz)
    return app


def metrics_app(metrics: Metrics) -> web.Application:
    async def scrape(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app
