"""The simulated engine: a continuous-batching scheduler driven by a cost model.

The loop runs engine steps like vLLM's v1 scheduler:

* Running requests come first, in admission order: a prefilling request gets the next chunk of
  its prompt, a decoding request one token. Each step has a budget of ``max_num_batched_tokens``
  tokens (chunked prefill).
* A request takes KV-cache blocks (``block_size`` tokens each) as its tokens are computed. When
  a running request needs a block and none is free, the most recently admitted running request
  is preempted: its blocks are freed and it goes back to the front of the queue, to recompute its
  prompt and the tokens it already generated when it is admitted again (vLLM's recompute mode).
* Waiting requests are admitted first come, first served, while fewer than ``max_num_seqs`` run,
  budget is left and the blocks for their first chunk are free; the first that does not fit stops
  admission (no overtaking). Nothing is admitted in a step that preempted.

A step lasts ``(1 + batch_penalty * (B - 1)) / decode_rate + P / prefill_rate`` seconds, where
``B`` is the number of requests in the step and ``P`` the prompt tokens it computed (prefix-cache
hits cost nothing). At its end every decoding request gets one token and every request whose
prompt is complete gets its first token.

Timestamps come from the event loop's monotonic clock. The simulated clock runs ahead of the wall
clock by at most one step; when the process falls behind (steps shorter than the event loop can
sleep), steps run back to back until it catches up, and it jumps forward if it is more than
``MAX_LAG`` behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gantry_runtime.simulator.config import SimConfig
from gantry_runtime.simulator.metrics import SimMetrics

log = logging.getLogger(__name__)

#: How far (seconds) the simulated clock may fall behind the wall clock before it jumps.
MAX_LAG = 0.25


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


class AdmissionRejectedError(Exception):
    """vLLM's 503 when a queue limit (``--max-num-queued-reqs/-tokens``) would be exceeded."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(eq=False)
class RequestGroup:
    """The sequences of one API request (``n`` choices, or several prompts)."""

    n_param: int
    remaining: int = 0
    max_generated: int = 0
    aborted: bool = False


@dataclass(eq=False)
class SimRequest:
    """One sequence in the engine. The HTTP handler reads ``generated`` and ``finish_reason``."""

    request_id: str
    prompt_tokens: int
    #: Tokens this sequence generates in total (max_tokens, clamped to the context).
    target_tokens: int
    #: The finish reason when it reaches ``target_tokens``: ``length`` or ``stop`` (EOS).
    target_reason: str
    max_tokens_param: int | None
    block_hashes: tuple[int, ...]
    stream: bool
    notify: asyncio.Event
    arrival: float
    group: RequestGroup
    state: State = State.WAITING
    generated: int = 0
    computed: int = 0
    prefill_target: int = 0
    blocks: int = 0
    cached_tokens: int = 0
    admitted_once: bool = False
    scheduled_ts: float = 0.0
    first_token_ts: float = 0.0
    last_token_ts: float = 0.0
    preemptions: int = 0
    notified: int = 0
    finish_reason: str | None = None
    step_tokens: int = field(default=0, repr=False)

    @property
    def finished(self) -> bool:
        return self.state is State.DONE

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target


class Engine:
    """Waiting queue, running batch, KV blocks, prefix cache, and the step loop."""

    def __init__(
        self,
        config: SimConfig,
        metrics: SimMetrics,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._clock = clock
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.total_blocks = config.num_kv_blocks
        self.free_blocks = self.total_blocks
        self.prefix_cache: OrderedDict[int, None] = OrderedDict()
        self.steps = 0
        self._wakeup: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._step_end = 0.0
        knobs = config.knobs
        self._decode_rate = knobs.decode_rate
        self._prefill_rate = knobs.prefill_rate
        self._penalty = knobs.batch_penalty
        self._update_gauges()

    # -- time -------------------------------------------------------------------------------

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def step_duration(self, batch_size: int, prefill_tokens: int) -> float:
        """The cost model: seconds one step takes."""
        if batch_size <= 0:
            return 0.0
        forward = (1.0 + self._penalty * (batch_size - 1)) / self._decode_rate
        return forward + prefill_tokens / self._prefill_rate

    # -- requests ---------------------------------------------------------------------------

    @property
    def num_unfinished(self) -> int:
        return len(self.waiting) + len(self.running)

    def queued_prompt_tokens(self) -> int:
        """Prompt tokens of requests still waiting for their first token (vLLM's count)."""
        waiting = sum(r.prompt_tokens for r in self.waiting if r.generated == 0)
        return waiting + sum(r.prompt_tokens for r in self.running if r.generated == 0)

    def check_admission(self, n: int) -> None:
        """Raise ``AdmissionRejectedError`` when vLLM's frontend queue limits would be exceeded."""
        limit = self.config.max_num_queued_reqs
        if limit is not None and self.num_unfinished + n > limit:
            self.metrics.admission_rejections["max_num_queued_reqs"].inc()
            raise AdmissionRejectedError(
                "max_num_queued_reqs",
                "The engine is currently busy and cannot accept new requests. "
                "Please try again later or on a different instance.",
            )
        token_limit = self.config.max_num_queued_tokens
        if token_limit is not None and self.queued_prompt_tokens() >= token_limit:
            self.metrics.admission_rejections["max_num_queued_tokens"].inc()
            raise AdmissionRejectedError(
                "max_num_queued_tokens",
                "The engine has reached its prefill token backlog limit. "
                "Please try again later or on a different instance.",
            )

    def add(self, requests: Sequence[SimRequest]) -> None:
        """Queue new sequences (FIFO) and wake the loop."""
        for request in requests:
            request.prefill_target = request.prompt_tokens
            request.group.remaining += 1
            self.waiting.append(request)
        self._update_gauges()
        if self._wakeup is not None:
            self._wakeup.set()

    def abort(self, request: SimRequest) -> None:
        """Drop a sequence whose client went away (vLLM records no finished-request stats)."""
        if request.state is State.DONE:
            return
        if request.state is State.WAITING:
            self.waiting.remove(request)
        else:
            self.running.remove(request)
            self._free(request)
        request.state = State.DONE
        request.finish_reason = "abort"
        request.group.remaining -= 1
        request.group.aborted = True
        request.notify.set()
        self._update_gauges()
        self._maybe_idle()

    def abort_all(self) -> None:
        for request in [*self.running, *self.waiting]:
            self.abort(request)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is waiting or running; False on timeout."""
        if self.num_unfinished == 0:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return self.num_unfinished == 0
        return True

    def _maybe_idle(self) -> None:
        if self._idle is not None and self.num_unfinished == 0:
            self._idle.set()

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run engine steps forever (cancel the task to stop)."""
        self._wakeup = asyncio.Event()
        self._step_end = self.now()
        while True:
            if not self.waiting and not self.running:
                self._wakeup.clear()
                await self._wakeup.wait()
                self._step_end = self.now()
            now = self.now()
            start = self._step_end if self._step_end >= now - MAX_LAG else now
            scheduled, prefill_tokens = self.schedule(start)
            if not scheduled:
                # Nothing fits (cannot happen with a valid config); wait for a change.
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), 0.1)
                self._step_end = self.now()
                continue
            end = start + self.step_duration(len(scheduled), prefill_tokens)
            delay = end - self.now()
            await asyncio.sleep(delay if delay > 0 else 0)
            self.complete(scheduled, end, prefill_tokens)
            self._step_end = end

    def schedule(self, start: float) -> tuple[list[SimRequest], int]:
        """Pick the requests of a step that starts at ``start``, and their token counts
        (``step_tokens``); return them and the number of prompt tokens the step computes."""
        config = self.config
        budget = config.max_num_batched_tokens
        scheduled: list[SimRequest] = []
        prefill_tokens = 0
        preempted = False
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            remaining = request.prefill_target - request.computed
            tokens = min(remaining if remaining > 0 else 1, budget)
            while not self._allocate(request, tokens):
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request.state is not State.RUNNING:
                break
            request.step_tokens = tokens
            scheduled.append(request)
            budget -= tokens
            if remaining > 0:
                prefill_tokens += tokens
            index += 1

        while (
            not preempted
            and self.waiting
            and budget > 0
            and len(self.running) < config.max_num_seqs
        ):
            request = self.waiting[0]
            cached = self._prefix_lookup(request)
            tokens = min(request.prefill_target - cached, budget)
            request.computed = cached
            if not self._allocate(request, tokens):
                request.computed = 0
                break
            self.waiting.popleft()
            self._record_prefix_hits(request, cached)
            request.state = State.RUNNING
            if not request.admitted_once:
                request.admitted_once = True
                request.scheduled_ts = max(start, request.arrival)
                request.cached_tokens = cached
            self.running.append(request)
            request.step_tokens = tokens
            scheduled.append(request)
            budget -= tokens
            prefill_tokens += tokens
        if scheduled:
            self._update_gauges()
        return scheduled, prefill_tokens

    def complete(self, scheduled: Sequence[SimRequest], end: float, prefill_tokens: int) -> None:
        """Apply a finished step at time ``end``: tokens out, finished requests retired."""
        metrics = self.metrics
        self.steps += 1
        interval = self.config.stream_interval
        new_tokens = 0
        itl_values: list[float] = []
        finished: list[SimRequest] = []
        for request in scheduled:
            if request.state is not State.RUNNING:
                continue  # aborted or preempted while the step ran
            was_prefilling = request.prefilling
            request.computed += request.step_tokens
            if was_prefilling and request.prefilling:
                continue  # a chunk of a longer prompt
            request.generated += 1
            new_tokens += 1
            if request.first_token_ts == 0.0:
                request.first_token_ts = max(end, request.arrival)
                metrics.time_to_first_token.observe(request.first_token_ts - request.arrival)
                self._record_prompt(request)
                if self.config.enable_prefix_caching:
                    self._prefix_insert(request)
            else:
                itl_values.append(max(0.0, end - request.last_token_ts))
            request.last_token_ts = max(end, request.first_token_ts)
            if request.generated >= request.target_tokens:
                finished.append(request)
            elif request.stream and request.generated - request.notified >= interval:
                request.notified = request.generated
                request.notify.set()
        for value in itl_values:
            metrics.inter_token_latency.observe(value)
        if new_tokens:
            metrics.generation_tokens.inc(new_tokens)
        metrics.iteration_tokens.observe(prefill_tokens + new_tokens)
        for request in finished:
            self._finish(request, request.target_reason)
        if finished:
            self.running = [r for r in self.running if r.state is State.RUNNING]
            self._maybe_idle()
        self._update_gauges()

    # -- KV blocks and prefix cache ---------------------------------------------------------

    def _allocate(self, request: SimRequest, tokens: int) -> bool:
        size = self.config.block_size
        needed = -(-(request.computed + tokens) // size) - request.blocks
        if needed <= 0:
            return True
        if needed > self.free_blocks:
            return False
        self.free_blocks -= needed
        request.blocks += needed
        return True

    def _free(self, request: SimRequest) -> None:
        self.free_blocks += request.blocks
        request.blocks = 0

    def _preempt(self, request: SimRequest) -> None:
        self._free(request)
        request.state = State.WAITING
        request.computed = 0
        request.prefill_target = request.prompt_tokens + request.generated
        request.preemptions += 1
        self.waiting.appendleft(request)
        self.metrics.num_preemptions.inc()

    def _prefix_lookup(self, request: SimRequest) -> int:
        """Tokens of the request's leading blocks found in the prefix cache (at least one token
        is always computed)."""
        if not self.config.enable_prefix_caching:
            return 0
        limit = (request.prefill_target - 1) // self.config.block_size
        hits = 0
        cache = self.prefix_cache
        for block_hash in request.block_hashes[:limit]:
            if block_hash not in cache:
                break
            cache.move_to_end(block_hash)
            hits += 1
        return hits * self.config.block_size

    def _record_prefix_hits(self, request: SimRequest, cached: int) -> None:
        if not self.config.enable_prefix_caching:
            return
        metrics = self.metrics
        metrics.prefix_cache_queries.inc(request.prefill_target)
        if cached:
            metrics.prefix_cache_hits.inc(cached)
            metrics.prompt_tokens_cached_by_source["device"].inc(cached)

    def _prefix_insert(self, request: SimRequest) -> None:
        cache = self.prefix_cache
        for block_hash in request.block_hashes:
            cache[block_hash] = None
            cache.move_to_end(block_hash)
        while len(cache) > self.total_blocks:
            cache.popitem(last=False)

    # -- metrics ----------------------------------------------------------------------------

    def _record_prompt(self, request: SimRequest) -> None:
        metrics = self.metrics
        cached = request.cached_tokens
        metrics.prompt_tokens.inc(request.prompt_tokens)
        metrics.prompt_tokens_by_source["local_compute"].inc(request.prompt_tokens - cached)
        if cached:
            metrics.prompt_tokens_by_source["local_cache_hit"].inc(cached)
            metrics.prompt_tokens_cached.inc(cached)

    def _finish(self, request: SimRequest, reason: str) -> None:
        self._free(request)
        request.state = State.DONE
        request.finish_reason = reason
        request.notified = request.generated
        request.notify.set()
        metrics = self.metrics
        metrics.request_success[reason].inc()
        first, last = request.first_token_ts, request.last_token_ts
        decode_time = last - first
        metrics.e2e_request_latency.observe(max(0.0, last - request.arrival))
        metrics.request_queue_time.observe(max(0.0, request.scheduled_ts - request.arrival))
        metrics.request_prefill_time.observe(max(0.0, first - request.scheduled_ts))
        metrics.request_inference_time.observe(max(0.0, last - request.scheduled_ts))
        metrics.request_decode_time.observe(max(0.0, decode_time))
        metrics.request_num_preemptions.observe(request.preemptions)
        metrics.request_prefill_kv_computed_tokens.observe(
            request.prompt_tokens - request.cached_tokens
        )
        metrics.request_prompt_tokens.observe(request.prompt_tokens)
        metrics.request_generation_tokens.observe(request.generated)
        tpot = decode_time / (request.generated - 1) if request.generated > 1 else 0.0
        metrics.request_time_per_output_token.observe(max(0.0, tpot))
        if request.max_tokens_param:
            metrics.request_params_max_tokens.observe(request.max_tokens_param)
        group = request.group
        group.remaining -= 1
        group.max_generated = max(group.max_generated, request.generated)
        if group.remaining == 0 and not group.aborted:
            metrics.request_max_num_generation_tokens.observe(group.max_generated)
            metrics.request_params_n.observe(group.n_param)

    def _update_gauges(self) -> None:
        metrics = self.metrics
        metrics.num_requests_running.set(len(self.running))
        metrics.num_requests_waiting.set(len(self.waiting))
        metrics.waiting_by_reason["capacity"].set(len(self.waiting))
        used = self.total_blocks - self.free_blocks
        metrics.kv_cache_usage_perc.set(used / self.total_blocks if self.total_blocks else 0.0)
