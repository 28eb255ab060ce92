"""Shared setup of the intercode_bash tests: a backend with short limits, and a server over it."""

from __future__ import annotations

import importlib.util
import re
import shutil

import pytest

from services.runtime.errors import FailedPrecondition

TOKEN = "intercode-test-token-7f3a9"
#: Short limits keep the tests quick; the per-command timeout is also the bound the tests put on calls.
OPTIONS = dict(timeout_s="2", pool_size="1", output_bytes="16384", disk_mb="32", file_mb="8", memory_mb="384",
               total_memory_mb="512", processes="48", gold_cache_s="600")
TIMEOUT_S = 2.0


def make_backend(**extra):
    """The backend, or a skip when this machine cannot run it (no icalfa, no user namespaces)."""
    if importlib.util.find_spec("icalfa") is None:
        pytest.skip("InterCode's tasks are not installed: pip install --no-deps icalfa==0.3.6")
    from services.environment.backends.intercode_bash import IntercodeBashBackend

    backend = IntercodeBashBackend(**{**OPTIONS, **extra})
    try:
        backend.template(1)
    except FailedPrecondition as exc:
        backend.close()
        pytest.skip(f"the shell sandbox cannot run here: {exc}")
    return backend


def start_server(backend, **kw):
    from services.environment.server import EnvironmentServer
    from services.runtime.config import ServerConfig

    server = EnvironmentServer(ServerConfig(port=0, max_message_bytes=4 * 1024 * 1024, max_workers=16),
                               {"intercode_bash": backend}, token=TOKEN, **kw)
    server.start()
    return server


def sandbox_of(server, session_id: str):
    """The sandbox behind a session (the test looks inside the server to check the processes)."""
    return server.sessions._sessions[session_id].episode.sandbox


#: Programs of InterCode's images that its gold commands call and a slim machine may lack
#: (scripts/install_intercode.sh --tools installs them).
HOST_TOOLS = ("tree", "cpio", "dig", "ping", "curl", "jq", "file", "lsof", "ifconfig", "cal", "crontab", "ssh",
              "column", "bc", "openssl", "md5deep", "killall", "ps")


def skip_without_tools(command: str) -> None:
    """Skip a test whose gold command calls a program this machine lacks (it fails for gold and agent alike)."""
    missing = [t for t in HOST_TOOLS if re.search(rf"(?<![\w./-]){re.escape(t)}(?![\w-])", command)
               and shutil.which(t) is None]
    if missing:
        pytest.skip(f"the gold command calls {', '.join(missing)}, missing here: "
                    "bash scripts/install_intercode.sh --tools")
