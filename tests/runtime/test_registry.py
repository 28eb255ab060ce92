"""services.runtime.registry: the lazy name -> "module:attribute" table behind every extension point."""

from __future__ import annotations

import threading

import pytest

from services.runtime.registry import Registry


def test_entries_are_imported_on_first_use_and_kept():
    table = Registry("codec", {"json": "json:dumps", "inline": len})
    assert table.names() == ("json", "inline") and "json" in table and "nope" not in table
    import json

    assert table.get("json") is json.dumps and table.get("json") is json.dumps
    assert table.get("inline") is len


def test_an_unknown_name_names_the_registered_ones():
    table = Registry("codec", {"b": "json:dumps", "a": "json:loads"})
    with pytest.raises(LookupError, match="unknown codec 'c'; valid: b, a"):
        table.get("c")

    class Unknown(ValueError):
        pass

    custom = Registry("codec", {"a": "json:loads"}, unknown=lambda name: Unknown(f"no {name}"))
    with pytest.raises(Unknown, match="no zz"):
        custom.get("zz")


def test_register_replace_and_unregister_keep_registration_order():
    table = Registry("codec", {"a": "json:loads"})
    table.register("b", "json:dumps")
    table.register("a", repr)  # replaced in place
    assert table.names() == ("a", "b") and table.get("a") is repr
    table.unregister("a")
    table.unregister("never-there")
    assert table.names() == ("b",)
    with pytest.raises(LookupError):
        table.get("a")


def test_an_imported_object_that_fails_the_check_is_a_type_error_and_is_not_kept():
    table = Registry("codec", {"dumps": "json:dumps", "loads": "json:dumps"},
                     check=lambda name, found: getattr(found, "__name__", "") == name)
    assert table.get("dumps").__name__ == "dumps"
    with pytest.raises(TypeError, match="json:dumps is not the codec 'loads'"):
        table.get("loads")
    described = Registry("codec", {"x": "json:dumps"}, check=lambda name, found: False,
                         describe=lambda name: f"the Codec of {name!r}")
    with pytest.raises(TypeError, match="json:dumps is not the Codec of 'x'"):
        described.get("x")
    with pytest.raises(TypeError):  # still a reference: every lookup checks again
        described.get("x")


def test_a_missing_module_or_attribute_is_the_import_error():
    table = Registry("codec", {"gone": "no_such_module_for_leap_tests:thing", "attr": "json:no_such_attribute"})
    with pytest.raises(ModuleNotFoundError):
        table.get("gone")
    with pytest.raises(AttributeError):
        table.get("attr")


def test_concurrent_lookups_agree():
    table = Registry("codec", {"json": "json:dumps"})
    seen, threads = [], []
    for _ in range(8):
        threads.append(threading.Thread(target=lambda: seen.append(table.get("json"))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8 and len({id(s) for s in seen}) == 1


def test_the_three_extension_points_use_it():
    from services.environment import backends as env_backends
    from services.runtime.errors import InvalidArgument, NotFound
    from services.teacher import backends as teacher_backends
    from services.trainer import methods

    for module in (env_backends, teacher_backends, methods):
        assert isinstance(module._REGISTRY, Registry)
    names = env_backends.available()  # other tests may have registered theirs
    assert names == sorted(names) and {"alfworld", "household", "intercode_bash", "textworld", "webshop"} <= set(names)
    with pytest.raises(NotFound, match=f"unknown environment 'nosuch'; valid names: {', '.join(names)}$"):
        env_backends.create("nosuch")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        env_backends.register("bad name", "json:dumps")
    assert methods.get(" DPO ").name == "dpo" and methods.is_known("sft") and not methods.is_known("SFT")
    with pytest.raises(InvalidArgument, match="unknown training method 'UNSPECIFIED'; valid: sft, dpo, kto"):
        methods.get("")
    with pytest.raises(teacher_backends.UnknownBackend, match="valid: llm, oracle"):
        teacher_backends.spec("nope")
