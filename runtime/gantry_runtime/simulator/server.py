"""The simulator's HTTP server: vLLM's OpenAI-compatible API on aiohttp.

Routes: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (with and without
streaming), ``/health``, ``/ping``, ``/version`` and ``/metrics``. Responses, stream chunks and
errors have the shapes vLLM 0.33.0 returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from gantry_runtime.simulator.config import SimConfig, kv_capacity_error
from gantry_runtime.simulator.engine import (
    AdmissionRejectedError,
    Engine,
    RequestGroup,
    SimRequest,
)
from gantry_runtime.simulator.metrics import SimMetrics
from gantry_runtime.simulator.tokens import (
    FillerText,
    block_hashes,
    count_text_tokens,
    render_chat,
    token_id_block_hashes,
)
from gantry_runtime.versions import VLLM_VERSION

log = logging.getLogger("gantry_runtime.simulator")

#: vLLM's default ``max_tokens`` for ``/v1/completions`` (the OpenAI default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
#: Seconds the HTTP server waits for handlers when it shuts down, after requests were aborted.
HANDLER_SHUTDOWN_TIMEOUT = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answered with vLLM's error JSON."""

    def __init__(
        self,
        message: str,
        *,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        err_type: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
        self.param = param


def error_body(message: str, err_type: str, status: HTTPStatus, param: str | None) -> bytes:
    error = {"message": message, "type": err_type, "param": param, "code": int(status)}
    return _dumps({"error": error})


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(value), status=status, content_type="application/json")


def error_response(exc: ApiError) -> web.Response:
    body = error_body(exc.message, exc.err_type, exc.status, exc.param)
    return web.Response(body=body, status=int(exc.status), content_type="application/json")


@dataclass
class Prompt:
    """One prompt of a request: its token count and prefix-cache block hashes."""

    tokens: int
    hashes: tuple[int, ...]


@dataclass
class ServerState:
    config: SimConfig
    engine: Engine
    metrics: SimMetrics
    filler: FillerText
    created: int

    @property
    def fingerprint(self) -> str:
        """``system_fingerprint``: vLLM's version and a hash of the engine's configuration."""
        digest = hashlib.sha256(repr(self.config).encode()).hexdigest()[:8]
        return f"vllm-{VLLM_VERSION}-{digest}"


STATE_KEY = web.AppKey("state", ServerState)


# -- request parsing --------------------------------------------------------------------------


def _int_param(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(f"{name} must be an integer, got {value!r}.", param=name)
    return value


def _check_model(state: ServerState, body: dict[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        return
    if not isinstance(model, str) or model not in state.config.served_model_names:
        aliases = ", ".join(state.config.served_model_names)
        raise ApiError(
            f"The model `{model}` does not exist. Valid aliases: {aliases}.",
            status=HTTPStatus.NOT_FOUND,
            err_type="NotFoundError",
            param="model",
        )


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    include_usage = include_continuous = False
    if stream and isinstance(options, dict):
        include_usage = bool(options.get("include_usage"))
        include_continuous = include_usage and bool(options.get("continuous_usage_stats"))
    return stream, include_usage, include_continuous


def _output_budget(
    config: SimConfig, prompt: Prompt, requested: int | None, default: int | None
) -> tuple[int, str, int]:
    """Tokens to generate, the finish reason on reaching them, and vLLM's ``max_tokens``.

    With ``max_tokens`` the simulated model never stops early (finish reason ``length``).
    Without it the model emits EOS after ``GANTRY_SIM_OUTPUT_TOKENS`` tokens (``stop``) unless
    the limit (vLLM's default ``max_tokens``, and the room left in the context) comes first.
    """
    max_model_len = config.max_model_len
    if prompt.tokens > max_model_len:
        raise ApiError(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt contains {prompt.tokens} input tokens, which exceeds this limit even "
            f"without any output tokens. Please reduce the length of the input prompt.",
            param="input_tokens",
        )
    room = max_model_len - prompt.tokens
    if requested is not None and requested < 1:
        raise ApiError(f"max_tokens must be at least 1, got {requested}.", param="max_tokens")
    limit = min(room, requested if requested is not None else (default or room))
    if limit < 1:
        raise ApiError(f"max_tokens must be at least 1, got {limit}.", param="max_tokens")
    if requested is None and config.knobs.output_tokens < limit:
        return config.knobs.output_tokens, "stop", limit
    return limit, "length", limit


def _chat_prompt(config: SimConfig, body: dict[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of messages.", param="messages")
    if not all(isinstance(message, dict) for message in messages):
        raise ApiError("Each message must be an object.", param="messages")
    text, tokens = render_chat(messages, body.get("tools"))
    return Prompt(tokens, block_hashes(text, tokens, config.block_size))


def _completion_prompts(config: SimConfig, body: dict[str, Any]) -> list[Prompt]:
    raw = body.get("prompt")
    size = config.block_size

    def text_prompt(text: str) -> Prompt:
        tokens = count_text_tokens(text)
        return Prompt(tokens, block_hashes(text, tokens, size))

    def ids_prompt(ids: list[Any]) -> Prompt:
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ApiError("prompt token ids must be integers.", param="prompt")
        return Prompt(len(ids), token_id_block_hashes(ids, size))

    if isinstance(raw, str):
        prompts = [text_prompt(raw)]
    elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
        prompts = [text_prompt(p) for p in raw]
    elif isinstance(raw, list) and raw and all(isinstance(p, list) for p in raw):
        prompts = [ids_prompt(p) for p in raw]
    elif isinstance(raw, list) and raw:
        prompts = [ids_prompt(raw)]
    else:
        raise ApiError("prompt must be a string, a list of strings, or token ids.", param="prompt")
    if any(p.tokens == 0 for p in prompts):
        raise ApiError("The prompt cannot be empty.", param="prompt")
    return prompts


def _new_sequences(
    state: ServerState,
    prompts: Sequence[Prompt],
    body: dict[str, Any],
    *,
    requested: int | None,
    default: int | None,
    stream: bool,
) -> list[SimRequest]:
    n = _int_param(body, "n")
    n = 1 if n is None else n
    if n < 1:
        raise ApiError(f"n must be at least 1, got {n}.", param="n")
    budgets = [_output_budget(state.config, prompt, requested, default) for prompt in prompts]
    state.engine.check_admission(n * len(prompts))
    group = RequestGroup(n_param=n)
    notify = asyncio.Event()
    arrival = state.engine.now()
    base = uuid.uuid4().hex
    sequences: list[SimRequest] = []
    for index, (prompt, (target, reason, max_tokens)) in enumerate(
        zip(prompts, budgets, strict=True)
    ):
        for choice in range(n):
            sequences.append(
                SimRequest(
                    request_id=f"{base}-{index}-{choice}",
                    prompt_tokens=prompt.tokens,
                    target_tokens=target,
                    target_reason=reason,
                    max_tokens_param=max_tokens,
                    block_hashes=prompt.hashes,
                    stream=stream,
                    notify=notify,
                    arrival=arrival,
                    group=group,
                )
            )
    return sequences


async def _read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"Invalid JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    return body


# -- generation -------------------------------------------------------------------------------


async def _wait_all(sequences: Sequence[SimRequest]) -> None:
    notify = sequences[0].notify
    while not all(seq.finished for seq in sequences):
        await notify.wait()
        notify.clear()


@dataclass(frozen=True)
class Envelope:
    """The fields every response and stream chunk of one request shares, as vLLM sends them."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> Envelope:
        return cls(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def body(self, kind: str, choices: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        """``{"id", "object": kind, "created", "model", "choices", **fields}``."""
        head = {"id": self.id, "object": kind, "created": self.created, "model": self.model}
        return {**head, "choices": choices, **fields}


def _usage(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    details: dict[str, int] | None = None,
    stream: bool = False,
    chat: bool = False,
) -> dict[str, Any]:
    """vLLM's ``UsageInfo`` as it serialises it: in full in a response body; in a stream chunk
    only the fields it set (``completion_tokens_details`` is set by chat)."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if not stream:
        usage["prompt_tokens_details"] = None
        usage["completion_tokens_details"] = details
    elif chat:
        usage["completion_tokens_details"] = details
    return usage


def _final_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage-only last chunk: vLLM drops its null fields."""
    return {k: v for k, v in usage.items() if v is not None}


def _prompt_total(prompts: Sequence[Prompt]) -> int:
    return sum(p.tokens for p in prompts)


def _check_aborted(sequences: Sequence[SimRequest]) -> None:
    if any(seq.finish_reason == "abort" for seq in sequences):
        raise ApiError(
            "The request was aborted: the server is shutting down.",
            status=HTTPStatus.SERVICE_UNAVAILABLE,
            err_type="ServiceUnavailableError",
        )


class Generation:
    """One API request in flight: its sequences, and the text each has produced."""

    def __init__(self, state: ServerState, sequences: list[SimRequest]) -> None:
        self.state = state
        self.sequences = sequences
        self.sent = [0] * len(sequences)
        self.done = [False] * len(sequences)

    def __enter__(self) -> Generation:
        self.state.engine.add(self.sequences)
        return self

    def __exit__(self, *exc: object) -> None:
        for seq in self.sequences:
            if not seq.finished:
                self.state.engine.abort(seq)

    def text(self, index: int, start: int, stop: int) -> str:
        return self.state.filler.tokens(start, stop, offset=index)

    def full_text(self, index: int) -> str:
        return self.text(index, 0, self.sequences[index].generated)

    def completion_tokens(self) -> int:
        return sum(seq.generated for seq in self.sequences)

    def updates(self) -> list[tuple[int, str, str | None]]:
        """New text per sequence since the last call: (index, text, finish reason or None)."""
        out: list[tuple[int, str, str | None]] = []
        for index, seq in enumerate(self.sequences):
            if self.done[index]:
                continue
            generated = seq.generated
            start = self.sent[index]
            if generated > start or seq.finished:
                self.sent[index] = generated
                reason = seq.finish_reason if seq.finished else None
                if seq.finished:
                    self.done[index] = True
                out.append((index, self.text(index, start, generated), reason))
        return out


async def _stream(
    request: web.Request,
    generation: Generation,
    make_chunks: Callable[[int, str, str | None, bool], list[dict[str, Any]]],
    usage_chunk: Callable[[], dict[str, Any] | None],
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    notify = generation.sequences[0].notify
    started = [False] * len(generation.sequences)
    while True:
        parts: list[bytes] = []
        for index, text, reason in generation.updates():
            first = not started[index]
            started[index] = True
            for chunk in make_chunks(index, text, reason, first):
                parts.append(b"data: " + _dumps(chunk) + b"\n\n")
        if parts:
            await response.write(b"".join(parts))
        if all(generation.done):
            break
        await notify.wait()
        notify.clear()
    final = usage_chunk()
    tail = b"data: " + _dumps(final) + b"\n\n" if final is not None else b""
    await response.write(tail + b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    body = await _read_json(request)
    _check_model(state, body)
    prompt = _chat_prompt(config, body)
    requested = _int_param(body, "max_completion_tokens")
    if requested is None:
        requested = _int_param(body, "max_tokens")
    stream, include_usage, continuous = _stream_flags(body)
    sequences = _new_sequences(
        state, [prompt], body, requested=requested, default=None, stream=stream
    )
    envelope = Envelope.new("chatcmpl", config.model_name)
    details = {"reasoning_tokens": 0} if config.reasoning_parser else None
    # vLLM runs its tool parser over the output of requests that offer tools (auto choice).
    parsed = state.metrics.tool_parser_invocations if body.get("tools") else {}
    if body.get("tool_choice") == "none":
        parsed = {}

    with Generation(state, sequences) as generation:
        if not stream:
            await _wait_all(sequences)
            _check_aborted(sequences)
            choices = [
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": generation.full_text(index),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": seq.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
                for index, seq in enumerate(sequences)
            ]
            if "non_streaming" in parsed:
                parsed["non_streaming"].inc(len(choices))
            return json_response(
                envelope.body(
                    "chat.completion",
                    choices,
                    service_tier=None,
                    system_fingerprint=state.fingerprint,
                    usage=_usage(prompt.tokens, generation.completion_tokens(), details=details),
                    prompt_logprobs=None,
                    prompt_token_ids=None,
                    prompt_text=None,
                    kv_transfer_params=None,
                    ec_transfer_params=None,
                    metrics=None,
                )
            )

        def chunk(choice: dict[str, Any], index: int) -> dict[str, Any]:
            out = envelope.body("chat.completion.chunk", [choice])
            if continuous:
                generated = sequences[index].generated
                out["usage"] = _usage(
                    prompt.tokens, generated, details=details, stream=True, chat=True
                )
            return out

        def make_chunks(
            index: int, text: str, reason: str | None, first: bool
        ) -> list[dict[str, Any]]:
            chunks: list[dict[str, Any]] = []
            if first:
                role = {"role": "assistant", "content": ""}
                choice0 = {"index": index, "delta": role, "logprobs": None, "finish_reason": None}
                chunks.append(
                    {**chunk(choice0, index), "prompt_token_ids": None, "prompt_text": None}
                )
            choice: dict[str, Any] = {
                "index": index,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": reason,
            }
            if reason is not None:
                choice["stop_reason"] = None
                choice["token_ids"] = None
            chunks.append(chunk(choice, index))
            if "streaming" in parsed:
                parsed["streaming"].inc()
            return chunks

        def usage_chunk() -> dict[str, Any] | None:
            if not include_usage:
                return None
            usage = _usage(
                prompt.tokens,
                generation.completion_tokens(),
                details=details,
                stream=True,
                chat=True,
            )
            return envelope.body(
                "chat.completion.chunk",
                [],
                usage=_final_usage(usage),
                system_fingerprint=state.fingerprint,
            )

        return await _stream(request, generation, make_chunks, usage_chunk)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    body = await _read_json(request)
    _check_model(state, body)
    prompts = _completion_prompts(config, body)
    requested = _int_param(body, "max_tokens")
    stream, include_usage, continuous = _stream_flags(body)
    sequences = _new_sequences(
        state,
        prompts,
        body,
        requested=requested,
        default=COMPLETIONS_DEFAULT_MAX_TOKENS,
        stream=stream,
    )
    envelope = Envelope.new("cmpl", config.model_name)
    prompt_tokens = _prompt_total(prompts)

    with Generation(state, sequences) as generation:
        if not stream:
            await _wait_all(sequences)
            _check_aborted(sequences)
            choices = [
                {
                    "index": index,
                    "text": generation.full_text(index),
                    "logprobs": None,
                    "finish_reason": seq.finish_reason,
                    "stop_reason": None,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
                for index, seq in enumerate(sequences)
            ]
            return json_response(
                envelope.body(
                    "text_completion",
                    choices,
                    service_tier=None,
                    system_fingerprint=state.fingerprint,
                    usage=_usage(prompt_tokens, generation.completion_tokens()),
                    kv_transfer_params=None,
                    ec_transfer_params=None,
                    metrics=None,
                )
            )

        def make_chunks(
            index: int, text: str, reason: str | None, first: bool
        ) -> list[dict[str, Any]]:
            choice = {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": reason,
                "stop_reason": None,
                "prompt_token_ids": None,
                "token_ids": None,
            }
            out = envelope.body("text_completion", [choice])
            if continuous:
                seq = sequences[index]
                out["usage"] = _usage(seq.prompt_tokens, seq.generated, stream=True)
            return [out]

        def usage_chunk() -> dict[str, Any] | None:
            if not include_usage:
                return None
            usage = _usage(prompt_tokens, generation.completion_tokens(), stream=True)
            return envelope.body(
                "text_completion",
                [],
                usage=_final_usage(usage),
                system_fingerprint=state.fingerprint,
            )

        return await _stream(request, generation, make_chunks, usage_chunk)


# -- other routes -----------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return json_response({"version": VLLM_VERSION})


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    data = [
        {
            "id": name,
            "object": "model",
            "created": state.created,
            "owned_by": "vllm",
            "root": config.model,
            "parent": None,
            "max_model_len": config.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": state.created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for name in config.served_model_names
    ]
    return json_response({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(state.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


# -- middleware and app -----------------------------------------------------------------------

_AUTH_PREFIXES = ("/v1", "/v2", "/inference")


@web.middleware
async def errors_and_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[STATE_KEY].config.api_keys
    if keys and request.method != "OPTIONS" and request.path.startswith(_AUTH_PREFIXES):
        header = request.headers.get("Authorization", "")
        if not any(header == f"Bearer {key}" for key in keys):
            return json_response({"error": "Unauthorized"}, status=401)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except AdmissionRejectedError as exc:
        status = HTTPStatus.SERVICE_UNAVAILABLE
        return error_response(ApiError(str(exc), status=status, err_type=status.phrase))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # FastAPI's shape for unknown routes and methods.
        return web.Response(
            body=_dumps({"detail": exc.reason}),
            status=exc.status,
            headers={k: v for k, v in exc.headers.items() if k.lower() != "content-type"},
            content_type="application/json",
        )


def build_app(config: SimConfig, engine: Engine, metrics_: SimMetrics) -> web.Application:
    app = web.Application(middlewares=[errors_and_auth], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = ServerState(
        config=config,
        engine=engine,
        metrics=metrics_,
        filler=FillerText(config.knobs.seed),
        created=int(time.time()),
    )
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_post("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    return app


async def _wait_or_stop(delay: float, stop: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds; True if ``stop`` was set first."""
    if delay <= 0:
        return stop.is_set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()


async def serve(
    config: SimConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Run the simulator until ``stop`` is set; return the process exit status.

    Like vLLM, the port is bound only after the (simulated) engine start-up: before
    ``GANTRY_SIM_STARTUP_DELAY_S`` has passed, connections are refused. ``on_ready`` receives the
    bound port (useful with ``--port 0``).
    """
    log.info(
        "Gantry vLLM simulator (API of vLLM %s) for model %s, served as %s",
        VLLM_VERSION,
        config.model,
        ", ".join(config.served_model_names),
    )
    if config.ignored_args:
        log.info("Ignored flags the simulator does not use: %s", " ".join(config.ignored_args))
    knobs = config.knobs
    log.info(
        "max_model_len=%d max_num_seqs=%d max_num_batched_tokens=%d kv_cache_tokens=%d "
        "block_size=%d prefix_caching=%s prefill=%.0f tok/s decode=%.1f tok/s/seq "
        "batch_penalty=%.4f",
        config.max_model_len,
        config.max_num_seqs,
        config.max_num_batched_tokens,
        config.kv_cache_tokens,
        config.block_size,
        config.enable_prefix_caching,
        knobs.prefill_rate,
        knobs.decode_rate,
        knobs.batch_penalty,
    )
    if config.headless:
        return await _headless(stop)
    group_server: asyncio.Server | None = None
    if config.group_port is not None:
        group_server = await _listen_for_workers(config.host, config.group_port)
        if group_server is None:
            return 1
    try:
        return await _serve_api(config, stop, on_ready)
    finally:
        if group_server is not None:
            group_server.close()
            await group_server.wait_closed()


async def _headless(stop: asyncio.Event) -> int:
    """A multi-node worker (``--headless``): vLLM runs no API server there; nor does the
    simulator. It stays up until SIGTERM or SIGINT."""
    log.info("Headless worker: no API server; running until SIGTERM")
    await stop.wait()
    log.info("Shutting down the headless worker")
    return 0


async def _close_at_once(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _listen_for_workers(host: str | None, port: int) -> asyncio.Server | None:
    """Listen on the leader's group port, as torch.distributed's store or vLLM's data-parallel
    handshake would, so that the workers' wait for the leader succeeds. Like vLLM, it opens
    before the engine start-up; connections are accepted and closed."""
    try:
        server = await asyncio.start_server(_close_at_once, host, port)
    except OSError as exc:
        log.error("Could not listen on %s:%d for the group's workers: %s", host or "*", port, exc)
        return None
    log.info("Listening for the group's workers on %s:%d", host or "0.0.0.0", port)
    return server


async def _serve_api(
    config: SimConfig, stop: asyncio.Event, on_ready: Callable[[int], None] | None
) -> int:
    knobs = config.knobs
    if knobs.startup_delay > 0:
        log.info(
            "Simulating engine start-up for %.1f s (the port stays closed)", knobs.startup_delay
        )
    if await _wait_or_stop(knobs.startup_delay, stop):
        log.info("Stopped before the engine started.")
        return 0
    problem = kv_capacity_error(config)
    if problem is not None:
        log.error("ValueError: %s", problem)
        return 1

    metrics_ = SimMetrics(config)
    engine = Engine(config, metrics_)
    engine_task = asyncio.create_task(engine.run(), name="gantry-sim-engine")
    app = build_app(config, engine, metrics_)
    runner = web.AppRunner(
        app,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=HANDLER_SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        try:
            await site.start()
        except OSError as exc:
            log.error("Could not listen on %s:%d: %s", config.host or "*", config.port, exc)
            return 1
        port = _bound_port(runner, config.port)
        log.info("Started server on http://%s:%d", config.host or "0.0.0.0", port)
        if on_ready is not None:
            on_ready(port)
        await stop.wait()
        log.info("Shutting down: closed the port")
        await site.stop()
        if config.shutdown_timeout > 0 and engine.num_unfinished:
            log.info(
                "Draining %d requests for up to %.0f s",
                engine.num_unfinished,
                config.shutdown_timeout,
            )
            await engine.wait_idle(config.shutdown_timeout)
        if engine.num_unfinished:
            log.info("Aborting %d unfinished requests", engine.num_unfinished)
        engine.abort_all()
        return 0
    finally:
        await runner.cleanup()
        engine_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await engine_task


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return default
