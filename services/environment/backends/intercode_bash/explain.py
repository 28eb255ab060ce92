"""Rationales for shell commands: one or two sentences saying what each program of a command does.

The planner's advice (`ExpertAdvice.rationale`, a demonstration's `reason`) is the reason the
student learns to write before its command, so it states what the tools and options do ("find walks
the directory tree (-type f: regular files only, -mtime: by modification time); wc counts lines,
words and bytes (-l: lines only).") and never what the command will print: the gold output is
privileged. Commands are read with shlex; programs are found at the start of each pipeline stage
and after `xargs`, `-exec`, `sudo`, `time` and the like. Unknown programs are named without a
description; a command that cannot be parsed gets a generic sentence.
"""

from __future__ import annotations

import os
import shlex

MAX_CHARS = 400

PROGRAMS = {
    "apt": "apt queries the package manager", "awk": "awk processes text field by field",
    "base64": "base64 encodes or decodes base64", "basename": "basename strips the directory from a path",
    "bash": "bash runs a shell command", "bind": "bind shows the shell's key bindings",
    "cal": "cal prints a calendar", "cat": "cat prints files", "cd": "cd changes the working directory",
    "chgrp": "chgrp changes a file's group", "chmod": "chmod changes permissions",
    "chown": "chown changes a file's owner", "cmp": "cmp compares files byte by byte",
    "column": "column aligns text in columns", "comm": "comm compares two sorted lists", "cp": "cp copies files",
    "cpio": "cpio copies files into or out of an archive", "crontab": "crontab manages scheduled jobs",
    "curl": "curl fetches a URL", "cut": "cut selects fields or characters", "date": "date prints the date and time",
    "df": "df reports file-system space", "diff": "diff compares files", "dig": "dig queries DNS",
    "dirname": "dirname strips the last part of a path", "dpkg": "dpkg queries installed packages",
    "du": "du measures disk usage", "echo": "echo prints its arguments", "env": "env prints the environment",
    "file": "file guesses a file's type", "find": "find walks the directory tree", "fold": "fold wraps long lines",
    "free": "free reports memory use", "getconf": "getconf reads system configuration values",
    "getent": "getent reads system databases", "grep": "grep searches for a pattern",
    "groups": "groups lists the user's groups", "gunzip": "gunzip decompresses .gz files",
    "gzip": "gzip compresses files", "head": "head keeps the first lines",
    "history": "history lists the shell's history", "hostname": "hostname prints the host name",
    "id": "id prints user and group ids", "ifconfig": "ifconfig lists network interfaces",
    "jobs": "jobs lists background jobs", "jq": "jq processes JSON", "last": "last lists recent logins",
    "ln": "ln creates links", "locale": "locale prints the locale settings", "ls": "ls lists directory contents",
    "lsblk": "lsblk lists block devices", "lscpu": "lscpu describes the CPU", "lsmem": "lsmem lists memory ranges",
    "lsof": "lsof lists open files", "md5sum": "md5sum computes MD5 checksums", "mkdir": "mkdir creates directories",
    "more": "more pages through text", "mv": "mv moves or renames files",
    "netstat": "netstat reports network statistics", "nice": "nice shows or sets priority", "nl": "nl numbers lines",
    "nproc": "nproc counts processors", "nslookup": "nslookup queries DNS", "od": "od dumps bytes in a chosen format",
    "openssl": "openssl runs cryptographic tools", "paste": "paste joins lines side by side",
    "ping": "ping sends ICMP echo requests", "printf": "printf prints formatted text", "ps": "ps lists processes",
    "pstree": "pstree shows the process tree", "pwd": "pwd prints the working directory",
    "readlink": "readlink resolves links", "realpath": "realpath resolves a full path",
    "rev": "rev reverses each line", "rm": "rm removes files", "rmdir": "rmdir removes empty directories",
    "route": "route shows the routing table", "sed": "sed edits text as a stream",
    "seq": "seq prints a sequence of numbers", "service": "service lists or controls services",
    "sh": "sh runs a shell command", "sha512sum": "sha512sum computes SHA-512 checksums", "sort": "sort sorts lines",
    "split": "split cuts a file into pieces", "ssh": "ssh is the secure shell client",
    "stat": "stat shows file metadata", "swapon": "swapon shows swap space",
    "sysctl": "sysctl reads kernel parameters", "tac": "tac prints lines in reverse order",
    "tail": "tail keeps the last lines", "tar": "tar creates or extracts archives",
    "tee": "tee copies its input to a file and to the output", "test": "test checks a condition",
    "touch": "touch creates files or updates their times", "tr": "tr translates or deletes characters",
    "tree": "tree draws the directory tree", "true": "true succeeds", "ulimit": "ulimit shows resource limits",
    "umask": "umask shows the file-creation mask", "uname": "uname describes the kernel",
    "uniq": "uniq collapses repeated lines", "uptime": "uptime shows how long the system has run",
    "vmstat": "vmstat reports virtual-memory statistics", "w": "w shows who is logged in and what they run",
    "wall": "wall broadcasts a message", "wc": "wc counts lines, words and bytes", "which": "which locates a command",
    "who": "who lists logged-in users", "whoami": "whoami prints the user name",
    "xargs": "xargs turns input lines into arguments", "xxd": "xxd dumps bytes in hex", "yes": "yes repeats a line",
    "zcat": "zcat prints compressed files",
}

# Option meanings per program: "-x" single letters (combined letters such as -la are split) and long forms.
OPTIONS = {
    "find": {
        "-name": "by name", "-iname": "by name ignoring case", "-type": "by type",
        "-mtime": "by modification time in days", "-mmin": "by modification time in minutes",
        "-atime": "by access time in days", "-amin": "by access time in minutes",
        "-cmin": "by status-change time in minutes", "-ctime": "by status-change time in days", "-size": "by size",
        "-perm": "by permissions", "-empty": "empty files or directories", "-maxdepth": "limits the depth",
        "-mindepth": "skips the top levels", "-delete": "deletes what matches",
        "-exec": "runs a command on each match", "-execdir": "runs a command in each match's directory",
        "-print0": "NUL-separated names", "-path": "by path pattern",
        "-daystart": "measures times from the start of today", "-depth": "contents before their directory",
        "-newer": "newer than a reference file", "-user": "by owner", "-printf": "a custom output format",
        "-not": "negates the next test", "!": "negates the next test", "-o": "either test", "-or": "either test",
        "-type f": "regular files only", "-type d": "directories only", "-type l": "symbolic links only",
    },
    "grep": {
        "-r": "recursive", "-R": "recursive", "-i": "ignoring case", "-n": "with line numbers",
        "-l": "file names only", "-w": "whole words", "-o": "only the matching part", "-c": "counts matches",
        "-v": "non-matching lines", "-E": "extended regular expressions", "-H": "with file names",
        "-q": "quiet, only the exit status", "-m": "stops after a number of matches", "-e": "the pattern follows",
    },
    "ls": {
        "-l": "long format", "-a": "including hidden files", "-h": "human-readable sizes", "-S": "sorted by size",
        "-t": "sorted by time", "-d": "directories themselves", "-s": "with sizes in blocks", "-R": "recursive",
    },
    "sort": {
        "-n": "numerically", "-r": "in reverse", "-h": "by human-readable sizes", "-u": "dropping duplicates",
        "-k": "by a key field", "-f": "ignoring case", "-z": "NUL-separated",
    },
    "wc": {
        "-l": "lines only", "-w": "words only", "-c": "bytes only",
    },
    "du": {
        "-s": "a total per argument", "-h": "human-readable", "-a": "files too", "-b": "in bytes",
    },
    "head": {
        "-n": "a number of lines", "-c": "a number of bytes",
    },
    "tail": {
        "-n": "a number of lines",
    },
    "uniq": {
        "-c": "with counts", "-d": "only repeated lines", "-i": "ignoring case", "-D": "all repeated lines",
        "-w": "comparing a prefix",
    },
    "cut": {
        "-d": "with a delimiter", "-f": "selects fields", "-c": "selects characters", "-b": "selects bytes",
    },
    "tar": {
        "-c": "creates an archive", "-x": "extracts", "-z": "gzip-compressed", "-f": "the archive file",
        "-v": "verbose", "-C": "into a directory",
    },
    "rm": {
        "-r": "recursive", "-f": "without asking",
    },
    "cp": {
        "-r": "recursive", "-R": "recursive", "-p": "keeping attributes",
    },
    "mkdir": {
        "-p": "with parents as needed",
    },
    "ln": {
        "-s": "a symbolic link",
    },
    "gzip": {
        "-k": "keeping the original", "-d": "decompresses", "-c": "to the output",
    },
    "sed": {
        "-n": "printing only what is asked", "-i": "editing in place", "-e": "an editing script",
    },
    "xargs": {
        "-0": "NUL-separated input", "-I": "placing each item where {} stands", "-n": "a number of items per run",
        "-i": "placing each item where {} stands",
    },
    "od": {
        "-c": "as characters", "-t": "in a chosen type",
    },
    "tree": {
        "-a": "hidden files too", "-L": "limits the depth", "-p": "with permissions", "-f": "full paths",
    },
    "df": {
        "-h": "human-readable", "-m": "in MiB", "-k": "in KiB",
    },
    "diff": {
        "-q": "only whether files differ", "-r": "recursive", "-U": "unified context",
    },
    "paste": {
        "-s": "one file per line", "-d": "with a delimiter",
    },
    "uname": {
        "-a": "everything", "-v": "the kernel version", "-r": "the release",
    },
    "chmod": {},
    "md5sum": {},
    "touch": {
        "-m": "modification time", "-t": "a given time",
    },
}
# Options that take the next word as their value (so it is not read as a program or an option).
TAKES_VALUE = {
    "xargs": {"-I", "-n", "-d", "-P", "-L", "-s", "-E", "-a"},
    "find": {"-name", "-iname", "-type", "-mtime", "-mmin", "-atime", "-amin", "-cmin", "-ctime", "-size", "-perm",
             "-maxdepth", "-mindepth", "-path", "-newer", "-user", "-printf"},
}
WRAPPERS = {"sudo", "time", "nice", "nohup", "command", "builtin", "exec", "env"}
OPERATORS = {"|", "||", "&&", ";", "&", "(", ")", ";;", "|&", "`", "$(", "{", "}"}
SUBMIT_RATIONALE = "The last command did what the task asks, so I submit."
GENERIC_RATIONALE = "I run the command that does what the task asks."


def _tokens(command: str) -> list[str] | None:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # unbalanced quotes
        return None


def _program(word: str) -> str:
    return os.path.basename(word.lstrip("($`"))


def _describe(program: str, args: list[str]) -> str:
    base = PROGRAMS.get(program, f"{program} does its part").split(" ", 1)[1]
    known = OPTIONS.get(program, {})
    notes: list[str] = []
    skip_value = TAKES_VALUE.get(program, set())
    i = 0
    while i < len(args) and len(notes) < 4:
        arg = args[i]
        if program == "find" and arg == "-type" and i + 1 < len(args) and f"-type {args[i + 1]}" in known:
            note = f"-type {args[i + 1]}: {known[f'-type {args[i + 1]}']}"
            if note not in notes:
                notes.append(note)
            i += 2
            continue
        if arg in known:
            note = f"{arg}: {known[arg]}"
            if note not in notes:
                notes.append(note)
        elif arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and program in OPTIONS \
                and program != "find":
            for letter in arg[1:]:
                meaning = known.get(f"-{letter}")
                if meaning and f"-{letter}: {meaning}" not in notes:
                    notes.append(f"-{letter}: {meaning}")
        i += 2 if arg in skip_value else 1
    return f"{program}, which {base}" + (f" ({', '.join(notes)})" if notes else "")


def stages(command: str) -> list[tuple[str, list[str]]] | None:
    """The (program, arguments) of every command in a command line, in order; None if unparsable."""
    tokens = _tokens(command)
    if tokens is None:
        return None
    result: list[tuple[str, list[str]]] = []
    current: list[str] = []

    def flush() -> None:
        words = list(current)
        current.clear()
        # Leading assignments (X=1 cmd) and wrappers (sudo, time, env ...) are not the program.
        while words and ("=" in words[0].split("/")[0] and not words[0].startswith("-")
                         or _program(words[0]) in WRAPPERS or _program(words[0]) in ("", "$")):
            words.pop(0)
        if not words:
            return
        program, args = _program(words[0]), words[1:]
        result.append((program, args))
        # Commands that run another command: describe that one too.
        inner: list[str] = []
        if program == "xargs":
            j = 0
            takes = TAKES_VALUE["xargs"]
            while j < len(args) and args[j].startswith("-"):
                j += 2 if args[j] in takes else 1
            inner = args[j:]
        elif program == "find" and ("-exec" in args or "-execdir" in args):
            k = args.index("-exec") if "-exec" in args else args.index("-execdir")
            inner = [a for a in args[k + 1:] if a not in (";", "+", "\\;")]
        if inner and _program(inner[0]) not in ("", "{}"):
            result.append((_program(inner[0]), inner[1:]))

    for token in tokens:
        if token in OPERATORS or (token and set(token) <= set("|&;()<>")):
            if token in ("<", ">", ">>", "2>", "&>", "<<", "<(", ">("):
                current.append(token)
                continue
            flush()
        else:
            current.append(token)
    flush()
    return result


def rationale(command: str) -> str:
    """One or two sentences on what `command` does, in the agent's voice; never its output."""
    if command.strip() == "submit":
        return SUBMIT_RATIONALE
    parsed = stages(command)
    if not parsed:
        return GENERIC_RATIONALE
    seen: list[str] = []
    parts: list[str] = []
    for program, args in parsed:
        if program in seen:
            continue
        seen.append(program)
        parts.append(_describe(program, args))
    text = f"To do what the task asks I run {'; then '.join(parts)}."
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS - 1].rsplit(" ", 1)[0] + "."
    return text
