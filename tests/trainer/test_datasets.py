"""Dataset schemas, hyper-parameter defaults and checkpoint directories (no torch, no model)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.trainer import checkpoints
from services.trainer.datasets import DatasetError, read_dataset
from services.trainer.jobs import CheckpointRef, HyperParameters
from tests.trainer.helpers import dpo_rows, kto_rows, messages, sft_rows, write_jsonl


def test_valid_rows_of_each_method(tmp_path):
    sft = read_dataset(write_jsonl(tmp_path / "sft.jsonl", sft_rows(3)), "sft")
    assert len(sft.examples) == 3 and sft.examples[0].completion.startswith("REASON:")
    assert sft.examples[1].where == f"{tmp_path / 'sft.jsonl'}:2"
    dpo = read_dataset(write_jsonl(tmp_path / "dpo.jsonl", dpo_rows(2)), "dpo")
    assert [e.is_pair for e in dpo.examples] == [True, True]
    kto = read_dataset(write_jsonl(tmp_path / "kto.jsonl", kto_rows(2)), "kto")
    assert [e.label for e in kto.examples] == [True, False, True, False]


def test_kto_accepts_dpo_pairs_as_desirable_and_undesirable(tmp_path):
    data = read_dataset(write_jsonl(tmp_path / "pairs.jsonl", dpo_rows(2)), "kto")
    assert [(e.label, e.completion.startswith("REASON: Apples")) for e in data.examples] == [
        (True, True), (False, False), (True, True), (False, False)]


@pytest.mark.parametrize("method,row,expected", [
    ("sft", {"messages": messages(0)}, "'completion' must be a non-empty string (missing)"),
    ("sft", {"messages": messages(0), "completion": ""}, "'completion' must be a non-empty string"),
    ("sft", {"messages": [], "completion": "x"}, "'messages' must be a non-empty list"),
    ("sft", {"messages": [{"role": "robot", "content": "x"}], "completion": "x"}, "messages[0].role must be one of"),
    ("sft", {"messages": [{"role": "user", "content": 3}], "completion": "x"},
     "messages[0].content must be a string"),
    ("sft", {"messages": [{"role": "system", "content": "x"}], "completion": "x"},
     "the last message must be the user's"),
    ("sft", {"messages": messages(0), "completion": "x", "meta": [1]}, "'meta' must be an object"),
    ("dpo", {"messages": messages(0), "chosen": "a"}, "'rejected' must be a non-empty string (missing)"),
    ("dpo", {"messages": messages(0), "chosen": "a", "rejected": "a"}, "identical"),
    ("kto", {"messages": messages(0), "completion": "a", "label": 1}, "'label' must be true"),
    ("kto", {"messages": messages(0), "completion": "a"},
     "'label' must be true (desirable) or false (undesirable) (missing)"),
])
def test_bad_row_names_file_and_line(tmp_path, method, row, expected):
    path = write_jsonl(tmp_path / "data.jsonl", sft_rows(1) if method == "sft" else
                       (dpo_rows(1) if method == "dpo" else kto_rows(1)))
    with path.open("a") as f:
        f.write("\n" + json.dumps(row) + "\n")  # a blank line first: line numbers count it
    with pytest.raises(DatasetError) as err:
        read_dataset(path, method)
    bad_line = (2 if method == "kto" else 1) + 2  # the valid rows, the blank line, then the bad row
    assert f"{path}:{bad_line}: " in err.value.message
    assert expected in err.value.message
    assert isinstance(err.value, InvalidArgument)


def test_invalid_json_and_many_bad_rows_are_summarised(tmp_path):
    rows = ["{not json", *[json.dumps({"messages": 1})] * 7, json.dumps(sft_rows(1)[0])]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DatasetError) as err:
        read_dataset(path, "sft")
    message = err.value.message
    assert f"{path}:1: not valid JSON" in message
    assert "8 of 9 rows are invalid" in message and "(and 3 more)" in message


def test_empty_file_and_unknown_format(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match="holds no examples"):
        read_dataset(empty, "sft")
    with pytest.raises(InvalidArgument, match="cannot tell the format"):
        read_dataset(tmp_path / "data.csv", "sft")


def test_parquet_rows_are_checked_with_row_numbers(tmp_path):
    good = tmp_path / "sft.parquet"
    pq.write_table(pa.Table.from_pylist(sft_rows(2)), good)
    data = read_dataset(good, "sft")
    assert len(data.examples) == 2 and data.format == "parquet" and len(data.sha256) == 64
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages(0), "completion": ""}]), bad)
    with pytest.raises(DatasetError, match=r"bad\.parquet:row 1: 'completion' must be a non-empty string"):
        read_dataset(bad, "sft")


def test_a_parquet_file_whose_rows_repeat_one_huge_value_is_refused_undecoded(tmp_path):
    """A few kB of Parquet (one 4 MB dictionary value, referred to by 600 rows: 2.4 GB once decoded)
    is refused row by row from the sizes alone; decoding it would take gigabytes."""
    import resource

    from services.trainer.datasets import DatasetLimits

    rows = 600
    completion = pa.DictionaryArray.from_arrays(pa.array([0] * rows, type=pa.int32()), pa.array(["a" * (4 << 20)]))
    table = pa.table({"messages": pa.array([messages(0)] * rows), "completion": completion})
    path = tmp_path / "bomb.parquet"
    pq.write_table(table, path, compression="zstd", dictionary_pagesize_limit=64 << 20)
    del table, completion
    assert path.stat().st_size < 100_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetError, match=r"600 of 600 rows are invalid: .*bomb\.parquet:row 1: the row holds "
                                           r"419\d{4} bytes once decoded, more than 1048576"):
        read_dataset(path, "sft", keep_examples=False, limits=DatasetLimits(max_line_bytes=1 << 20))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 512, f"checking the file took {grown_mb:.0f} MB more"
    # All rows together are capped like a JSONL file's bytes, each row fitting its own cap.
    small = tmp_path / "many.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages(i), "completion": "x" * 900} for i in range(40)]), small)
    with pytest.raises(DatasetError, match=r"holds more than 20000 bytes of decoded rows"):
        read_dataset(small, "sft", limits=DatasetLimits(max_bytes=20_000))


def test_parquet_row_sizes_count_nested_text_nulls_and_slices():
    from services.trainer.datasets import _arrow_row_bytes

    table = pa.Table.from_pylist([
        {"messages": [{"role": "user", "content": "abcd"}, {"role": "system", "content": None}], "n": 1,
         "tags": {"k": "xy"}},
        {"messages": None, "n": None, "tags": None},
        {"messages": [], "n": 3, "tags": {"k": "z"}},
    ])
    sizes = [sum(int(_arrow_row_bytes(table.column(c).combine_chunks())[r]) for c in range(3)) for r in range(3)]
    # row 0: "user" + "abcd" + "system" + the int (8) + "xy"; row 1: the null int still counts 8; row 2: 8 + "z"
    assert sizes == [4 + 4 + 6 + 8 + 2, 8, 8 + 1]
    encoded = table.column("messages").combine_chunks().slice(1)
    assert list(_arrow_row_bytes(encoded)) == [0, 0]


def test_a_parquet_value_python_cannot_hold_is_a_dataset_error(tmp_path):
    path = tmp_path / "date.parquet"
    days = pa.array([2**31 - 1], type=pa.int32()).cast(pa.date32())
    pq.write_table(pa.table({"messages": [messages(0)], "completion": ["REASON: r\nACTION: a"], "meta": [{"d": None}]})
                   .drop_columns(["meta"]).append_column("when", days), path)
    with pytest.raises(DatasetError, match=r"date\.parquet: rows 1-1 hold a value Python cannot represent"):
        read_dataset(path, "sft")


def test_an_explicit_zero_dropout_is_kept_and_an_unset_one_is_the_default():
    from leap.v1 import trainer_pb2
    from services.trainer.server import request_from_proto

    assert HyperParameters(lora_dropout=0.0).resolve("sft").lora_dropout == 0.0
    assert HyperParameters().resolve("sft").lora_dropout == 0.05
    unset = request_from_proto(trainer_pb2.StartJobRequest(hyper_parameters=trainer_pb2.HyperParameters(lora_r=8)))
    zero = request_from_proto(trainer_pb2.StartJobRequest(hyper_parameters=trainer_pb2.HyperParameters(lora_dropout=0)))
    assert unset.hyper_parameters.lora_dropout is None and zero.hyper_parameters.lora_dropout == 0.0
    assert HyperParameters.from_dict(zero.hyper_parameters.to_dict()).resolve("sft").lora_dropout == 0.0


def test_hyper_parameter_defaults_follow_leap():
    sft = HyperParameters().resolve("sft")
    assert (sft.lora_r, sft.lora_alpha, sft.lora_dropout) == (128, 64, 0.05)
    assert sft.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (sft.learning_rate, sft.lr_scheduler, sft.epochs, sft.batch_size, sft.max_length, sft.warmup_ratio) == (
        3e-5, "cosine", 1.0, 4, 1024, 0.03)
    dpo = HyperParameters().resolve("dpo")
    assert (dpo.learning_rate, dpo.beta) == (5e-7, 0.01)
    assert HyperParameters(lora_r=4, learning_rate=1e-3).resolve("kto").lora_r == 4


@pytest.mark.parametrize("hp,expected", [
    (HyperParameters(lora_r=-1), "lora_r must be in [1, 1024] (got -1)"),
    (HyperParameters(lora_dropout=1.5), "lora_dropout must be a number in [0, 1) (got 1.5)"),
    (HyperParameters(learning_rate=float("nan")), "learning_rate must be a number in (0, 1] (got nan)"),
    (HyperParameters(lr_scheduler="sawtooth"), "lr_scheduler 'sawtooth' is unknown"),
    # transformers has them, but they need arguments a job cannot give: every such job would fail
    (HyperParameters(lr_scheduler="warmup_stable_decay"), "lr_scheduler 'warmup_stable_decay' is unknown"),
    (HyperParameters(lr_scheduler="cosine_with_min_lr"), "lr_scheduler 'cosine_with_min_lr' is unknown"),
    (HyperParameters(target_modules=["q_proj", "../x"]), "target_modules must be module names"),
    (HyperParameters(max_steps=-3), "max_steps must be in [0, 10000000] (got -3)"),
])
def test_bad_hyper_parameters_are_invalid_argument(hp, expected):
    with pytest.raises(InvalidArgument, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        hp.resolve("sft")


def test_kto_needs_two_examples_per_batch():
    with pytest.raises(InvalidArgument, match="KTO needs batch_size >= 2"):
        HyperParameters(batch_size=1).resolve("kto")


def _fake_adapter(directory):
    (directory / "adapter_config.json").write_text("{}")
    (directory / "adapter_model.safetensors").write_bytes(b"weights")


def test_checkpoint_versions_manifest_and_atomicity(tmp_path):
    first = checkpoints.write_checkpoint(str(tmp_path), "student", save=_fake_adapter,
                                         manifest={"base_model": "smollm2", "method": "sft"})
    second = checkpoints.write_checkpoint(str(tmp_path), "student", save=_fake_adapter,
                                          manifest={"base_model": "smollm2", "method": "sft"})
    assert (first.version, second.version) == ("v1", "v2")
    manifest, digest = checkpoints.read_manifest(second.uri)
    assert digest == second.sha256 and manifest["version"] == "v2" and manifest["name"] == "student"
    assert set(manifest["files"]) == {"adapter_config.json", "adapter_model.safetensors"}
    checkpoints.verify_files(second.uri, manifest)

    def crash(directory):
        _fake_adapter(directory)
        raise KeyboardInterrupt  # as if killed mid-write

    with pytest.raises(KeyboardInterrupt):
        checkpoints.write_checkpoint(str(tmp_path), "student", save=crash, manifest={})
    names = sorted(p.name for p in (tmp_path / "checkpoints" / "student").iterdir())
    assert names == ["v1", "v2"]  # no v3, no leftover temp directory


def test_partial_directories_are_removed(tmp_path):
    directory = tmp_path / "checkpoints" / "student"
    (directory / ".v3.abc123.partial").mkdir(parents=True)
    (directory / "v2").mkdir()
    removed = checkpoints.remove_partials(directory)
    assert [p.name for p in removed] == [".v3.abc123.partial"]
    assert [p.name for p in directory.iterdir()] == ["v2"]


def test_parent_reference_is_verified(tmp_path):
    ref = checkpoints.write_checkpoint(str(tmp_path), "student", save=_fake_adapter, manifest={})
    assert checkpoints.check_parent(ref)["version"] == "v1"
    with pytest.raises(FailedPrecondition, match="does not match its reference"):
        checkpoints.check_parent(CheckpointRef(uri=ref.uri, sha256="0" * 64))
    with pytest.raises(NotFound, match="does not exist"):
        checkpoints.check_parent(CheckpointRef(uri=str(tmp_path / "nope")))
    (tmp_path / "checkpoints" / "student" / "v1" / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(FailedPrecondition, match="modified after it was written"):
        checkpoints.verify_files(ref.uri, checkpoints.read_manifest(ref.uri)[0])
