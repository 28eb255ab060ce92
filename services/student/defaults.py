"""The student server's scheduling defaults, shared by `leap student serve` and the run config
(orchestrator.config.StudentConfig), so that a server started by hand and one started by `leap run`
batch the same way. Torch-free."""

from services.student.prompts import DEFAULT_HISTORY_WINDOW

#: Rows decoded together at most (one batch).
DEFAULT_MAX_BATCH_SIZE = 16
#: Rows prefilled together at most when they join a running batch.
DEFAULT_MAX_PREFILL_ROWS = 16
#: How long the scheduler waits for more requests before it starts a batch.
DEFAULT_MAX_WAIT_MS = 20
#: MiB of prefilled prompts' KV kept for reuse (the whole-prompt cache); 0 keeps the system message only.
DEFAULT_PROMPT_CACHE_MB = 1024
#: A prefill pass's fixed cost in prefilled tokens' worth of compute, on a CPU: newcomers of uneven
#: lengths are prefilled in separate passes when that saves more padding (backends/prefill_plan.py).
#: bench/prefill_groups_bench.py measured 39-51 tokens from a tiny pass, and on a default run's prefill
#: shapes the least total time at 64-96 (0.81x the time of one padded pass in bf16, 0.87x in fp32).
DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS = 64

__all__ = ["DEFAULT_HISTORY_WINDOW", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_PREFILL_ROWS", "DEFAULT_MAX_WAIT_MS",
           "DEFAULT_PREFILL_GROUP_OVERHEAD_TOKENS", "DEFAULT_PROMPT_CACHE_MB"]
