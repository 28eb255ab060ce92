"""intercode_bash without a sandbox: tasks and splits, InterCode's reward parts, rationales, options."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest

from services.environment.backends.intercode_bash import data, explain
from services.environment.backends.intercode_bash.backend import IntercodeBashBackend, config_from_options, render
from services.environment.backends.intercode_bash.reward import git_status, score, tfidf_similarity
from services.environment.backends.intercode_bash.sandbox import RunResult, SandboxLimits
from services.environment.backends.intercode_bash.supervisor import SYSCALLS, seccomp_program
from services.runtime.errors import FailedPrecondition, InvalidArgument

needs_icalfa = pytest.mark.skipif(importlib.util.find_spec("icalfa") is None,
                                  reason="InterCode's tasks: pip install --no-deps icalfa==0.3.6")


# --- tasks --------------------------------------------------------------------------------------------

@needs_icalfa
def test_the_300_tasks_and_disjoint_splits():
    tasks = data.load_tasks(data.assets_dir())
    assert len(tasks) == 300
    assert [sum(t.family == n for t in tasks) for n in data.FAMILIES] == [153, 49, 57, 23, 18]
    assert len({t.task_id for t in tasks}) == 300 and all(data.TASK_ID.fullmatch(t.task_id) for t in tasks)
    train = {t.task_id for t in tasks if t.split == "train"}
    valid = {t.task_id for t in tasks if t.split == "valid_unseen"}
    assert not train & valid and len(train) + len(valid) == 300
    for n in data.FAMILIES:  # every file system is represented in both splits, about 20 % held out
        family = [t for t in tasks if t.family == n]
        held = sum(t.split == "valid_unseen" for t in family)
        assert held == max(1, round(0.2 * len(family)))
    first = next(t for t in tasks if t.task_id == "fs1-000")
    assert (first.query, first.gold, first.gold2) == ("list files in the current directory", "ls", "ls -l")
    # The split is a pure function of the ids: loading again gives the same one.
    assert [t.split for t in data.load_tasks(data.assets_dir())] == [t.split for t in tasks]


@needs_icalfa
def test_families_carry_setup_scripts_env_and_shells():
    families = data.load_families(data.assets_dir())
    assert families[1].env == (("FILES", "/testbed/hello.c /testbed/FooBar.html"),)
    assert families[5].shell == "/bin/sh" and families[2].shell == "/bin/bash"
    assert "mkdir -p /system/folder1" in families[2].setup_script and families[2].setup_name == "setup_nl2b_fs_2.sh"
    assert "usr" in families[1].gitignore.split()


def test_missing_or_broken_assets_are_failed_precondition(tmp_path):
    with pytest.raises(FailedPrecondition, match="datasets"):
        data.assets_dir(str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "docker").mkdir()
    for n in data.FAMILIES:
        (tmp_path / "datasets" / f"nl2bash_fs_{n}.json").write_text('[{"query": "q", "gold": ""}]')
    with pytest.raises(FailedPrecondition, match="no query and gold"):
        data.load_tasks(data.assets_dir(str(tmp_path)))
    (tmp_path / "datasets" / "nl2bash_fs_1.json").write_bytes(b"\xff\xfe not json")
    with pytest.raises(FailedPrecondition, match="cannot read"):
        data.load_tasks(tmp_path)


# --- InterCode's reward ---------------------------------------------------------------------------------

BASE = {".gitignore": ("f", 0, "g"), "testbed/a.txt": ("f", 0, "1"), "testbed/run.sh": ("f", 1, "2"),
        "testbed/d/b.txt": ("f", 0, "3"), "lib64": ("l", "usr/lib64")}


def test_git_status_matches_gits_short_format():
    assert git_status(BASE, dict(BASE)) == set()
    now = dict(BASE)
    del now["testbed/a.txt"]  # deleted
    now["testbed/run.sh"] = ("f", 0, "2")  # exec bit cleared: git shows a modification
    now["testbed/d/b.txt"] = ("f", 0, "changed")
    now["lib64"] = ("f", 0, "x")  # symlink replaced by a file
    now["testbed/new.txt"] = ("f", 0, "n")  # untracked file in a tracked directory
    now["testbed/fresh/x/y.txt"] = ("f", 0, "n")  # untracked directory: shown once, collapsed
    now["testbed/fresh/z.txt"] = ("f", 0, "n")
    now["world.txt"] = ("f", 0, "w")
    now["tmp/t"] = ("l", "/etc")
    assert git_status(BASE, now) == {
        ("testbed/a.txt", "D"), ("testbed/run.sh", "M"), ("testbed/d/b.txt", "M"), ("lib64", "T"),
        ("testbed/new.txt", "??"), ("testbed/fresh/", "??"), ("world.txt", "??"), ("tmp/", "??")}
    # A directory whose tracked files were all deleted still counts as tracked: new files show one by one.
    gone = {k: v for k, v in BASE.items() if not k.startswith("testbed/d/")}
    gone["testbed/d/c.txt"] = ("f", 0, "c")
    assert ("testbed/d/c.txt", "??") in git_status(BASE, gone)


def test_tfidf_similarity_is_sklearns_default_vectorizer():
    # Worked by hand: idf(hello) = 1, idf(world) = idf(there) = ln(3/2) + 1; cosine = 1 / (1 + idf^2).
    idf = math.log(1.5) + 1
    assert tfidf_similarity("hello world", "Hello there") == pytest.approx(1 / (1 + idf * idf))
    assert tfidf_similarity("a b c", "a b c") == 1.0  # no token of two word characters: equal texts
    assert tfidf_similarity("!", "?") == 0.0
    assert tfidf_similarity("", "") == 1.0
    assert tfidf_similarity("same words here", "here words same") == pytest.approx(1.0)
    assert tfidf_similarity("only here", "") == 0.0
    assert tfidf_similarity("ünïcode wörds", "ÜNÏCODE WÖRDS") == pytest.approx(1.0)


def _score(**kw):
    args = dict(first_action="ls", gold_command="ls", agent_output="a\n", gold_output="a\n", agent_status=set(),
                gold_status=set(), hash_pairs=lambda paths: [("h", "h")] * len(paths))
    args.update(kw)
    return score(**args)


def test_reward_parts_follow_intercode():
    assert _score().total == 1.0 and _score().won
    # The first command equal to the gold one earns the answer part whatever the output.
    assert _score(agent_output="x", gold_output="y").answer == 0.33
    # Otherwise the outputs are compared: equal, or TF-IDF similar.
    assert _score(first_action="ls -1", agent_output="x y", gold_output="x y").answer == 0.33
    partial = _score(first_action="ls -1", agent_output="alpha beta", gold_output="alpha gamma")
    assert partial.answer == round(0.33 * tfidf_similarity("alpha beta", "alpha gamma"), 2) and not partial.won
    # One missing change: erf(1) takes most of the file-system part; two take all of it.
    one = _score(gold_status={("testbed/x", "??")})
    assert one.file_diff == round(0.33 * (1 - math.erf(1)), 2) == 0.05 and one.missing == ("?? testbed/x",)
    assert _score(agent_status={("a", "??"), ("b", "D")}).file_diff == 0.0
    # Shared untracked paths are compared by hash: half the same, half the part.
    shared = {("p/", "??"), ("q.txt", "??"), ("r", "M")}
    half = _score(agent_status=shared, gold_status=shared,
                  hash_pairs=lambda paths: [("1", "1") if p == "p/" else ("1", "2") for p in paths])
    assert (half.compared, half.same, half.file_changes) == (2, 1, round(0.33 * 0.5, 2))
    assert half.file_changes == 0.17 and half.total == round(0.01 + 0.33 + 0.17 + 0.33, 2)


def test_a_wrong_command_scores_low():
    wrong = _score(first_action="pwd", agent_output="/\n", gold_output="bin\netc\ntestbed\n",
                   gold_status={("testbed/new.txt", "??")})
    assert wrong.total <= 0.4 and not wrong.won


# --- rationales -----------------------------------------------------------------------------------------

def test_rationales_describe_programs_and_options():
    text = explain.rationale("find /testbed -type f -name '*.py' -exec md5sum {} + | sort | uniq -c")
    assert text.startswith("To do what the task asks I run find, which walks the directory tree")
    assert "-type f: regular files only" in text and "md5sum, which computes MD5 checksums" in text
    assert "uniq, which collapses repeated lines (-c: with counts)" in text
    assert explain.rationale("ls -la /tmp") == ("To do what the task asks I run ls, which lists directory contents "
                                                 "(-l: long format, -a: including hidden files).")
    assert "xargs" in explain.rationale("cat f | xargs -I {} dirname {}") and "dirname" in \
        explain.rationale("cat f | xargs -I {} dirname {}")
    assert explain.rationale("echo 'unbalanced") == explain.GENERIC_RATIONALE
    assert explain.rationale("submit") == explain.SUBMIT_RATIONALE
    assert len(explain.rationale(" | ".join(["grep -rnwil x"] * 200))) <= explain.MAX_CHARS


@needs_icalfa
def test_every_gold_command_gets_a_rationale():
    for task in data.load_tasks(data.assets_dir()):
        text = explain.rationale(task.gold)
        assert text and len(text) <= explain.MAX_CHARS, task.task_id


def test_secrets_are_unseen_output_lines():
    task = data.BashTask("fs1-999", 1, 999, "train", "Count the files named x", "find / -name x | wc -l", "", 1)
    gold_output = "42\n/\n\nfiles: 42\nCount\nrun\nroot\nshell\ntestbed\n" + "y" * 400 + "\n"
    # "/" has no word character, "Count" is in the query, "shell" in the first observation; "run" and
    # "root" are too short to hide; the long line is not a short secret.
    assert IntercodeBashBackend.secrets(task, gold_output, ()) == ("42", "files: 42", "testbed")
    gold_output = "42\n/\n\nfiles: 42\nCount\n" + "y" * 400 + "\n"
    # Seen means seen as whole words (as the teacher matches secrets).
    assert IntercodeBashBackend.secrets(task, gold_output, ["total FILES: 42 seen"]) == ()
    assert IntercodeBashBackend.secrets(task, gold_output, ["files: 420"]) == ("42", "files: 42")
    assert IntercodeBashBackend.plan(task, []) == ("find / -name x | wc -l", "submit")
    assert IntercodeBashBackend.plan(task, ["ls", " find / -name x | wc -l "]) == ("submit",)
    assert IntercodeBashBackend.plan(task, ["submit"]) == ()


# --- options and rendering ------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"horizon": "0"}, "horizon"), ({"horizon": "-5"}, "horizon"), ({"horizon": "1e9"}, "not a valid int"),
    ({"timeout_s": "nan"}, "not a number"), ({"timeout_s": "0"}, "timeout_s"), ({"timeout_s": "1e300"}, "timeout_s"),
    ({"output_bytes": "10"}, "output_bytes"), ({"processes": "99999999"}, "processes"),
    ({"pool_size": "-1"}, "pool_size"),
    ({"overlay": "maybe"}, "overlay"), ({"seccomp": "perhaps"}, "not a valid bool"), ({"nope": "1"}, "unknown"),
    ({"sandbox_uid": "-1"}, "sandbox_uid"), ({"sandbox_uid": str(2**40)}, "sandbox_uid"),
    ({"memory_mb": "\x00"}, "not a valid int"), ({"disk_mb": "７"}, "disk_mb"),
])
def test_hostile_options_are_invalid_argument(options, message):
    with pytest.raises(InvalidArgument, match=message):
        config_from_options(options)


def test_render_notes_the_limits():
    limits = SandboxLimits(timeout_s=2, output_bytes=1024)
    plain = RunResult(b"hi\n", 0, None, False, False, False, "/", 0.01)
    assert render(plain, limits) == "hi\n"
    assert render(RunResult(b"", 0, None, False, False, False, "/", 0.0), limits) == "(no output)"
    cut = render(RunResult(b"y\n" * 512, None, 9, False, True, False, None, 0.0), limits)
    assert cut.endswith("[output cut at 1024 bytes; the command was stopped]")
    slow = render(RunResult(b"", None, 9, True, False, False, None, 2.0), limits)
    assert slow == "[the command was stopped after 2 s]"
    binary = RunResult(b"\xff\xfebin\x00", 0, None, False, False, False, "/", 0.0)
    assert render(binary, limits) == "\ufffd\ufffdbin\x00"


@pytest.mark.parametrize("machine", sorted(SYSCALLS))
def test_seccomp_programs_are_well_formed(machine):
    program = seccomp_program(machine)
    assert len(program) < 256
    for i, (code, jt, jf, _k) in enumerate(program):
        if code & 0x07 == 0x05:  # jumps stay inside the program
            assert i + 1 + max(jt, jf) < len(program)
    assert program[-1] == (0x06, 0, 0, 0x7FFF0000)  # the default: allow
    denied = {k for code, _, _, k in program if code == 0x15}
    assert {SYSCALLS[machine][n] for n in ("mount", "unshare", "setns", "ptrace", "bpf", "keyctl")} <= denied
    assert re.match(r"^(x86_64|aarch64)$", machine)


def test_the_pods_seccomp_profile_allows_the_supervisor_and_refuses_the_rest():
    """deploy/components/intercode-bash: the container's Localhost profile. The supervisor needs unshare,
    mount, umount2 and pivot_root (and sethostname) to build a sandbox; everything else the sandbox's own
    filter refuses is refused for the whole container too."""
    import json
    from pathlib import Path

    from services.environment.backends.intercode_bash.supervisor import _DENY_NAMES

    path = Path(__file__).resolve().parents[2] / "deploy/components/intercode-bash/intercode-bash-seccomp.json"
    profile = json.loads(path.read_text())
    denied = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO" for name in rule["names"]}
    needed = {"unshare", "mount", "umount2", "pivot_root", "sethostname"}
    assert not needed & denied
    assert set(_DENY_NAMES) - needed <= denied and "setns" in denied and "ptrace" in denied
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW" and set(profile["architectures"]) == {
        "SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"}  # other ABIs (x32, i386) are refused by libseccomp


def test_work_directories_of_dead_servers_are_removed(tmp_path):
    import fcntl
    import os

    from services.environment.backends.intercode_bash.rootfs import LOCK_NAME, remove_stale_work_dirs

    dead, live, foreign, mine = (tmp_path / n for n in ("leap-intercode-dead", "leap-intercode-live",
                                                        "leap-intercode-nolock", "leap-intercode-me"))
    for d in (dead, live, foreign, mine):
        (d / "fs1").mkdir(parents=True)
        (d / "fs1" / "file").write_text("x")
    for d in (dead, live, mine):
        (d / LOCK_NAME).write_text("")
    (tmp_path / "other").mkdir()
    held = os.open(live / LOCK_NAME, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a live server's lock
    try:
        assert remove_stale_work_dirs(str(tmp_path), keep=str(mine)) == [str(dead)]
    finally:
        os.close(held)
    assert not dead.exists() and live.exists() and foreign.exists() and mine.exists() and (tmp_path / "other").exists()
