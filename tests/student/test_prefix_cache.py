"""The system-message KV cache of the local backend, and the whole-prompt cache that reuses the longest
common prefix with an earlier prompt: same tokens as a full prefill, per adapter.

Two backends on the real model in fp32 (where a batch's arithmetic does not change greedy choices), one
with the cache and one without, answer the same prompts: household prompts sharing one system message,
a prompt of another environment (another system message, so another prefix length in the same batch)
and a prompt with no system message at all.
"""

from __future__ import annotations

import pytest

from services.student import metrics
from services.student.backends.local import LocalBackend, LocalOptions
from services.student.backends.prefix_cache import PromptCache
from services.student.prompts import format_target, render_messages
from services.student.types import GenerationRequest, Sampling
from tests.student.helpers import FIXED_ACTION, FIXED_REASON, STATES

NEW_TOKENS = 12


def _messages() -> list[list[dict[str, str]]]:
    household = [render_messages(s["env"], s["goal"], s["history"], s["observation"], s["candidates"]) for s in STATES]
    bash = render_messages("bash", "count the files in /tmp", [("$ ", "cd /tmp")], "$ ", [])
    no_system = [household[0][1]]
    return household + [bash, no_system]


@pytest.fixture(scope="module")
def backends(smollm2):
    with smollm2.borrow() as first, smollm2.borrow() as second:  # the second is a model of its own
        # The system-message cache alone; `prompt_cache` turns the whole-prompt cache on for one test.
        cached = LocalBackend(LocalOptions(dtype="float32", max_batch_size=8, prefix_cache=True, prompt_cache_mb=0),
                              loader=smollm2.loader(first))
        plain = LocalBackend(LocalOptions(dtype="float32", max_batch_size=8, prefix_cache=False),
                             loader=smollm2.loader(second))
        cached.start()
        plain.start()
        yield cached, plain
        cached.close()
        plain.close()


def _generate(backend: LocalBackend, messages, handle=None, version="base") -> list[list[int]]:
    requests = [GenerationRequest(prompt=backend.encode_prompt(m), sampling=Sampling(max_new_tokens=NEW_TOKENS),
                                  version=version, adapter_handle=handle) for m in messages]
    return [f.result(timeout=300).token_ids for f in backend.submit(requests)]


def test_the_shared_prefix_is_exactly_the_system_message(backends):
    cached, plain = backends
    household, _, _, bash, no_system = _messages()
    prompt = cached.encode_prompt(household)
    system_only = cached.tokenizer.apply_chat_template(household[:1], add_generation_prompt=False, tokenize=False)
    assert prompt.prefix_tokens == len(cached.tokenizer(system_only, add_special_tokens=False)["input_ids"])
    assert prompt.text.startswith(system_only) and 16 < prompt.prefix_tokens < prompt.token_count
    assert 0 < cached.encode_prompt(bash).prefix_tokens != prompt.prefix_tokens
    assert cached.encode_prompt(no_system).prefix_tokens == 0
    assert plain.encode_prompt(household).prefix_tokens == 0  # cache off: nothing is marked


def test_cached_prefill_gives_the_tokens_of_a_full_prefill(backends):
    cached, plain = backends
    messages = _messages()
    expected = _generate(plain, messages)
    assert _generate(cached, messages) == expected  # misses (the entries are computed), or hits
    before = metrics.PREFIX_CACHED_TOKENS._value.get()
    assert _generate(cached, messages) == expected  # hits only
    shared = sum(cached.encode_prompt(m).prefix_tokens for m in messages)
    assert metrics.PREFIX_CACHED_TOKENS._value.get() - before == shared
    # Alone, and joining a running batch, the answers do not change either.
    assert [_generate(cached, [m])[0] for m in messages[:2]] == expected[:2]


def test_each_answer_says_how_much_of_its_prompt_came_from_the_cache(backends):
    cached, plain = backends
    messages = [{"role": "system", "content": "You are the agent of this one test, which no other test uses: answer "
                                              "with a reason and an action on two lines, as you are told."},
                {"role": "user", "content": "Your task is to look around. You are in the middle of a room."}]
    prompt = cached.encode_prompt(messages)
    assert prompt.prefix_tokens >= 16

    def answer(backend):
        request = GenerationRequest(prompt=backend.encode_prompt(messages), sampling=Sampling(max_new_tokens=2),
                                    version="base", adapter_handle=None)
        return backend.submit([request])[0].result(timeout=300)

    before = metrics.PREFIX_CACHED_TOKENS._value.get()
    first = answer(cached)   # a miss: the system message is prefilled for this answer
    assert (first.prompt_tokens, first.cached_prompt_tokens) == (prompt.token_count, 0)
    assert metrics.PREFIX_CACHED_TOKENS._value.get() == before
    second = answer(cached)  # a hit: only the rest is prefilled
    assert (second.prompt_tokens, second.cached_prompt_tokens) == (prompt.token_count, prompt.prefix_tokens)
    assert metrics.PREFIX_CACHED_TOKENS._value.get() - before == prompt.prefix_tokens
    assert answer(plain).cached_prompt_tokens == 0


def test_each_adapter_gets_its_own_prefix_cache(backends, trained_adapter):
    from services.student.types import CheckpointSpec

    cached, plain = backends
    path, sha = trained_adapter
    handles = []
    for backend in (cached, plain):
        prepared = backend.prepare_adapter(CheckpointSpec(version="v1", uri=str(path), sha256=sha))
        handles.append(backend.install_adapter(prepared, "adapter_test"))
    household = _messages()[:3]
    # The base prefix is cached first; an adapter row must not reuse it.
    assert _generate(cached, household) == _generate(plain, household)
    with_adapter = _generate(cached, household, handles[0], "v1")
    assert with_adapter == _generate(plain, household, handles[1], "v1")
    decoded = cached.tokenizer.decode(with_adapter[0], skip_special_tokens=True)
    assert len(decoded) > 10 and format_target(FIXED_REASON, FIXED_ACTION).startswith(decoded)
    assert {key[0] for key in cached.prefix_cache.entries} >= {None, handles[0]}


@pytest.fixture
def prompt_cache(backends):
    cached, _ = backends
    cached.prompt_cache = PromptCache(max_bytes=64 * 2**20)
    yield cached.prompt_cache
    cached.prompt_cache = PromptCache(max_bytes=0)


def _episode() -> list[list[dict[str, str]]]:
    """Three steps of one household episode: each prompt repeats most of the one before."""
    goal, candidates = "put a clean apple in fridge.", ["go to fridge 1", "go to countertop 1", "open fridge 1", "look"]
    observations = ["You are in the middle of a room. You see a countertop 1 and a fridge 1.",
                    "You arrive at countertop 1. On the countertop 1, you see an apple 1.",
                    "You arrive at fridge 1. The fridge 1 is closed."]
    actions = ["go to countertop 1", "go to fridge 1"]
    return [render_messages("household", goal, list(zip(observations[:k], actions[:k])), observations[k], candidates,
                            history_window=1) for k in range(3)]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_a_later_prompt_reuses_its_longest_common_prefix_with_an_earlier_one(backends, prompt_cache):
    cached, plain = backends
    steps = _episode()
    expected = [_generate(plain, [m])[0] for m in steps]
    ids = [cached.encode_prompt(m).ids for m in steps]
    system = cached.encode_prompt(steps[0]).prefix_tokens
    answers = []
    for k, messages in enumerate(steps):
        request = GenerationRequest(prompt=cached.encode_prompt(messages), sampling=Sampling(max_new_tokens=NEW_TOKENS),
                                    version="base", adapter_handle=None)
        answers.append(cached.submit([request])[0].result(timeout=300))
        if k:
            reusable = max(_common(ids[j], ids[k]) for j in range(k))
            assert answers[k].cached_prompt_tokens == min(reusable, len(ids[k]) - 1) > system
    assert [a.token_ids for a in answers] == expected, "reused KV must give the tokens of a full prefill"
    # The same prompt again: all but its last token come from the cache, and the answer is the same.
    again = _generate(cached, [steps[2]])
    assert again == [expected[2]] and len(prompt_cache.entries) == 3, "every step is kept"
    # Rows of one batch, each with its own reused prefix length.
    assert _generate(cached, steps[::-1]) == expected[::-1]
    prompt_cache.forget(None)
    assert not prompt_cache.entries


def test_prefills_and_cached_prefixes_hold_no_spare_rows(backends, monkeypatch):
    """A prefill's cache is merged into the running batch and dropped, or kept as a cached prefix:
    spare rows there are memory nobody writes (16 of them beside a 16-row prefill doubled it, and a
    cached system message held 17 rows for its one)."""
    from services.student.backends.kv_cache import GROW

    cached, _ = backends
    prefilled = []
    prefill = cached.prefill

    def spy(rows):
        batch = prefill(rows)
        prefilled.append((len(rows), {layer._key_buffer.shape[0] for layer in batch.cache.layers}))
        return batch

    monkeypatch.setattr(cached, "prefill", spy)
    cached.prefix_cache.entries.clear()
    _generate(cached, _messages()[:3])
    assert prefilled and all(buffers == {rows} for rows, buffers in prefilled), prefilled
    assert cached.prefix_cache.entries
    for entry in cached.prefix_cache.entries.values():
        for keys, values in entry:
            for t in (keys, values):   # a view of one row and its spare columns, nothing more
                assert t.shape[0] == 1
                assert t.untyped_storage().nbytes() <= t[0, :, :1].numel() * t.element_size() * (t.shape[2] + GROW)


def test_uneven_newcomers_are_prefilled_in_groups_with_the_tokens_of_one_pass(backends, prompt_cache, monkeypatch):
    """Rows reusing most of their prompt and rows prefilling all of theirs: split into separate
    passes (less padding), merged into one batch, with the answers of a single padded pass."""
    cached, plain = backends
    steps = _episode()
    newcomers = steps[1:3] + _messages()[1:4]
    expected = _generate(plain, newcomers)
    passes = []
    group = cached._prefill_group

    def spy(rows, *args, **kwargs):
        passes.append(len(rows))
        return group(rows, *args, **kwargs)

    def prefill_newcomers(overhead):
        prompt_cache.forget(None)
        for messages in steps[:2]:  # cached first: the newcomers' first two reuse most of them
            _generate(cached, [messages])
        passes.clear()
        monkeypatch.setattr(cached.options, "prefill_group_overhead_tokens", overhead)
        padding = metrics.PREFILL_PADDING_TOKENS._value.get()
        tokens = _generate(cached, newcomers)
        return tokens, list(passes), metrics.PREFILL_PADDING_TOKENS._value.get() - padding

    monkeypatch.setattr(cached, "_prefill_group", spy)
    tokens, passes_one, padding_one = prefill_newcomers(-1)
    assert tokens == expected and passes_one == [len(newcomers)] and padding_one > 0
    tokens, passes_split, padding_split = prefill_newcomers(0)
    assert tokens == expected, "grouped prefills must answer as one pass does"
    assert len(passes_split) > 1 and sum(passes_split) == len(newcomers)
    assert padding_split < padding_one
    prompt_cache.forget(None)
