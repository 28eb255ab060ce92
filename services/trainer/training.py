"""The torch part of the trainer: tokenisation with target-only loss, TRL trainers, progress.

Imported only by the job worker when a job runs (never by the server module, the client or the CLI).

Tokenisation is ours for every method, so the model is trained on exactly the tokens it sees and
produces at inference: the prompt is ``apply_chat_template(messages, add_generation_prompt=True,
tokenize=False)`` tokenised without special tokens (as the student service does), the target is the
completion plus the tokenizer's EOS token, tokenised on its own and appended. Prompt tokens carry
label -100 (SFT) or a zero completion mask (DPO/KTO), so the loss covers the target only.

An example longer than max_length (prompt + longest target) is left out rather than truncated: a
truncated prompt is a context the student never sees at inference, and a truncated target teaches it
to stop mid-action. The number left out is reported in the job's metrics; a job where nothing fits fails.

What differs between methods (the row built from an example, the TRL config and trainer class) is
the method's entry in services.trainer.methods; this module holds what they share.

Training runs through TRL on a peft LoRA adapter:
- SFT: ``trl.SFTTrainer`` on pre-tokenised ``input_ids``/``labels`` (TRL skips its own tokenisation).
- DPO: ``trl.DPOTrainer`` and KTO: ``trl.KTOTrainer`` on pre-tokenised ``prompt_ids`` / ``chosen_ids``
  / ``rejected_ids`` (``completion_ids`` / ``label`` / ``KL_completion_ids`` for KTO). Their public
  API only accepts text, which they re-tokenise as one string (prompt + completion) with special
  tokens; subclasses below hand them our token ids instead. The reference policy is the starting
  policy: the base model (adapter disabled) for a fresh adapter, a frozen copy of the parent adapter
  when continuing (TRL's "ref" adapter).
Mixed precision where the hardware runs it faster: bf16 on GPUs that support it (else fp16) and on CPUs
where bf16 matmuls measure faster than fp32 (`services.models.cpu_prefers_bf16`), fp32 on other CPUs. No gradient checkpointing, no
report_to, no hub, no intermediate checkpoints (the service writes the one checkpoint itself).
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig, PeftModel  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import DPOTrainer, KTOTrainer, SFTTrainer  # noqa: E402

from services.models import load_model_and_tokenizer, pick_device, pick_dtype  # noqa: E402
from services.runtime.numbers import is_finite_number  # noqa: E402
from services.trainer import methods  # noqa: E402
from services.trainer.datasets import Example  # noqa: E402
from services.trainer.methods import IGNORE_INDEX  # noqa: E402
from services.trainer.jobs import HyperParameters  # noqa: E402

log = logging.getLogger("leap.trainer.training")

# A service logs progress through its own stream: no console progress bars, no deprecation noise
# for settings TRL itself defaults (TRL's configs default gradient_checkpointing=True; we pass False).
datasets.disable_progress_bars()
hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)

LOG_EVERY_SECONDS = 30.0  # the server log gets a progress line at most this often (the stream gets every step)
Report = Callable[..., None]

# Metrics that TRL logs per step and that the progress stream forwards (besides loss).
_FORWARDED_METRICS = ("learning_rate", "grad_norm", "mean_token_accuracy", "entropy", "kl")
_FORWARDED_PREFIXES = ("rewards/", "logps/", "logits/")


class TrainingError(RuntimeError):
    """A job that cannot train (e.g. no example fits max_length); the message is for the user."""


@dataclass
class EncodedDataset:
    """Token-level training rows for one method, and what was left out."""

    rows: list[dict]
    examples_total: int
    examples_dropped: int
    longest_tokens: int
    prompt_tokens: int = 0
    target_tokens: int = 0


@dataclass
class TrainedAdapter:
    """A finished (or stopped) training run: the model to save and its metrics."""

    model: object
    tokenizer: object
    metrics: dict[str, float]
    stopped: bool = False
    lora: dict = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Write the adapter (the trained one only, never TRL's frozen "ref" copy) and the tokenizer."""
        self.model.save_pretrained(str(directory), selected_adapters=["default"], safe_serialization=True)
        self.tokenizer.save_pretrained(str(directory))

    def release(self) -> None:
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Tokenisation


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text exactly as the student service builds it at inference (one shared function)."""
    from services.student.prompts import chat_prompt

    return chat_prompt(tokenizer, messages)


class _Encoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token
        self.eos_id = tokenizer.eos_token_id
        if not self.eos or self.eos_id is None:
            raise TrainingError("the tokenizer has no EOS token; targets could not be terminated")
        self._prompts: dict[str, list[int]] = {}

    def prompt(self, messages: list[dict]) -> list[int]:
        text = render_prompt(self.tokenizer, messages)
        ids = self._prompts.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompts[text] = ids
        return ids

    def target(self, text: str) -> list[int]:
        """The target's tokens followed by the EOS token id (appended as an id, never parsed from text)."""
        if text.endswith(self.eos):
            text = text[: -len(self.eos)]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos_id]


def encode_examples(tokenizer, method: str, examples: list[Example], hp: HyperParameters) -> EncodedDataset:
    """Tokenise examples for `method`; examples longer than hp.max_length are left out and counted."""
    spec = methods.get(method)
    encoder = _Encoder(tokenizer)
    rows: list[dict] = []
    dropped = longest = prompt_tokens = target_tokens = 0
    for example in examples:
        prompt = encoder.prompt(example.messages)
        row, targets = spec.encode(prompt, encoder.target, example)
        length = len(prompt) + max(len(t) for t in targets)
        longest = max(longest, length)
        if length > hp.max_length:
            dropped += 1
            continue
        prompt_tokens += len(prompt)
        target_tokens += sum(len(t) for t in targets)
        rows.append(row)
    if not rows:
        raise TrainingError(
            f"none of the {len(examples)} examples fits max_length={hp.max_length} tokens "
            f"(the longest has {longest}); raise max_length or shorten the prompts"
        )
    rows = spec.prepare_rows(rows, hp)
    return EncodedDataset(rows, len(examples), dropped, longest, prompt_tokens, target_tokens)


# --------------------------------------------------------------------------------------------------
# TRL trainers fed with our token ids


class _TargetOnlySFTTrainer(SFTTrainer):
    """SFTTrainer whose loss projects only the target positions through the LM head.

    TRL's SFT loss scores every position of every row through a full-vocabulary LM head in fp32
    (on GPUs with Triton it keeps only labelled positions; on CPU it scores them all) and masks the
    prompt afterwards. A LEAP example is a ~300-token prompt and a ~35-token target, so that head
    was ~40 % of a CPU training step. This loss runs the backbone (LoRA layers included), keeps the
    hidden states of labelled positions only, and applies the head and cross-entropy to those: the
    same loss value, a fraction of the cost. It also keeps TRL's logged metrics (token accuracy,
    entropy, tokens seen).
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # evaluation asking for logits: TRL's own path
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        labels = inputs["labels"][:, 1:]
        with self.accelerator.autocast():
            hidden, skipped = backbone_hidden_states(causal_lm, inputs["input_ids"], inputs.get("attention_mask"),
                                                     inputs["labels"], share_prefix=self._can_share_prefix(causal_lm))
            if model.training and skipped:
                self.shared_prefix_tokens = getattr(self, "shared_prefix_tokens", 0) + (len(labels) - 1) * skipped
            mask = labels[:, skipped:] != IGNORE_INDEX
            logits = causal_lm.get_output_embeddings()(hidden[mask]).float()
        labels = labels[:, skipped:]
        targets = labels[mask]
        count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum") / torch.as_tensor(count).clamp(min=1)

        with torch.no_grad():
            mode = "train" if model.training else "eval"
            store = getattr(self, "_metrics", None)
            valid = int(targets.numel())
            if store is not None and valid:
                log_probs = torch.log_softmax(logits, dim=-1)
                entropy = -(log_probs.exp() * log_probs).sum(-1).mean().item()
                accuracy = (logits.argmax(-1) == targets).float().mean().item()
                store[mode]["entropy"].append(entropy)
                store[mode]["mean_token_accuracy"].append(accuracy)
            if store is not None and mode == "train" and "attention_mask" in inputs and hasattr(self, "_total_train_tokens"):
                self._total_train_tokens += int(inputs["attention_mask"].sum().item())
                store[mode]["num_tokens"] = [self._total_train_tokens]
        return loss

    def _can_share_prefix(self, causal_lm) -> bool:
        """Sharing a prefix's forward pass between rows is exact only without dropout (it would share
        the dropout noise too): no active Dropout module, no attention dropout; and only where every
        layer's cache keeps the whole sequence (a sliding window would drop part of the prefix)."""
        if getattr(self, "_share_prefix", None) is None:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            config = getattr(causal_lm, "config", None)
            try:
                full_attention = all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)
            except Exception:  # noqa: BLE001 - a model whose cache cannot be described: never share
                full_attention = False
            self._share_prefix = full_attention and float(getattr(config, "attention_dropout", 0.0) or 0.0) == 0.0 \
                and not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in causal_lm.modules())
        return self._share_prefix


#: Rows share a prefix's forward pass only past this many tokens (less saves less than it costs).
MIN_SHARED_PREFIX_TOKENS = 16


def shared_prefix_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor) -> int:
    """How many leading tokens every row of a batch has in common, unmasked and before any labelled
    position's predecessor (so every position the loss reads lies after them); 0 for one row."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    common = int(same.long().cumprod(dim=0).sum())
    labelled = labels != IGNORE_INDEX
    if not bool(labelled.any(dim=1).all()):
        return 0
    first_label = int(labelled.long().argmax(dim=1).min())
    return max(0, min(common, first_label - 1))


def backbone_hidden_states(causal_lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                           labels: torch.Tensor, *, share_prefix: bool) -> tuple[torch.Tensor, int]:
    """The backbone's last hidden states at positions `skipped` .. length-2 (those that predict a next
    token), and `skipped`.

    LEAP rows open with the same system message (a third of a household row's tokens). When every row
    of the batch starts with the same `n` tokens, they run once, as one row, and the other rows
    attend to that row's keys and values, broadcast: the same activations and, through the
    broadcast, the same summed gradients as running the prefix in every row, for (rows - 1) x n fewer
    tokens. The positions before `n` predict no labelled token, so the caller never needs them.
    """
    n = shared_prefix_tokens(input_ids, attention_mask, labels) if share_prefix else 0
    backbone = causal_lm.base_model
    if n < MIN_SHARED_PREFIX_TOKENS:
        out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state[:, :-1], 0
    rows, length = input_ids.shape
    prefix = backbone(input_ids=input_ids[:1, :n], use_cache=True).past_key_values
    for layer in prefix.layers:
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    positions = torch.arange(n, length, device=input_ids.device).expand(rows, -1)
    out = backbone(input_ids=input_ids[:, n:], attention_mask=attention_mask, position_ids=positions,
                   past_key_values=prefix, use_cache=True)
    return out.last_hidden_state[:, :-1], n


class _TokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer that accepts rows already holding prompt_ids / chosen_ids / rejected_ids."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


class _TokenizedKTOTrainer(KTOTrainer):
    """KTOTrainer that accepts rows already holding prompt_ids / completion_ids / label / KL_completion_ids."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "prompt_ids" in dataset.column_names:
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)


def training_arguments(method: str, hp: HyperParameters, output_dir: str, device: str, dtype):
    """The TRL config for `method`: LEAP's hyper-parameters with CPU-safe, no-side-effect settings."""
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps if hp.max_steps > 0 else -1,
        lr_scheduler_type=hp.lr_scheduler,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        seed=hp.seed,
        data_seed=hp.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu=device == "cpu",
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        max_length=hp.max_length,
    )
    return methods.get(method).trainer_config(common, hp)


def build_trainer(method: str, model, tokenizer, rows: list[dict], args, peft_config, callbacks=()):
    cls = methods.get(method).trainer_class()
    trainer = cls(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                  peft_config=peft_config, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # with tqdm off, transformers prints every log dict to stdout
    return trainer


# --------------------------------------------------------------------------------------------------
# Progress


class ProgressCallback(TrainerCallback):
    """Reports each logged step (loss, tokens/s, ETA, method metrics) and stops when asked to."""

    def __init__(self, report: Report, should_stop: Callable[[], bool]):
        self.report = report
        self.should_stop = should_stop
        self.stopped = False
        self.started = 0.0
        self.losses: list[float] = []
        self.last_metrics: dict[str, float] = {}
        self.tokens = 0.0
        self.summary: dict[str, float] = {}
        self._logged_at = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()
        self.report(step=0, total_steps=state.max_steps, message="training")

    def _check_stop(self, control):
        if self.should_stop():
            self.stopped = True
            control.should_training_stop = True
            control.should_epoch_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._check_stop(control)

    def on_substep_end(self, args, state, control, **kwargs):
        self._check_stop(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "train_runtime" in logs:  # the end-of-training summary
            self.summary = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        step = state.global_step
        if "loss" in logs:
            self.losses.append(float(logs["loss"]))
        self.tokens = float(logs.get("num_tokens", self.tokens))
        metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and (k in _FORWARDED_METRICS or k.startswith(_FORWARDED_PREFIXES))}
        self.last_metrics = metrics
        remaining = max(state.max_steps - step, 0)
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_SECONDS or remaining == 0:
            self._logged_at = now
            log.info("step %d/%d loss %.4f", step, state.max_steps, self.losses[-1] if self.losses else float("nan"),
                     extra={"tokens_per_second": round(self.tokens / elapsed, 1)})
        self.report(
            step=step,
            total_steps=state.max_steps,
            epoch=float(state.epoch or 0.0),
            loss=self.losses[-1] if self.losses else 0.0,
            tokens_per_second=self.tokens / elapsed,
            eta_seconds=(elapsed / step * remaining) if step else 0.0,
            metrics=metrics,
            message="stopping: cancellation requested" if self.stopped else "training",
        )


# --------------------------------------------------------------------------------------------------
# One training run


def load_policy(base_model: str, device: str, parent_path: str | None):
    """(model, tokenizer). The parent adapter, when given, is loaded trainable on the base model."""
    model, tokenizer, _spec = load_model_and_tokenizer(base_model, device=device, padding_side="right")
    if parent_path:
        model = PeftModel.from_pretrained(model, parent_path, is_trainable=True)
    return model, tokenizer


def decoder_layer_count(model) -> int | None:
    """How many decoder layers `model` has (its config's num_hidden_layers), or None when it does not say."""
    config = getattr(model, "config", None)
    count = getattr(getattr(config, "get_text_config", lambda: config)(), "num_hidden_layers", None)
    return count if isinstance(count, int) and count > 0 else None


def lora_layers(hp: HyperParameters, layer_count: int | None) -> list[int] | None:
    """The decoder layers that get LoRA: the last `hp.lora_last_layers` (None: every layer).

    Backpropagation stops at the lowest layer holding a trainable weight, so fewer, higher layers
    make each step cheaper. A count past the model's layers is a TrainingError naming both."""
    last = hp.lora_last_layers
    if not last:
        return None
    if layer_count is None:
        raise TrainingError(f"lora_last_layers={last} needs the base model's layer count, and its config "
                            "does not give num_hidden_layers; leave lora_last_layers at 0 (every layer)")
    if last > layer_count:
        raise TrainingError(f"lora_last_layers={last}, but the base model has {layer_count} decoder layers; "
                            f"use at most {layer_count} (or 0 for every layer)")
    return list(range(layer_count - last, layer_count))


def lora_config(hp: HyperParameters, layer_count: int | None = None) -> LoraConfig:
    return LoraConfig(r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                      target_modules=list(hp.target_modules), bias="none", task_type="CAUSAL_LM",
                      layers_to_transform=lora_layers(hp, layer_count))


def adapted_layers(peft_config) -> list[int] | None:
    """The decoder layers an adapter's LoraConfig puts LoRA on, in order (None: every layer)."""
    layers = getattr(peft_config, "layers_to_transform", None)
    if layers is None:
        return None
    return sorted({layers} if isinstance(layers, int) else set(layers))


def last_layers_of(layers: list[int] | None, layer_count: int | None) -> int | None:
    """`lora_last_layers` for adapted `layers`: 0 for every layer, N for the last N, None for any other set
    (an adapter made elsewhere; the manifest then lists its layers)."""
    if layers is None:
        return 0
    if layer_count is not None and layers == list(range(layer_count - len(layers), layer_count)):
        return len(layers)
    return None


def backward_layer_share(layers: list[int] | None, layer_count: int | None) -> float:
    """The share of decoder layers that backpropagation runs through: from the lowest adapted one up."""
    if not layers or not layer_count:
        return 1.0
    return (layer_count - min(layers)) / layer_count


def train(*, method: str, base_model: str, hp: HyperParameters, examples: list[Example], device: str,
          work_dir: str, parent_path: str | None = None, report: Report = lambda **_: None,
          should_stop: Callable[[], bool] = lambda: False) -> TrainedAdapter:
    """Train a LoRA adapter with `method` on `examples`; returns it unsaved (or stopped=True)."""
    device = pick_device(device)
    dtype = pick_dtype(device)
    report(message=f"loading base model {base_model} on {device}")
    model, tokenizer = load_policy(base_model, device, parent_path)
    if should_stop():
        return TrainedAdapter(model, tokenizer, {}, stopped=True)

    report(message=f"tokenising {len(examples)} examples")
    encoded = encode_examples(tokenizer, method, examples, hp)
    if encoded.examples_dropped:
        log.warning("examples longer than max_length left out",
                    extra={"dropped": encoded.examples_dropped, "max_length": hp.max_length})

    layer_count = decoder_layer_count(model)
    if parent_path:
        peft_config = None
        parent_lora = model.peft_config["default"]
        lora = {"r": parent_lora.r, "alpha": parent_lora.lora_alpha, "dropout": parent_lora.lora_dropout,
                "target_modules": sorted(parent_lora.target_modules or []),
                "layers": adapted_layers(parent_lora), "from_parent": True}
    else:
        peft_config = lora_config(hp, layer_count)
        lora = {"r": hp.lora_r, "alpha": hp.lora_alpha, "dropout": hp.lora_dropout,
                "target_modules": list(hp.target_modules), "layers": adapted_layers(peft_config),
                "from_parent": False}

    lora["last_layers"] = last_layers_of(lora["layers"], layer_count)
    progress = ProgressCallback(report, should_stop)
    args = training_arguments(method, hp, work_dir, device, dtype)
    trainer = build_trainer(method, model, tokenizer, encoded.rows, args, peft_config, [progress])
    if should_stop():
        return TrainedAdapter(trainer.model, tokenizer, {}, stopped=True)
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    trained = trainer.model
    shared_prefix_tokens = float(getattr(trainer, "shared_prefix_tokens", 0))
    del trainer
    gc.collect()

    metrics = dict(progress.last_metrics)
    metrics.update({
        "train_loss": progress.summary.get("train_loss", float("nan")),
        "loss_first": progress.losses[0] if progress.losses else float("nan"),
        "loss_last": progress.losses[-1] if progress.losses else float("nan"),
        "train_seconds": seconds,
        "train_tokens": progress.tokens,
        "shared_prefix_tokens": shared_prefix_tokens,  # of train_tokens, run once for several rows
        # The share of decoder layers that backpropagation runs through (LoRA on the last N only: N / all).
        "backward_layer_share": backward_layer_share(lora["layers"], layer_count),
        "tokens_per_second": progress.tokens / seconds if seconds > 0 else 0.0,
        "steps": float(len(progress.losses)),
        "examples": float(len(encoded.rows)),
        "examples_dropped_too_long": float(encoded.examples_dropped),
        "prompt_tokens": float(encoded.prompt_tokens),
        "target_tokens": float(encoded.target_tokens),
    })
    metrics = {k: v for k, v in metrics.items() if isinstance(v, float) and is_finite_number(v)}
    return TrainedAdapter(trained, tokenizer, metrics, stopped=progress.stopped, lora=lora)
