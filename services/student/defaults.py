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

__all__ = ["DEFAULT_HISTORY_WINDOW", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_MAX_PREFILL_ROWS", "DEFAULT_MAX_WAIT_MS",
           "DEFAULT_PROMPT_CACHE_MB"]
