"""A small TGI-compatible HTTP server for tests.

No real text-generation-inference server can be installed here (TGI ships as a Docker image and no
Docker engine runs on this machine), so the remote backend's TGI path is tested against this server.
It honours TGI's documented API (docs/openapi.json of text-generation-inference):

- `POST /generate`: `{"inputs", "parameters": {adapter_id, details, decoder_input_details, do_sample,
  max_new_tokens, seed, stop, temperature, top_p, return_full_text, ...}}` ->
  `{"generated_text", "details": {"finish_reason": "length"|"eos_token"|"stop_sequence",
  "generated_tokens", "seed", "prefill": [...], "tokens": [{"id", "text", "logprob", "special"}]}}`
- `POST /` (compat_generate): the same request, answered as a one-element list.
- `GET /info` (model_id, max_input_tokens, max_total_tokens, ...), `GET /health`.
- Errors as `{"error", "error_type"}` with 422 (validation), 424 (generation), 429 (overloaded) and
  500 (incomplete_generation). Validation follows TGI's documented bounds (temperature > 0,
  0 < top_p < 1, seed > 0, max_new_tokens > 0, input + new tokens <= max_total_tokens).
- Multi-LoRA like TGI: adapters are given at startup (`adapters={"id": folder}`, TGI's
  LORA_ADAPTERS) and selected per request with `parameters.adapter_id`; an unknown adapter id is a
  422 validation error.

It generates with the real model (transformers + peft), one request at a time. `fail_next(status)`
makes the next generate requests fail with a given status, to test the client's retries.
"""

from __future__ import annotations

import json
import socket
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERROR_TYPES = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}
_ERROR_TEXT = {422: "Input validation error", 424: "Request failed during generation", 429: "Model is overloaded", 500: "Incomplete generation"}


class TGITestServer:
    def __init__(self, model_name: str = "smollm2", *, adapters: dict[str, str] | None = None,
                 max_input_tokens: int = 1024, max_total_tokens: int = 1536, host: str = "127.0.0.1", port: int = 0,
                 loaded: tuple | None = None):
        """`loaded`: the (model, tokenizer, spec) of `model_name` on CPU in float32, already in memory."""
        import torch  # noqa: F401 - the server generates with the real model

        from services.models import load_model_and_tokenizer

        self.model, self.tokenizer, self.spec = loaded or load_model_and_tokenizer(model_name, device="cpu",
                                                                                   dtype="float32")
        self.model_id = model_name
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.adapters: dict[str, str] = {}
        self.peft = None
        for adapter_id, folder in (adapters or {}).items():
            self._load_adapter(adapter_id, folder)
        self.requests: list[dict] = []  # every generate request body received, in order
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()  # open client connections (HTTP/1.1 keep-alive)
        self._connections_lock = threading.Lock()
        handler = self._handler_class()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="tgi-test-server")

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "TGITestServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def pause(self) -> None:
        """Go down until resume(): stop listening (new connections are refused) and cut the open ones
        (a kept-alive connection would otherwise go on being served by its handler thread)."""
        self.stop()
        self._thread.join(10)
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def resume(self) -> None:
        """Listen again on the same port."""
        self.httpd = ThreadingHTTPServer(self.httpd.server_address, self._handler_class())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="tgi-test-server")
        self._thread.start()

    def fail_next(self, status: int, count: int = 1) -> None:
        """The next `count` generate requests answer `status` with TGI's error body."""
        with self._lock:
            self._failures.extend([status] * count)

    # -- model -----------------------------------------------------------------------------------

    def _load_adapter(self, adapter_id: str, folder: str) -> None:
        from peft import PeftModel

        name = f"a{len(self.adapters)}"
        if self.peft is None:
            with warnings.catch_warnings():  # a transformers deprecation warning raised inside peft
                warnings.simplefilter("ignore", FutureWarning)
                self.peft = PeftModel.from_pretrained(self.model, folder, adapter_name=name)
        else:
            self.peft.load_adapter(folder, adapter_name=name)
        self.peft.eval()
        self.adapters[adapter_id] = name

    def info(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id, "model_sha": None, "model_dtype": "torch.float32",
            "model_device_type": "cpu", "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": 128, "max_best_of": 2, "max_stop_sequences": 4,
            "max_input_tokens": self.max_input_tokens, "max_total_tokens": self.max_total_tokens,
            "validation_workers": 2, "max_client_batch_size": 4, "router": "text-generation-router",
            "version": "test", "sha": None, "docker_label": None,
        }

    def _validate(self, body: Any) -> tuple[str, dict]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            raise _HTTPError(422, "Input validation error: `inputs` must be a string")
        params = body.get("parameters") or {}
        if not isinstance(params, dict):
            raise _HTTPError(422, "Input validation error: `parameters` must be an object")
        inputs = body["inputs"]
        if not inputs:
            raise _HTTPError(422, "Input validation error: `inputs` cannot be empty")
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0:
            raise _HTTPError(422, "Input validation error: `temperature` must be strictly positive")
        top_p = params.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            raise _HTTPError(422, "Input validation error: `top_p` must be > 0.0 and < 1.0")
        seed = params.get("seed")
        if seed is not None and seed <= 0:
            raise _HTTPError(422, "Input validation error: `seed` must be strictly positive")
        max_new = params.get("max_new_tokens", 100)
        if max_new is None:
            max_new = 100
        if max_new <= 0:
            raise _HTTPError(422, "Input validation error: `max_new_tokens` must be strictly positive")
        stop = params.get("stop") or []
        if len(stop) > 4:
            raise _HTTPError(422, "Input validation error: `stop` supports up to 4 stop sequences")
        adapter_id = params.get("adapter_id")
        if adapter_id and adapter_id not in self.adapters:
            raise _HTTPError(422, f"Input validation error: adapter `{adapter_id}` is not loaded; "
                                  f"loaded adapters: {sorted(self.adapters)}")
        n_input = len(self.tokenizer(inputs, add_special_tokens=False)["input_ids"])
        if n_input > self.max_input_tokens:
            raise _HTTPError(422, f"Input validation error: `inputs` must have less than {self.max_input_tokens} "
                                  f"tokens. Given: {n_input}")
        if n_input + max_new > self.max_total_tokens:
            raise _HTTPError(422, f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                                  f"{self.max_total_tokens}. Given: {n_input} `inputs` tokens and {max_new} "
                                  "`max_new_tokens`")
        return inputs, dict(params, max_new_tokens=max_new, stop=stop)

    def generate(self, body: Any) -> dict:
        import torch

        with self._lock:
            self.requests.append(body if isinstance(body, dict) else {"invalid": True})
            if self._failures:
                status = self._failures.pop(0)
                raise _HTTPError(status, _ERROR_TEXT.get(status, "error"))
            inputs, params = self._validate(body)
            ids = self.tokenizer(inputs, add_special_tokens=False, return_tensors="pt")["input_ids"]
            do_sample = bool(params.get("do_sample")) or params.get("temperature") not in (None, 1.0) \
                or params.get("top_p") is not None
            seed = params.get("seed")
            gen_kwargs: dict[str, Any] = dict(max_new_tokens=params["max_new_tokens"], do_sample=do_sample,
                                              pad_token_id=self.tokenizer.pad_token_id,
                                              output_scores=True, return_dict_in_generate=True)
            if do_sample:
                gen_kwargs.update(temperature=params.get("temperature") or 1.0, top_p=params.get("top_p") or 1.0,
                                  top_k=0)
                if seed is None:
                    seed = int(torch.randint(1, 2**31 - 1, (1,)).item())
                torch.manual_seed(seed)
            model = self.model
            adapter_id = params.get("adapter_id")
            if self.peft is not None:
                model = self.peft
                if adapter_id:
                    self.peft.set_adapter(self.adapters[adapter_id])
            with torch.inference_mode():
                if self.peft is not None and not adapter_id:
                    with self.peft.disable_adapter():
                        out = model.generate(ids, attention_mask=torch.ones_like(ids), **gen_kwargs)
                else:
                    out = model.generate(ids, attention_mask=torch.ones_like(ids), **gen_kwargs)
            new_ids = out.sequences[0, ids.shape[1]:].tolist()
            logprobs = [float(torch.log_softmax(score[0].float(), -1)[tok]) for score, tok in zip(out.scores, new_ids)]
        eos = self.tokenizer.eos_token_id
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        finish = "eos_token" if new_ids and new_ids[-1] == eos else "length"
        for stop in params["stop"]:
            if stop in text:
                text = text[: text.index(stop) + len(stop)]
                finish = "stop_sequence"
        tokens = [{"id": tok, "text": self.tokenizer.decode([tok]), "logprob": lp, "special": tok == eos}
                  for tok, lp in zip(new_ids, logprobs)]
        if params.get("return_full_text"):
            text = inputs + text
        response: dict[str, Any] = {"generated_text": text}
        if params.get("details", True):
            prefill = []
            if params.get("decoder_input_details"):
                prefill = [{"id": int(t), "text": self.tokenizer.decode([int(t)]), "logprob": None}
                           for t in ids[0].tolist()]
            response["details"] = {"finish_reason": finish, "generated_tokens": len(new_ids),
                                   "seed": seed if do_sample else None, "prefill": prefill, "tokens": tokens}
        return response

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server._connections_lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._connections_lock:
                    server._connections.discard(self.connection)
                super().finish()

            def _send(self, status: int, payload: Any | None) -> None:
                body = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._send(200, None)
                elif self.path == "/info":
                    self._send(200, server.info())
                else:
                    self._send(404, {"error": f"no route {self.path}", "error_type": "not_found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self.path not in ("/generate", "/"):
                    self._send(404, {"error": f"no route {self.path}", "error_type": "not_found"})
                    return
                try:
                    body = json.loads(raw or b"null")
                    if isinstance(body, dict) and body.get("stream"):
                        raise _HTTPError(422, "Input validation error: streaming is not supported by this test "
                                              "server; use /generate_stream on a real TGI")
                    result = server.generate(body)
                except json.JSONDecodeError:
                    self._send(422, {"error": "Input validation error: body is not JSON", "error_type": "validation"})
                    return
                except _HTTPError as exc:
                    self._send(exc.status, {"error": exc.message, "error_type": _ERROR_TYPES.get(exc.status, "error")})
                    return
                except Exception as exc:  # noqa: BLE001 - a generation failure, as TGI reports it
                    self._send(424, {"error": f"Request failed during generation: {exc}", "error_type": "generation"})
                    return
                self._send(200, [result] if self.path == "/" else result)

        return Handler


class _HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
