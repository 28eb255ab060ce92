"""Which decoder layers get LoRA (`lora_last_layers`): the layer list given to peft, what is read back
from a parent adapter, the share of layers backpropagation runs through, and the errors a person can
act on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from peft import LoraConfig

from services.trainer.jobs import HyperParameters
from services.trainer.training import (TrainingError, adapted_layers, backward_layer_share, decoder_layer_count,
                                       last_layers_of, lora_config, lora_layers)


def hp(last: int) -> HyperParameters:
    return HyperParameters(lora_last_layers=last).resolve("sft")


def test_zero_means_every_layer_and_n_means_the_last_n():
    assert lora_layers(hp(0), 30) is None
    assert lora_layers(hp(0), None) is None  # no count needed when every layer is adapted
    assert lora_layers(hp(15), 30) == list(range(15, 30))
    assert lora_layers(hp(30), 30) == list(range(30))
    assert lora_layers(hp(1), 30) == [29]
    assert lora_config(hp(2), 4).layers_to_transform == [2, 3]
    assert lora_config(hp(0), 4).layers_to_transform is None


def test_more_layers_than_the_model_has_or_an_unknown_count_is_an_error_naming_both():
    with pytest.raises(TrainingError, match=r"lora_last_layers=31, but the base model has 30 decoder layers"):
        lora_layers(hp(31), 30)
    with pytest.raises(TrainingError, match="num_hidden_layers"):
        lora_layers(hp(2), None)


def test_the_layer_count_comes_from_the_model_config_or_its_text_config():
    assert decoder_layer_count(SimpleNamespace(config=SimpleNamespace(num_hidden_layers=30))) == 30
    text = SimpleNamespace(num_hidden_layers=12)
    assert decoder_layer_count(SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text))) == 12
    for broken in (None, 0, -3, "30", 2.5):
        assert decoder_layer_count(SimpleNamespace(config=SimpleNamespace(num_hidden_layers=broken))) is None
    assert decoder_layer_count(object()) is None


def test_a_parent_adapters_layers_are_read_back_whatever_set_they_are():
    assert adapted_layers(LoraConfig(r=4)) is None
    assert adapted_layers(LoraConfig(r=4, layers_to_transform=29)) == [29]
    assert adapted_layers(LoraConfig(r=4, layers_to_transform=[29, 20, 20, 25])) == [20, 25, 29]
    assert last_layers_of(None, 30) == 0 and last_layers_of(None, None) == 0
    assert last_layers_of(list(range(20, 30)), 30) == 10 and last_layers_of([29], 30) == 1
    # Any other set (an adapter made elsewhere) has no lora_last_layers; the manifest lists its layers.
    for scattered in ([0, 1], [3, 29], list(range(10, 20))):
        assert last_layers_of(scattered, 30) is None
    assert last_layers_of([28, 29], None) is None


def test_backpropagation_runs_from_the_lowest_adapted_layer_up():
    assert backward_layer_share(None, 30) == 1.0 and backward_layer_share([3], None) == 1.0
    assert backward_layer_share(list(range(15, 30)), 30) == 0.5
    assert backward_layer_share([10, 29], 30) == pytest.approx(20 / 30)
    assert backward_layer_share([0], 30) == 1.0
