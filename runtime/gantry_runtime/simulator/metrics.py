"""Prometheus metrics with the names, types, label names and buckets of vLLM 0.33.0.

Every family carries the labels ``model_name`` (the first served model name) and ``engine``
(``"0"``: the simulator is one engine), except ``vllm:admission_rejections`` which, as in vLLM,
has ``model_name`` and ``reason`` only. Label children are created up front, as vLLM does, so
every family is exposed from the first scrape. ``tests/contract/test_simulator_metrics.py``
checks these definitions against the installed vLLM package.

prometheus-client appends ``_total`` to counter samples: the counter ``vllm:prompt_tokens`` is
scraped as ``vllm:prompt_tokens_total``, as from vLLM.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from gantry_runtime.simulator.config import SimConfig

ENGINE = "0"
LABELS = ("model_name", "engine")

FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")
WAITING_REASONS = ("capacity", "deferred")
SLEEP_STATES = ("awake", "weights_offloaded", "discard_all")
PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")
CACHE_HIT_SOURCES = ("device", "host", "p2p", "disk", "external_unspecified")
ADMISSION_REASONS = ("max_num_queued_reqs", "max_num_queued_tokens")

REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
)  # fmt: skip
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
REQUEST_PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
REQUEST_NUM_PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)


#: ``vllm:cache_config_info``'s labels: vLLM 0.33.0's ``CacheConfig`` fields (plus ``engine``),
#: with the values an engine of this configuration reports once started.
CACHE_CONFIG_DEFAULTS = {
    "_block_size_resolved": "True",
    "block_size": "16",
    "cache_dtype": "auto",
    "cache_hit_alignment_tokens": "None",
    "effective_attention_block_size": "None",
    "enable_mamba_shared_prefix_checkpoint": "False",
    "enable_prefix_caching": "True",
    "gpu_memory_utilization": "0.92",
    "hash_block_size": "None",
    "is_attention_free": "False",
    "kv_cache_dtype_skip_layers": "[]",
    "kv_cache_layout": "None",
    "kv_cache_max_concurrency": "None",
    "kv_cache_memory_bytes": "None",
    "kv_cache_size_tokens": "None",
    "kv_offloading_backend": "native",
    "kv_offloading_size": "None",
    "kv_sharing_fast_prefill": "False",
    "mamba_block_size": "None",
    "mamba_cache_dtype": "auto",
    "mamba_cache_mode": "none",
    "mamba_page_size_padded": "None",
    "mamba_ssm_cache_dtype": "auto",
    "num_cpu_blocks": "None",
    "num_gpu_blocks": "None",
    "num_gpu_blocks_override": "None",
    "prefix_cache_retention_interval": "0",
    "prefix_caching_hash_algo": "sha256",
    "prefix_match_unit": "None",
    "replayssm_buffer_len": "16",
    "simple_cpu_offload_num_blocks": "None",
    "skip_page_size_padded": "None",
    "sliding_window": "None",
    "swa_bounded_replay": "True",
    "use_kda_recoverssm": "False",
    "use_replayssm": "False",
    "user_specified_block_size": "False",
}


def cache_config_info(config: SimConfig) -> dict[str, str]:
    """The labels of ``vllm:cache_config_info`` for a simulated engine."""
    blocks = config.num_kv_blocks
    info = dict(CACHE_CONFIG_DEFAULTS)
    info.update(
        block_size=str(config.block_size),
        cache_dtype=config.kv_cache_dtype,
        enable_prefix_caching=str(config.enable_prefix_caching),
        gpu_memory_utilization=str(config.gpu_memory_utilization),
        num_gpu_blocks=str(blocks),
        kv_cache_size_tokens=str(blocks * config.block_size),
        kv_cache_max_concurrency=str(blocks * config.block_size / config.max_model_len),
        engine=ENGINE,
    )
    return info


def request_tokens_buckets(max_model_len: int) -> list[float]:
    """vLLM's 1-2-5 series capped at max-model-len: 1, 2, 5, 10, 20, 50, ..."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * scale
            if value > max_model_len:
                return buckets
            buckets.append(value)
        scale *= 10


#: The ``mode`` label of ``vllm:tool_call_parser_invocations``.
TOOL_PARSER_MODES = ("streaming", "non_streaming")


class SimMetrics:
    """The simulator's metric families, in their own registry, bound to one model and engine."""

    def __init__(self, config: SimConfig) -> None:
        model_name, max_model_len = config.model_name, config.max_model_len
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        reg = self.registry
        labels = list(LABELS)
        values = (model_name, ENGINE)

        def gauge(name: str, doc: str) -> Gauge:
            family = Gauge(name, doc, labels, registry=reg, multiprocess_mode="mostrecent")
            return family.labels(*values)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=reg).labels(*values)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, labels, registry=reg, buckets=buckets).labels(*values)

        def counters_by(
            name: str, doc: str, label: str, keys: Sequence[str], *, base: Sequence[str] = labels
        ) -> dict[str, Counter]:
            """One counter family with an extra ``label``: its child for every key."""
            family = Counter(name, doc, [*base, label], registry=reg)
            prefix = values[: len(base)]
            return {key: family.labels(*prefix, key) for key in keys}

        # Scheduler state.
        self.num_requests_running = gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches."
        )
        self.num_requests_waiting = gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed."
        )
        waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason ('capacity' or 'deferred').",
            [*labels, "reason"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        self.waiting_by_reason = {r: waiting_by_reason.labels(*values, r) for r in WAITING_REASONS}
        sleep_state = Gauge(
            "vllm:engine_sleep_state",
            "Engine sleep state; awake = 1 means the engine is awake.",
            [*labels, "sleep_state"],
            registry=reg,
            multiprocess_mode="mostrecent",
        )
        for state in SLEEP_STATES:
            sleep_state.labels(*values, state).set(1 if state == "awake" else 0)
        self.kv_cache_usage_perc = gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage."
        )
        info = cache_config_info(config)
        Gauge(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            list(info),
            registry=reg,
            multiprocess_mode="mostrecent",
        ).labels(**info).set(1)

        # Caches.
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing.",
        )
        counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing.",
        )
        counter("vllm:mm_cache_queries", "Multi-modal cache queries, in number of queried items.")
        counter("vllm:mm_cache_hits", "Multi-modal cache hits, in number of cached items.")

        # Model FLOPs utilization estimates (vLLM registers them always; they stay at 0 unless
        # vLLM runs with --enable-mfu-metrics, which the simulator does not model).
        counter(
            "vllm:estimated_flops_per_gpu_total",
            "Estimated number of floating point operations per GPU.",
        )
        counter(
            "vllm:estimated_read_bytes_per_gpu_total",
            "Estimated number of bytes read from memory per GPU.",
        )
        counter(
            "vllm:estimated_write_bytes_per_gpu_total",
            "Estimated number of bytes written to memory per GPU.",
        )

        # Counters.
        self.num_preemptions = counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine."
        )
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.prompt_tokens_by_source = counters_by(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", "source",
            PROMPT_TOKEN_SOURCES,
        )  # fmt: skip
        self.prompt_tokens_cached = counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external)."
        )
        self.prompt_tokens_cached_by_source = counters_by(
            "vllm:prompt_tokens_cached_by_source",
            "Prefix-cache hit tokens by the cache tier that supplied them.",
            "source",
            CACHE_HIT_SOURCES,
        )
        self.generation_tokens = counter(
            "vllm:generation_tokens", "Number of generation tokens processed."
        )
        self.request_success = counters_by(
            "vllm:request_success", "Count of successfully processed requests.",
            "finished_reason", FINISHED_REASONS,
        )  # fmt: skip
        self.admission_rejections = counters_by(
            "vllm:admission_rejections",
            "Number of admission attempts rejected by a queue limit, by reason.",
            "reason",
            ADMISSION_REASONS,
            base=["model_name"],
        )

        # Registered by vLLM's API server only when a tool-call parser is set: one count per
        # choice (per delta when streaming) that went through the parser. The simulator never
        # calls a tool, so its outcome is always no_tool_call.
        self.tool_parser_invocations: dict[str, Counter] = {}
        if config.tool_call_parser:
            invocations = Counter(
                "vllm:tool_call_parser_invocations",
                "Total number of ToolParser invocations. Non-streaming increments once per "
                "choice; streaming increments once per delta.",
                ["model_name", "mode", "outcome", "request_type"],
                registry=reg,
            )
            for mode in TOOL_PARSER_MODES:
                for outcome in ("tool_call", "no_tool_call"):
                    for request_type in ("chat_completions", "responses", "other"):
                        child = invocations.labels(model_name, mode, outcome, request_type)
                        if outcome == "no_tool_call" and request_type == "chat_completions":
                            self.tool_parser_invocations[mode] = child

        # Histograms of counts.
        token_buckets = request_tokens_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            token_buckets,
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            ITERATION_TOKENS_BUCKETS,
        )
        self.request_max_num_generation_tokens = histogram(
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            token_buckets,
        )
        self.request_params_n = histogram(
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            REQUEST_PARAMS_N_BUCKETS,
        )
        self.request_params_max_tokens = histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            token_buckets,
        )

        # Histograms of timing intervals.
        self.time_to_first_token = histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            TIME_TO_FIRST_TOKEN_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            INTER_TOKEN_LATENCY_BUCKETS,
        )
        self.request_time_per_output_token = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            INTER_TOKEN_LATENCY_BUCKETS,
        )
        self.e2e_request_latency = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_num_preemptions = histogram(
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            REQUEST_NUM_PREEMPTIONS_BUCKETS,
        )
        self.request_prefill_kv_computed_tokens = histogram(
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            token_buckets,
        )
