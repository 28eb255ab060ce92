"""Runs one job end to end: datasets -> training -> checkpoint. Called by the JobRunner's worker thread.

The datasets are read once, from the same bytes that are hashed: a file that changed since StartJob
(its sha256 differs from the one recorded then) fails the job instead of training on other data than
the manifest names. The parent adapter's files are checked against its manifest before loading.
"""

from __future__ import annotations

from services.runtime.errors import FailedPrecondition, NotFound
from services.runtime.files import sha256_file
from services.trainer import checkpoints
from services.trainer.datasets import DEFAULT_LIMITS, DatasetError, DatasetLimits, Example, read_dataset
from services.trainer.jobs import JobSpec
from services.trainer.service import JobCancelled, JobContext, JobOutcome


def load_examples(spec: JobSpec, limits: DatasetLimits = DEFAULT_LIMITS) -> list[Example]:
    examples: list[Example] = []
    for ref in spec.datasets:
        try:
            parsed = read_dataset(ref.uri, spec.method, ref.format, limits=limits)
            digest = parsed.sha256
        except FileNotFoundError as exc:
            raise NotFound(f"dataset {ref.uri} was removed after the job was submitted") from exc
        except DatasetError:
            digest = sha256_file(ref.uri)
            if digest == ref.sha256:
                raise
        if digest != ref.sha256:
            raise FailedPrecondition(f"dataset {ref.uri} changed after the job was submitted "
                                     f"(sha256 {ref.sha256} -> {digest}); resubmit to train on the new content")
        examples.extend(parsed.examples)
    return examples


def execute_job(context: JobContext) -> JobOutcome:
    spec = context.spec
    context.report(message="reading datasets")
    examples = load_examples(spec, context.dataset_limits)

    parent_path = None
    if spec.parent is not None:
        manifest = checkpoints.check_parent(spec.parent)
        if manifest is not None:
            checkpoints.verify_files(spec.parent.uri, manifest)
        parent_path = spec.parent.uri
    context.check_cancelled()

    from services.trainer import training  # torch, transformers, peft, trl: only here

    context.work_dir.mkdir(parents=True, exist_ok=True)
    adapter = training.train(
        method=spec.method, base_model=spec.base_model, hp=spec.hyper_parameters, examples=examples,
        device=context.device, work_dir=str(context.work_dir), parent_path=parent_path,
        report=context.report, should_stop=context.cancelled,
    )
    try:
        if adapter.stopped or context.cancelled():
            raise JobCancelled()
        context.report(message="writing checkpoint")
        hyper = spec.hyper_parameters.to_dict()
        if adapter.lora.get("from_parent"):
            hyper.update(lora_r=adapter.lora["r"], lora_alpha=adapter.lora["alpha"],
                         lora_dropout=adapter.lora["dropout"], target_modules=adapter.lora["target_modules"],
                         lora_from_parent=True)
        if adapter.lora.get("last_layers") is not None:
            hyper["lora_last_layers"] = adapter.lora["last_layers"]
        elif adapter.lora.get("layers"):  # a parent made elsewhere, with LoRA on some other set of layers
            hyper.update(lora_last_layers=0, lora_layers=adapter.lora["layers"])
        manifest = {
            "parent": spec.parent.to_dict() if spec.parent else None,
            "base_model": spec.base_model,
            "method": spec.method,
            "dataset_sha256": {ref.uri: ref.sha256 for ref in spec.datasets},
            "hyper_parameters": hyper,
            "metrics": adapter.metrics,
            "job_id": context.job_id,
        }
        ref = checkpoints.write_checkpoint(spec.run_dir, spec.output_name, save=adapter.save, manifest=manifest)
    finally:
        adapter.release()
    return JobOutcome(checkpoint=ref, metrics=adapter.metrics)
