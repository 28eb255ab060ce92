"""The extension-point tables: training methods, teacher backends, experts, manifests, finite numbers."""

from __future__ import annotations

import argparse
import json

import pytest

from leap.v1 import environment_pb2, trainer_pb2
from orchestrator.config import RunConfig
from services.runtime import experts
from services.runtime import manifest as manifest_files
from services.runtime.errors import FailedPrecondition, InvalidArgument
from services.runtime.numbers import finite_float, is_finite_number
from services.teacher import backends as teacher_backends
from services.trainer import methods
from services.trainer.datasets import DatasetError, validate_row
from services.trainer.jobs import HyperParameters
from services.trainer.methods import RowReader, TrainingMethod

MESSAGES = [{"role": "user", "content": "where is the apple?"}]


# -- training methods ------------------------------------------------------------------------------

def test_every_training_method_round_trips_name_and_enum():
    assert methods.names() == ("sft", "dpo", "kto")
    numbers = set()
    for method in methods.all_methods():
        assert methods.from_proto(method.proto) is method
        assert methods.to_proto(method.name) == method.proto
        assert trainer_pb2.TrainingMethod.Name(method.proto) == f"TRAINING_METHOD_{method.name.upper()}"
        numbers.add(method.proto)
    assert len(numbers) == len(methods.names())


def test_unknown_training_method_names_the_known_ones():
    with pytest.raises(InvalidArgument, match="unknown training method 'orpo'; valid: sft, dpo, kto"):
        methods.get("orpo")
    with pytest.raises(InvalidArgument, match="valid: sft, dpo, kto"):
        methods.from_proto(99)
    with pytest.raises(ValueError, match="trainer.method must be one of sft, dpo, kto"):
        config = RunConfig()
        config.trainer.method = "orpo"
        config.validate()


@pytest.fixture
def toy_method():
    """A method registered for one test: imitate the `answer` field."""

    def examples(reader: RowReader):
        from services.trainer.datasets import Example

        return [Example(reader.messages, reader.where, completion=reader.text("answer"), meta=reader.meta)]

    toy = TrainingMethod(
        name="toy", proto=99, title="TOY", default_learning_rate=1e-4, examples=examples,
        encode=lambda prompt, target, example: ({"input_ids": prompt}, (target(example.completion),)),
        trainer_config=lambda common, hp: common, trainer_class=lambda: object,
        correction_rows=lambda messages, corrected, original, meta: [
            {"messages": messages, "answer": corrected, "meta": meta}],
        hyper_parameter_problems=lambda hp: ["TOY needs epochs <= 2"] if hp.epochs > 2 else [],
    )
    methods.register(toy)
    yield toy
    methods.unregister("toy")


def test_a_registered_method_is_seen_by_every_site(toy_method):
    assert "toy" in methods.names() and methods.from_proto(99) is toy_method
    # The trainer's dataset schema check.
    [example] = validate_row({"messages": MESSAGES, "answer": "go to fridge 1"}, "toy", "x:1")
    assert example.completion == "go to fridge 1"
    with pytest.raises(DatasetError, match="x:1: 'answer' must be a non-empty string"):
        validate_row({"messages": MESSAGES}, "toy", "x:1")
    # Hyper-parameter defaults and the method's own checks.
    assert HyperParameters().resolve("toy").learning_rate == pytest.approx(1e-4)
    with pytest.raises(InvalidArgument, match="TOY needs epochs <= 2"):
        HyperParameters(epochs=3).resolve("toy")
    # The orchestrator's config validation and its correction rows.
    config = RunConfig()
    config.trainer.method = "toy"
    config.validate()
    from leap.v1 import common_pb2, teacher_pb2
    from orchestrator.datasets import correction_rows

    trajectory = common_pb2.Trajectory(goal="put an apple in the fridge", steps=[
        common_pb2.Step(observation="You are in a kitchen.", candidates=["go to fridge 1", "look"], action="look")])
    correction = teacher_pb2.Correction(ok=True, steps=[teacher_pb2.CorrectedStep(
        index=0, action="go to fridge 1", reason="apples are kept cold", is_corrected=True)])
    [row] = correction_rows("household", [(trajectory, correction)], 4, "toy", keep_unchanged=True)
    assert "go to fridge 1" in row["answer"] and row["messages"] and row["meta"]["source"] == "correction"


def test_the_trainer_service_accepts_a_registered_method(toy_method, tmp_path):
    from services.trainer.jobs import DatasetRef, JobRequest
    from services.trainer.server import create_service

    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "toy.jsonl").write_text(json.dumps({"messages": MESSAGES, "answer": "open fridge 1"}) + "\n")
    service = create_service(tmp_path / "state", tmp_path / "runs", execute=lambda context: None)
    try:
        spec = service.resolve(JobRequest(method="TOY", datasets=[DatasetRef("toy.jsonl")]))
        assert spec.method == "toy" and spec.hyper_parameters.learning_rate == pytest.approx(1e-4)
        with pytest.raises(InvalidArgument, match="valid: sft, dpo, kto, toy"):
            service.resolve(JobRequest(method="orpo", datasets=[DatasetRef("toy.jsonl")]))
    finally:
        service.runner.shutdown(timeout=5)


# -- teacher backends ------------------------------------------------------------------------------

def test_teacher_backends_are_registered_and_unknown_names_listed():
    assert teacher_backends.available() == ["llm", "oracle"]
    assert teacher_backends.DEFAULT_BACKEND == RunConfig().teacher.backend
    with pytest.raises(teacher_backends.UnknownBackend, match="unknown teacher backend 'gpt'; valid: llm, oracle"):
        teacher_backends.spec("gpt")


def test_the_launcher_asks_the_backend_for_its_flags():
    teacher = RunConfig().teacher
    teacher.llm_endpoint, teacher.llm_model = "http://h:8080", "m"
    assert teacher_backends.spec("oracle").launch_args(teacher) == []
    assert teacher_backends.spec("llm").launch_args(teacher) == ["--llm-endpoint", "http://h:8080", "--llm-model", "m"]


def test_a_registered_teacher_backend_gets_its_flags_and_is_built(monkeypatch):
    from services.teacher.backends.base import BackendSpec
    from services.teacher.config import TeacherConfig, add_teacher_arguments

    class Toy:
        name, model = "toy", "toy-model"

        def __init__(self, greeting):
            self.greeting = greeting

    def add_arguments(parser):
        parser.add_argument_group("toy backend").add_argument("--toy-greeting", default="hello")

    teacher_backends.register(BackendSpec(name="toy", help="a test backend", create=lambda options, config: Toy(options),
                                          add_arguments=add_arguments, from_args=lambda args: args.toy_greeting))
    monkeypatch.delenv("LEAP_BACKEND", raising=False)
    try:
        parser = argparse.ArgumentParser()
        add_teacher_arguments(parser)
        config = TeacherConfig.from_args(parser.parse_args(["--backend", "toy", "--toy-greeting", "hi"]))
        assert config.backend_options == "hi"
        backend = teacher_backends.create(config.backend, config.backend_options, config)
        assert isinstance(backend, Toy) and backend.greeting == "hi"
    finally:
        teacher_backends.unregister("toy")


# -- experts and levels ----------------------------------------------------------------------------

def test_expert_names_round_trip():
    for name, kind in experts.EXPERT_KINDS.items():
        assert experts.expert_name(kind) == name and experts.expert_kind(name) == kind
    assert experts.expert_name(environment_pb2.EXPERT_KIND_UNSPECIFIED) == ""
    assert experts.expert_kinds(["planner", "nobody", "searcher"]) == [environment_pb2.EXPERT_KIND_PLANNER,
                                                                      environment_pb2.EXPERT_KIND_SEARCHER]
    from services.environment import convert
    from services.teacher import levels

    assert convert.expert_kinds is experts.expert_kinds and levels.LEVELS == experts.REALIZABILITY_LEVELS
    assert RunConfig().teacher.realizability_level == levels.DEFAULT_LEVEL


# -- manifests -------------------------------------------------------------------------------------

def _checkpoint(directory):
    directory.mkdir()
    (directory / "adapter_config.json").write_text("{}")
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    files = {p.name: manifest_files.sha256_bytes(p.read_bytes()) for p in directory.iterdir()}
    (directory / "manifest.json").write_text(json.dumps({"files": files}))
    return directory


def test_one_manifest_verifier(tmp_path):
    ck = _checkpoint(tmp_path / "ck")
    manifest, digest = manifest_files.read_manifest(ck)
    manifest_files.verify_files(ck, manifest, required=("adapter_config.json",))
    manifest_files.check_reference(digest.upper(), digest, "checkpoint ck")
    with pytest.raises(FailedPrecondition, match="does not match its reference"):
        manifest_files.check_reference("0" * 64, digest, "checkpoint ck")
    with pytest.raises(FailedPrecondition, match="no manifest.json"):
        manifest_files.check_reference("0" * 64, None, "checkpoint ck")
    with pytest.raises(FailedPrecondition, match="does not list tokenizer.json"):
        manifest_files.verify_files(ck, manifest, required=("tokenizer.json",))
    for files, message in [({}, "no 'files' map"), ({"../x": "0" * 64}, "outside the checkpoint"),
                           ({"gone": "0" * 64}, "incomplete"), ({"a\x00b": "0"}, "malformed")]:
        with pytest.raises(FailedPrecondition, match=message):
            manifest_files.verify_files(ck, {"files": files})
    (ck / "adapter_model.safetensors").write_bytes(b"changed")
    with pytest.raises(FailedPrecondition, match="modified after it was written"):
        manifest_files.verify_files(ck, manifest)
    (ck / "manifest.json").write_text("[" * 100 + "]" * 100)
    with pytest.raises(FailedPrecondition, match="nested"):
        manifest_files.read_manifest(ck)
    assert manifest_files.read_manifest(tmp_path) is None


# -- finite numbers --------------------------------------------------------------------------------

def test_finite_numbers():
    assert is_finite_number(3) and is_finite_number(0.5)
    assert not any(is_finite_number(v) for v in (True, float("nan"), float("inf"), "1", None))
    assert finite_float("2.5") == 2.5
    for text in ("nan", "inf", "1e999", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            finite_float(text)
