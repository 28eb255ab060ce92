"""Plain data passed between the student's transport, service logic and backends (torch-free)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from services.student.prompts import HistoryTurn

BASE_VERSION = "base"


@dataclass(frozen=True)
class Sampling:
    """Decoding parameters of one item, after defaults were applied.

    temperature 0 is greedy; seed 0 means "no seed" (a fresh random one per request); top_p 1.0
    disables nucleus filtering.
    """

    temperature: float = 0.0
    max_new_tokens: int = 64
    seed: int = 0
    top_p: float = 1.0
    #: Choose the action among the row's candidates (guided decoding); see `GenerationRequest.candidates`.
    constrain_action: bool = False
    #: With constrain_action: free-text tokens before the server writes the ACTION label itself.
    max_reason_tokens: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class ActInput:
    """One agent state to act on. Only agent-visible fields exist here."""

    request_id: str
    env: str
    goal: str
    history: list[HistoryTurn]
    observation: str
    candidates: list[str]
    temperature: float = 0.0
    max_new_tokens: int = 0
    seed: int = 0
    top_p: float = 0.0
    adapter_version: str = ""
    constrain_action: bool = False
    max_reason_tokens: int = 0


@dataclass
class ActOutput:
    request_id: str
    reason: str
    action: str
    raw_output: str
    action_valid: bool
    adapter_version: str
    prompt_tokens: int
    completion_token_ids: list[int]
    batch_size: int
    #: Of prompt_tokens, those served from a cache instead of prefilled.
    cached_prompt_tokens: int = 0
    #: The reason ran out of its token budget and the server wrote the ACTION label (ActResult.reason_cut).
    reason_cut: bool = False


@dataclass(frozen=True)
class CheckpointSpec:
    """A LoRA checkpoint to load (mirrors leap.v1.CheckpointRef)."""

    name: str = ""
    version: str = ""
    uri: str = ""
    sha256: str = ""
    base_model: str = ""


@dataclass
class AdapterStatus:
    version: str
    checkpoint: CheckpointSpec | None
    current: bool
    in_flight: int
    load_seconds: float


@dataclass
class ModelDescription:
    base_model: str
    backend: str
    device: str
    dtype: str
    supports_hot_swap: bool
    supports_per_request_adapter: bool
    max_batch_size: int
    supports_action_constraint: bool = False
    max_prompt_tokens: int = 0
    current_version: str = BASE_VERSION


@dataclass
class EncodedPrompt:
    """A rendered prompt: the chat-templated text, its token ids (None when no tokenizer) and count."""

    messages: list[dict[str, str]]
    text: str
    ids: list[int] | None
    token_count: int
    #: Leading ids that are the rendered system message alone (0: none, or not a clean token
    #: boundary). Every prompt of an environment shares them, so the local backend computes their KV
    #: cache once per adapter and prefills only the rest.
    prefix_tokens: int = 0


@dataclass
class GenerationRequest:
    """One row for a backend: a prompt, resolved sampling, and the adapter it must run on."""

    prompt: EncodedPrompt
    sampling: Sampling
    version: str
    #: Backend-specific adapter handle (peft adapter name, remote adapter id); None for the base model.
    adapter_handle: str | None
    #: The actions a constrained row may end with (only when `sampling.constrain_action`).
    candidates: tuple[str, ...] = ()
    #: Set by the caller when nobody waits for the answer any more (deadline, cancellation).
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Generation:
    """What a backend generated for one row."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    #: Rows in the forward batch this row ran in (0: not known, e.g. a remote server batches itself).
    batch_size: int
    #: "action_line", "eos", "length", "stop" or "action_choice" (a constrained action completed).
    finish_reason: str
    #: Prompt tokens whose KV came from a cache instead of this row's prefill (0: none or not known).
    cached_prompt_tokens: int = 0
    #: A constrained row whose reason ran out of max_reason_tokens, so the server wrote the ACTION label.
    reason_cut: bool = False
