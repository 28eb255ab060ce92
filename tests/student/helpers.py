"""Test helpers: free ports; train a tiny LoRA adapter with peft directly, and write checkpoint folders the way
the trainer does (adapter files + manifest.json with sha256 of every file)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from services.student.prompts import chat_prompt, format_target, render_messages

FIXED_REASON = "The fridge is the best place to look first."
FIXED_ACTION = "open fridge 1"
CANDIDATES = ["go to cabinet 1", "go to countertop 1", "go to fridge 1", "open fridge 1", "look", "inventory"]

# Agent states the adapter is trained on (and that the tests ask about).
STATES = [
    dict(env="household", goal="put a clean apple in fridge.", history=[("You are in the middle of a room.", "go to fridge 1")],
         observation="You arrive at fridge 1. The fridge 1 is closed.", candidates=CANDIDATES),
    dict(env="household", goal="find a mug and put it on the countertop.", history=[],
         observation="You are in the middle of a room. You see a cabinet 1, a countertop 1 and a fridge 1.",
         candidates=CANDIDATES),
    dict(env="household", goal="cool some egg and put it in the microwave.", history=[("Nothing happens.", "look")],
         observation="You are facing the countertop 1. Next to it, you see nothing.", candidates=CANDIDATES),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(directory: Path, *, version: str, base_model: str = "smollm2", **extra) -> str:
    """Write manifest.json listing every file's sha256; returns the manifest's own sha256."""
    files = {p.relative_to(directory).as_posix(): sha256_file(p)
             for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    manifest = {"files": files, "base_model": base_model, "version": version, **extra}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return sha256_file(directory / "manifest.json")


class SharedModel:
    """SmolLM2 (CPU, float32) loaded once, lent to one user at a time.

    `borrow()` yields (model, tokenizer, spec): the shared ones when nobody holds them, else a fresh load
    (two backends alive at once need two models). When the shared model comes back, LoRA layers its user
    added are removed and it is reset to the model as loaded: weights copied back, every parameter
    requiring grad, eval mode, tokenizer padding on the left. Its user must have stopped every thread that
    runs it.
    """

    DEVICE, DTYPE = "cpu", "float32"

    def __init__(self):
        from services.models import load_model_and_tokenizer

        self.model, self.tokenizer, self.spec = load_model_and_tokenizer("smollm2", device=self.DEVICE,
                                                                         dtype=self.DTYPE)
        self._weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._lock = threading.Lock()
        self._lent = False

    @contextmanager
    def borrow(self, padding_side: str = "left") -> Iterator[tuple]:
        from services.models import load_model_and_tokenizer

        with self._lock:
            shared, self._lent = not self._lent, True
        if not shared:
            yield load_model_and_tokenizer("smollm2", device=self.DEVICE, dtype=self.DTYPE, padding_side=padding_side)
            return
        self.tokenizer.padding_side = padding_side
        try:
            yield self.model, self.tokenizer, self.spec
        finally:
            self._reset()
            with self._lock:
                self._lent = False

    def loader(self, loaded: tuple) -> Callable[..., tuple]:
        """A `LocalBackend` loader that serves `loaded` when the backend asks for this model's settings."""
        from services.models import is_default_alias, load_model_and_tokenizer, pick_device

        def load(name: str, *, device: str, dtype: str, padding_side: str) -> tuple:
            if is_default_alias(name) and pick_device(device) == self.DEVICE and dtype == self.DTYPE:
                loaded[1].padding_side = padding_side
                return loaded
            return load_model_and_tokenizer(name, device=device, dtype=dtype, padding_side=padding_side)

        return load

    def _reset(self) -> None:
        import torch
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child = name.rpartition(".")
                setattr(self.model.get_submodule(parent_name), child, module.get_base_layer())
        if hasattr(self.model, "peft_config"):  # what peft's own unload removes too
            del self.model.peft_config
        with torch.no_grad():
            self.model.load_state_dict(self._weights, strict=True)
        for param in self.model.parameters():
            param.requires_grad_(True)
        self.model.eval()
        self.tokenizer.padding_side = "left"


def train_fixed_answer_adapter(out_dir: Path, shared: SharedModel, *, steps: int = 8, rank: int = 8,
                               seed: int = 0) -> Path:
    """LoRA on the q/v projections of the last layers, trained to answer FIXED_REASON / FIXED_ACTION to
    every state in STATES (loss on the target only, prompts built exactly as the server builds them).

    Only the last layers carry LoRA so that backward stops there: a few seconds of training on CPU.
    """
    import torch

    torch.manual_seed(seed)
    with shared.borrow(padding_side="right") as (model, tokenizer, _):
        _train(model, tokenizer, out_dir, steps=steps, rank=rank)
    return out_dir


def _train(model, tokenizer, out_dir: Path, *, steps: int, rank: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model.train()
    layers = model.config.num_hidden_layers
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                        layers_to_transform=list(range(layers - 6, layers)), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # a transformers deprecation warning raised inside peft
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    target = format_target(FIXED_REASON, FIXED_ACTION) + tokenizer.eos_token
    rows = []
    for state in STATES:
        prompt = chat_prompt(tokenizer, render_messages(**state))
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        rows.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(lab)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss = peft_model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def copy_checkpoint(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest
