"""The interface every student backend implements (local transformers + peft, remote TGI / OpenAI)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from typing import Any

from services.student.types import (
    CheckpointSpec,
    EncodedPrompt,
    Generation,
    GenerationRequest,
    ModelDescription,
)


class PreparedAdapter:
    """A checkpoint verified and read by `Backend.prepare_adapter`, ready to install.

    `digest` identifies its content (same version name + other digest = ALREADY_EXISTS).
    """

    def __init__(self, spec: CheckpointSpec, digest: str, payload: Any = None):
        self.spec = spec
        self.digest = digest
        self.payload = payload


class Backend(ABC):
    """Generates completions for rendered prompts and manages adapters inside the model server.

    Thread-safety: every method may be called from any gRPC handler thread.
    """

    #: "local", "tgi" or "openai"
    kind: str = ""
    #: True when the backend honours `Sampling.constrain_action` (restricts the action's tokens to
    #: `GenerationRequest.candidates`).
    supports_action_constraint: bool = False
    #: Seconds between health checks while serving (0: the backend cannot fail once started).
    health_interval: float = 0.0

    def check_health(self) -> bool:
        """Whether the backend can answer now (called every `health_interval` seconds while serving)."""
        return self.ready

    @abstractmethod
    def start(self) -> None:
        """Load the model / connect to the server. Slow; called once before serving."""

    @abstractmethod
    def close(self) -> None:
        """Stop background work and fail whatever is still queued."""

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True once `start` has finished successfully."""

    @abstractmethod
    def encode_prompt(self, messages: list[dict[str, str]]) -> EncodedPrompt:
        """Apply the chat template (add_generation_prompt=True) and count the prompt's tokens."""

    @abstractmethod
    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        """Queue rows for generation; one future per row, in order."""

    @abstractmethod
    def prepare_adapter(self, spec: CheckpointSpec) -> PreparedAdapter:
        """Verify a checkpoint without touching the serving model.

        NotFound when it does not exist; FailedPrecondition when it is corrupt or incompatible.
        """

    @abstractmethod
    def install_adapter(self, prepared: PreparedAdapter, handle: str) -> str:
        """Make a prepared adapter usable by requests; returns the handle requests must carry."""

    @abstractmethod
    def remove_adapter(self, handle: str) -> None:
        """Free an adapter nobody uses any more. Must not block on generation work."""

    @abstractmethod
    def describe(self) -> ModelDescription:
        """What is served and what this backend can do (current_version is filled in by the service)."""
