"""Remote backends: a TGI or OpenAI-compatible server the user already runs, via huggingface_hub.

`common` holds what both share (health, probes, retries, error mapping); `tgi` and `openai` hold
one flavour each. `create_remote_backend` picks the flavour named by `RemoteOptions.flavor`.
"""

from __future__ import annotations

from services.student.backends.remote.common import RemoteBackend, RemoteOptions
from services.student.backends.remote.openai import OpenAIBackend
from services.student.backends.remote.tgi import TGIBackend

#: Flavour name (the CLI's --backend) -> its backend class.
FLAVORS: dict[str, type[RemoteBackend]] = {"tgi": TGIBackend, "openai": OpenAIBackend}

__all__ = ["FLAVORS", "OpenAIBackend", "RemoteBackend", "RemoteOptions", "TGIBackend", "create_remote_backend"]


def create_remote_backend(options: RemoteOptions) -> RemoteBackend:
    """The backend of `options.flavor` (ValueError for an unknown flavour or a missing endpoint)."""
    backend = FLAVORS.get(options.flavor)
    if backend is None:
        raise ValueError(f"unknown remote flavor {options.flavor!r}; use 'tgi' or 'openai'")
    return backend(options)
