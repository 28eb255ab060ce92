"""A student backend without a neural network, for the deploy tests of the real StudentService.

Everything around the model is the real code: the gRPC server and health (services.student.server),
the service's validation, admission and adapter registry (services.student.service, adapters), the
desired-adapter follower, and the checkpoint verification (services.student.checkpoints reads and
checks every adapter folder, manifest and safetensors header). Only generation is scripted: the
answer is the first candidate, with a reason naming the adapter version that produced it, so a test
can see which version served each step. Loading "the model" can be held on an event, as a slow
model load would hold a real replica.

`write_checkpoint` writes an adapter folder the way the trainer does (peft config, safetensors
weights, manifest.json with every file's sha256), with tiny tensors.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

from services.student.backends.base import Backend, PreparedAdapter
from services.student.checkpoints import check_base_model, read_checkpoint
from services.student.prompts import format_target
from services.student.types import CheckpointSpec, EncodedPrompt, Generation, GenerationRequest, ModelDescription

BASE_MODEL = "smollm2"


class ScriptedBackend(Backend):
    kind = "scripted"

    def __init__(self, *, checkpoint_root: str | None = None, start_gate: threading.Event | None = None,
                 step_delay_s: float = 0.0):
        self.checkpoint_root = checkpoint_root
        self.start_gate = start_gate
        self.step_delay_s = step_delay_s  # a generation's duration (episodes overlap a restart)
        self._ready = threading.Event()
        self.lock = threading.Lock()
        self.generated: Counter[str] = Counter()  # version -> rows generated
        self.installed: dict[str, str] = {}  # handle -> adapter folder

    def start(self) -> None:
        if self.start_gate is not None:
            self.start_gate.wait()
        self._ready.set()

    def close(self) -> None:
        self._ready.clear()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def encode_prompt(self, messages: list[dict[str, str]]) -> EncodedPrompt:
        text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return EncodedPrompt(messages=messages, text=text, ids=None, token_count=len(text.split()))

    def submit(self, requests: list[GenerationRequest]) -> list[Future[Generation]]:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        futures = []
        for request in requests:
            action = request.candidates[0] if request.candidates else "look"
            text = format_target(f"Adapter {request.version} chose the first candidate.", action)
            with self.lock:
                self.generated[request.version] += 1
            future: Future[Generation] = Future()
            future.set_result(Generation(text=text, token_ids=[1, 2, 3], prompt_tokens=request.prompt.token_count,
                                         batch_size=len(requests), finish_reason="action_line"))
            futures.append(future)
        return futures

    def prepare_adapter(self, spec: CheckpointSpec) -> PreparedAdapter:
        files = read_checkpoint(spec, self.checkpoint_root)
        check_base_model(files, [BASE_MODEL])
        return PreparedAdapter(spec, files.digest, payload=str(files.directory))

    def install_adapter(self, prepared: PreparedAdapter, handle: str) -> str:
        with self.lock:
            self.installed[handle] = str(prepared.payload)
        return handle

    def remove_adapter(self, handle: str) -> None:
        with self.lock:
            self.installed.pop(handle, None)

    def describe(self) -> ModelDescription:
        return ModelDescription(base_model=BASE_MODEL, backend=self.kind, device="cpu", dtype="none",
                                supports_hot_swap=True, supports_per_request_adapter=True, max_batch_size=8)


def _safetensors(tensors: dict[str, list[float]]) -> bytes:
    header, payload, offset = {}, b"", 0
    for name, values in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)], "data_offsets": [offset, offset + len(data)]}
        payload += data
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + payload


def write_checkpoint(directory: Path, *, version: str, seed: float = 0.0) -> str:
    """An adapter folder as the trainer writes it; returns the sha256 of its manifest.json."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "task_type": "CAUSAL_LM",
              "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": BASE_MODEL}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    weights = {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": [seed, 1.0, 2.0, 3.0],
               "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": [4.0, 5.0, 6.0, seed]}
    (directory / "adapter_model.safetensors").write_bytes(_safetensors(weights))
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())
             if p.is_file() and p.name != "manifest.json"}
    manifest = json.dumps({"files": files, "base_model": BASE_MODEL, "version": version}, sort_keys=True)
    (directory / "manifest.json").write_text(manifest)
    return hashlib.sha256(manifest.encode()).hexdigest()
