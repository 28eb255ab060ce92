"""services.environment.backends.options: every backend's options read into its config dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.environment.backends.options import config_from_options, config_or_options, integer_or_text, typed_value
from services.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class Toy:
    size: int = 1
    mix_ratio: float = 0.5
    loud: bool = False
    name: str = ""

    def __post_init__(self):
        if self.size > 100:
            raise ValueError("size must be at most 100")


def test_typed_values_from_strings_and_as_given():
    options = {"size": "7", "mix_ratio": "0.25", "loud": "on", "name": "x"}
    config = config_from_options(Toy, options, "toy", typed_value("toy"))
    assert config == Toy(7, 0.25, True, "x")
    assert config_from_options(Toy, {"size": 3}, "toy", typed_value("toy")).size == 3
    with pytest.raises(InvalidArgument, match="toy option loud='maybe' is not a valid bool"):
        config_from_options(Toy, {"loud": "maybe"}, "toy", typed_value("toy"))
    assert config_from_options(Toy, {"mix_ratio": "nan"}, "toy", typed_value("toy")).mix_ratio != 0.5
    with pytest.raises(InvalidArgument, match="toy option mix_ratio is not a number"):
        config_from_options(Toy, {"mix_ratio": "nan"}, "toy", typed_value("toy", reject_nan=True))


def test_unknown_keys_name_the_valid_ones_and_the_constructor_checks_become_invalid_argument():
    valid = "loud, mix_ratio, name, size, path"
    with pytest.raises(InvalidArgument, match=f"unknown toy option 'colour'; valid options: {valid}$"):
        config_from_options(Toy, {"colour": "red"}, "toy", typed_value("toy"), also_valid=("path",))
    assert config_from_options(Toy, {"mix-ratio": "0.1"}, "toy", typed_value("toy")).mix_ratio == 0.1
    with pytest.raises(InvalidArgument, match="size must be at most 100"):
        config_from_options(Toy, {"size": "101"}, "toy", typed_value("toy"))
    with pytest.raises(ValueError) as err:  # not one the backend declares: its own error
        config_from_options(Toy, {"size": "101"}, "toy", typed_value("toy"), invalid=())
    assert not isinstance(err.value, InvalidArgument)


def test_integer_or_text():
    assert config_from_options(Toy, {"size": " 12 ", "name": 5}, "toy", integer_or_text("toy")) == Toy(12, name="5")
    for bad in ("1.5", "x", "1" * 13):
        with pytest.raises(InvalidArgument, match="toy option size=.* is not an integer"):
            config_from_options(Toy, {"size": bad}, "toy", integer_or_text("toy"))


def test_a_config_or_options_not_both():
    parse = lambda options: config_from_options(Toy, options, "toy", typed_value("toy"))  # noqa: E731
    assert config_or_options(None, {"size": "2"}, parse, "a Toy").size == 2
    assert config_or_options(Toy(3), {}, parse, "a Toy").size == 3
    with pytest.raises(InvalidArgument, match="pass either a Toy or options, not both"):
        config_or_options(Toy(3), {"size": "2"}, parse, "a Toy")
