"""Prometheus metrics of the student service (default registry, served on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE = Histogram(
    "leap_student_batch_size",
    "Rows in each forward pass of the local model (prefill or decode step)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)
QUEUE_WAIT = Histogram(
    "leap_student_queue_wait_seconds",
    "Time a row waited in the queue before its prefill",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("leap_student_queue_depth", "Rows waiting for a place in a batch")
GENERATED_TOKENS = Counter("leap_student_generated_tokens_total", "Completion tokens generated")
PROMPT_TOKENS = Counter("leap_student_prompt_tokens_total", "Prompt tokens processed")
PREFIX_CACHED_TOKENS = Counter("leap_student_prefix_cached_tokens_total",
                               "Prompt tokens served from the system-message KV cache instead of prefilled")
PREFILL_PADDING_TOKENS = Counter("leap_student_prefill_padding_tokens_total",
                                 "Padding positions computed by prefills (rows left-padded to their group's longest)")
ACT_ITEMS = Counter("leap_student_act_items_total", "Items answered by Act, by adapter version and validity",
                    ["version", "valid"])
ADAPTER_LOADS = Counter("leap_student_adapter_loads_total", "LoadAdapter calls by outcome (status code name)",
                        ["outcome"])
ADAPTER_LOAD_SECONDS = Histogram(
    "leap_student_adapter_load_seconds", "Time to verify and install an adapter",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LOADED_ADAPTERS = Gauge("leap_student_loaded_adapters", "LoRA adapters held in memory (base excluded)")
DROPPED_ROWS = Counter("leap_student_dropped_rows_total",
                       "Rows that left the scheduler unfinished: their request was cancelled (deadline, client) "
                       "or the row failed alone (non-finite scores, a sampling error)", ["reason"])
ENGINE_SECONDS = Counter(
    "leap_student_engine_seconds_total",
    "Seconds the scheduler thread spent, by activity: prefill (newcomers' prompts), decode (one token for "
    "every running row), step (choosing tokens, retiring rows), control (adapter loads), idle (no work)",
    ["activity"],
)
DECODE_ROW_STEPS = Counter("leap_student_decode_row_steps_total",
                           "Rows decoded, summed over decode passes (divided by the passes: the mean decode batch)")
DECODE_PASSES = Counter("leap_student_decode_passes_total", "Decode forward passes")
