"""A small OpenAI-compatible chat server for tests: answers /v1/chat/completions from a script.

    with FakeChatServer([answer1, answer2]) as server:
        EndpointChatModel(server.url) ...

Each scripted entry is a string (the assistant's content) or an (HTTP status, body) pair to answer
with an error. The last entry repeats once the script runs out. Requests are recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeChatServer:
    def __init__(self, script, model: str = "fake-teacher", delay_s: float = 0.0):
        self.script = list(script)
        self.model = model
        self.delay_s = delay_s
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload) -> None:
                body = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                request = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                    return
                if server.delay_s:
                    time.sleep(server.delay_s)  # a slow model
                with server._lock:
                    server.requests.append(request)
                    entry = server.script.pop(0) if len(server.script) > 1 else server.script[0]
                if isinstance(entry, tuple):
                    status, payload = entry
                    self._send(status, payload)
                    return
                prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": request.get("model") or server.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": entry}}],
                    "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(entry) // 4,
                              "total_tokens": prompt_chars // 4 + len(entry) // 4},
                })

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="fake-llm")

    def __enter__(self) -> FakeChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
