"""LoRA adapters inside the local model: peft injection, per-row adapters and merged uniform batches.

Rows of different adapter versions share a forward pass through peft's per-row `adapter_names`
("mixed"). A pass whose rows all use the base model runs with peft's layers disabled.

Merged adapter
    peft's unmerged LoRA path adds two thin matmuls per targeted Linear (measured on a CPU in bf16, r=16 on
    all 7 projections: +20-35 % per decode step at ~50 rows, +45-65 % at 4 rows, +25-40 % on prefill). When
    every row of a forward pass uses one adapter (evaluation, rollouts), its delta scaling * B @ A is added
    to the base weights instead (in fp32, then cast) and peft's layers are disabled, so the pass runs at
    base-model speed. Leaving that state copies back a copy of the weights as loaded, kept before their
    first merge: subtracting the delta again would not restore bf16 weights bit for bit, and the error
    would grow with every swap. Base rows and mixed batches never see merged weights. Merged and unmerged
    compute the same function up to rounding, so a per-adapter system-prompt cache serves both.

Injection runs one probe forward pass on the new adapter; scores that are not finite refuse it, and a
failed injection is rolled back. Every method here must run on the thread that owns the model.
"""

from __future__ import annotations

import logging
import warnings

import torch

from services.runtime.errors import FailedPrecondition

log = logging.getLogger("leap.student.local")

#: peft's name for "no adapter" in per-row adapter_names.
BASE_ROW = "__base__"


class LoraAdapters:
    """The peft model around a base model, and the state its LoRA layers and base weights are in."""

    def __init__(self, model: torch.nn.Module, *, merge_uniform: bool = True):
        self.model = model
        #: When every row of a pass uses one mergeable adapter, run it merged into the base weights.
        self.merge_uniform = merge_uniform
        self.peft = None  # peft.PeftModel once the first adapter is installed
        self.mode: str | None = None  # what the peft layers are set to: handle, "disabled", "mixed" or None
        self.merged: str | None = None  # the adapter whose delta the base weights carry (layers then disabled)
        self.mergeable: set[str] = set()  # adapters that are plain LoRA on Linear layers
        #: Base Linear -> its weight as loaded, kept before its first merge.
        self._pristine: dict[torch.nn.Linear, torch.Tensor] = {}

    @property
    def count(self) -> int:
        """Adapters installed."""
        return len(self.peft.peft_config) if self.peft is not None else 0

    def prepare_forward(self, handles: list[str | None], inputs: dict) -> torch.nn.Module:
        """Set the layers for a pass whose rows use `handles` (None: base); returns the module to call.

        A mixed pass gets `adapter_names` added to `inputs`.
        """
        if self.peft is None:
            return self.model
        if len(set(handles)) == 1:
            handle = handles[0]
            if not handle:  # the base model
                self.set_mode("disabled")
            elif self.merge_uniform and handle in self.mergeable:
                self.set_mode("disabled", merged=handle)
            else:
                self.set_mode(handle)
        else:
            self.set_mode("mixed")
            inputs["adapter_names"] = [h or BASE_ROW for h in handles]
        return self.peft

    def set_mode(self, mode: str, merged: str | None = None) -> None:
        """Put peft's layers and the base weights in the state a forward pass needs.

        `mode`: "disabled" (every LoRA layer calls only its base layer), "mixed" (rows pass adapter_names) or
        a handle (peft's unmerged path for that adapter). `merged`, with "disabled": the adapter whose delta
        the base weights must carry (None: the weights as loaded).
        """
        if merged != self.merged:
            self.restore_base_weights()
            if merged is not None:
                self._merge_into_base(merged)
        if mode == self.mode:
            return
        if mode == "disabled":
            self.peft.base_model.disable_adapter_layers()
        else:
            if self.mode in ("disabled", None):
                self.peft.base_model.enable_adapter_layers()
            if mode != "mixed":
                self.peft.base_model.set_adapter(mode, inference_mode=True)
        self.mode = mode

    def _lora_layers(self, handle: str) -> list:
        """peft's LoRA layers that hold `handle`."""
        from peft.tuners.lora import LoraLayer

        return [m for m in self.peft.modules() if isinstance(m, LoraLayer) and handle in m.lora_A]

    def _merge_into_base(self, handle: str) -> None:
        """Set each targeted base weight to its weight as loaded + scaling * B @ A, summed in fp32.

        With peft's layers disabled, a LoRA Linear calls only its base layer (peft 0.21 `Linear.forward`:
        `disable_adapters` and no peft-merged adapters), so the pass computes base + delta.
        """
        self.merged = handle  # before any write, so that the restore below undoes a partial merge
        try:
            for layer in self._lora_layers(handle):
                base = layer.get_base_layer()
                pristine = self._pristine.get(base)
                if pristine is None:  # a weight is only written after this copy: it is the weight as loaded
                    pristine = self._pristine[base] = base.weight.detach().clone()
                a, b = layer.lora_A[handle].weight.float(), layer.lora_B[handle].weight.float()
                left, right = (a.T, b.T) if layer.fan_in_fan_out else (b, a)  # (B @ A).T for a transposed weight
                base.weight.copy_(torch.addmm(pristine.float(), left, right, alpha=layer.scaling[handle]))
        except BaseException:  # a half-merged model must not serve the next pass for this handle
            self.restore_base_weights()
            raise

    def restore_base_weights(self) -> None:
        """Copy the weights as loaded back over a merged adapter (bit-exact)."""
        if self.merged is None:
            return
        for base, pristine in self._pristine.items():
            base.weight.copy_(pristine)
        self.merged = None

    def _can_merge(self, handle: str, config) -> bool:
        """Plain LoRA on Linear layers: DoRA and other variants, LoRA biases and fully trained modules change
        more than a weight delta, so such an adapter stays on peft's unmerged path."""
        from peft.tuners.lora import Linear as LoraLinear

        if getattr(config, "modules_to_save", None) or getattr(config, "trainable_token_indices", None):
            return False
        layers = self._lora_layers(handle)
        return bool(layers) and all(
            type(layer) is LoraLinear and isinstance(layer.get_base_layer(), torch.nn.Linear)
            and handle not in layer.lora_variant and not layer.lora_bias.get(handle, False)
            for layer in layers)

    # -- installing and removing -----------------------------------------------------------------

    def inject(self, handle: str, config, state: dict, where: str, probe_ids: torch.Tensor) -> None:
        """Add adapter `handle` (peft `config`, weights `state`) and probe it on `probe_ids` [1, n].

        FailedPrecondition (and nothing changed) when the weights do not match the config, the probe's
        scores are not finite, or peft fails.
        """
        from peft import PeftModel, set_peft_model_state_dict

        created = False
        # peft may read base weights while it adds layers (PiSSA-style inits), and a rollback's unload hands the
        # bare model back: both need the weights as loaded.
        self.restore_base_weights()
        try:
            if self.peft is None:
                with warnings.catch_warnings():  # transformers deprecation noise triggered inside peft
                    warnings.simplefilter("ignore", FutureWarning)
                    self.peft = PeftModel(self.model, config, adapter_name=handle, autocast_adapter_dtype=False)
                created = True
                self.mode = handle
            else:
                self.peft.add_adapter(handle, config, autocast_adapter_dtype=False)
            result = set_peft_model_state_dict(self.peft, state, adapter_name=handle)
            unexpected = [k for k in result.unexpected_keys]
            missing = [k for k in result.missing_keys if f".{handle}." in k or k.endswith(f".{handle}")]
            if unexpected or missing:
                raise FailedPrecondition(
                    f"{where}: the adapter weights do not match its config "
                    f"(unexpected: {unexpected[:3]}, missing: {missing[:3]})")
            self.peft.eval()
            for name, param in self.peft.named_parameters():
                if f".{handle}." in name:
                    param.requires_grad_(False)
            self._probe(handle, where, probe_ids)
            # A new PeftModel starts with `handle` active; after add_adapter the layers' state is
            # re-asserted before the next uniform forward.
            self.mode = handle if created else None
            if self._can_merge(handle, config):
                self.mergeable.add(handle)
        except FailedPrecondition:
            self._rollback(handle, created)
            raise
        except Exception as exc:  # noqa: BLE001 - refuse the adapter, keep serving the current one
            self._rollback(handle, created)
            raise FailedPrecondition(f"{where}: the adapter could not be loaded: {type(exc).__name__}: {exc}") from exc

    def _probe(self, handle: str, where: str, probe_ids: torch.Tensor) -> None:
        """One forward pass on the fresh adapter: scores that are not finite refuse it (FailedPrecondition).

        Finite weights can still overflow together (large A and B in a low-precision model); this pass
        catches that before any request runs on the adapter.
        """
        self.set_mode(handle)
        logits = self.peft(input_ids=probe_ids, use_cache=False).logits
        if not bool(torch.isfinite(logits).all()):
            raise FailedPrecondition(f"{where}: the adapter's scores on a probe prompt are not finite (NaN or inf); "
                                     "its weights are broken and it is not served")

    def _rollback(self, handle: str, created: bool) -> None:
        self.mergeable.discard(handle)
        try:
            if created:
                self.peft.unload()
                self.peft = None
                self.mode = None
            elif handle in self.peft.peft_config:
                self._delete(handle)
        except Exception:  # noqa: BLE001
            log.exception("rollback of a failed adapter load failed", extra={"handle": handle})

    def _delete(self, handle: str) -> None:
        """Delete an adapter from the peft model and leave peft's notion of the active adapter valid.

        peft 0.21 picks the new active adapter per layer; when the last layer it visits held only the
        deleted adapter, the tuner ends with none active and PeftModel.active_adapter keeps naming the
        deleted one, so the next forward fails with a KeyError. A survivor is made active instead; the
        next forward re-asserts the mode it needs (mode None).
        """
        self.peft.delete_adapter(handle)
        if self.peft.active_adapter not in self.peft.peft_config:
            self.peft.set_adapter(next(iter(self.peft.peft_config)), inference_mode=True)
        self.mode = None

    def remove(self, handle: str) -> bool:
        """Delete adapter `handle` unless it is unknown or the last one (peft keeps at least one); True if deleted."""
        if self.peft is None or handle not in self.peft.peft_config or len(self.peft.peft_config) <= 1:
            return False
        if handle == self.merged:
            self.restore_base_weights()
        self._delete(handle)
        self.mergeable.discard(handle)
        self.mode = None
        return True
