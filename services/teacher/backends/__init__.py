"""Teacher backends, chosen by name: `oracle` (the environment's experts) and `llm` (a chat model)."""

from __future__ import annotations

from services.teacher.backends.base import AnnotationJob, CorrectionJob, TeacherBackend

BACKENDS = ("oracle", "llm")


def make_backend(name: str, *, llm_endpoint: str = "", llm_model: str = "", llm_api_key: str = "",
                 llm_device: str | None = None, settings=None, pricing=None) -> TeacherBackend:
    """Build a backend. `llm` uses `llm_endpoint` (TGI / OpenAI-compatible) when given, else the local
    transformers model `llm_model` (a folder, a hub id, or the `smollm2` alias)."""
    if name == "oracle":
        from services.teacher.backends.oracle import OracleTeacher

        return OracleTeacher()
    if name == "llm":
        from services.teacher.backends.chat import EndpointChatModel, LocalChatModel
        from services.teacher.backends.llm import LlmSettings, LlmTeacher

        settings = settings or LlmSettings()
        if llm_endpoint:
            chat = EndpointChatModel(llm_endpoint, model=llm_model, api_key=llm_api_key,
                                     timeout_s=settings.request_timeout_s)
        else:
            chat = LocalChatModel(llm_model or "smollm2", device=llm_device)
        return LlmTeacher(chat, settings=settings, pricing=pricing)
    raise ValueError(f"unknown teacher backend {name!r}; valid: {', '.join(BACKENDS)}")


__all__ = ["AnnotationJob", "BACKENDS", "CorrectionJob", "TeacherBackend", "make_backend"]
