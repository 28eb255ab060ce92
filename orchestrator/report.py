"""Results of a run: a table a person reads (terminal and markdown) and results.png.

Rows: the untrained student, BC (iteration 0), each LEAP iteration, and the reference experts
(searching expert, privileged planner) on the same held-out tasks. Columns per split: success %,
mean score, mean steps; plus a per-task-type breakdown, and the work of every phase (wall time,
tokens prefilled, served from cache, decoded and trained: orchestrator.work).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.config import RunConfig
from orchestrator.work import OPTIONAL_WORK_COLUMNS, WORK_COLUMNS
from services.runtime.experts import REFERENCE_EXPERTS
from services.runtime.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def _label(name: str) -> str:
    if name == "baseline":
        return "untrained student"
    if name == "iter0":
        return "BC (iter 0)"
    if name.startswith("iter"):
        return f"LEAP iter {name[4:]}"
    if name in REFERENCE_EXPERTS:
        return REFERENCE_EXPERTS[name][1]
    return name.replace("_", " ")


def collect_results(run_dir: Path, config: RunConfig) -> dict:
    metrics_dir = Path(run_dir) / "metrics"
    order = ["baseline", "iter0"] + [f"iter{i}" for i in range(1, config.iterations + 1)] + list(REFERENCE_EXPERTS)
    rows = []
    for name in order:
        path = metrics_dir / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        rows.append({"name": name, "label": _label(name), "splits": {
            split: {k: v for k, v in m.items() if k in ("overall", "by_task_type")}
            for split, m in data["splits"].items()}})
    return {"run": config.name, "seed": config.seed, "splits": config.environment.eval_splits,
            "eval_tasks": config.environment.eval_tasks, "rows": rows, "profile": phase_profile(run_dir)}


def phase_profile(run_dir: Path) -> list[dict]:
    """Every finished phase's wall time and its whole work record, from the run's state.json (phases in run
    order); the tables show the WORK_COLUMNS of it."""
    try:
        state = json.loads((Path(run_dir) / "state.json").read_text())
    except (OSError, ValueError):
        return []
    profile = []
    for phase in state.get("phases", []):
        if phase.get("status") != "done":
            continue
        started, finished = float(phase.get("started_at", 0.0)), float(phase.get("finished_at", 0.0))
        work = (phase.get("outputs") or {}).get("work") or {}
        profile.append({"phase": phase["name"], "seconds": round(max(0.0, finished - started), 2),
                        "started_at": started, "finished_at": finished, **work})
    for entry in profile:
        entry["beside"] = [other["phase"] for other in profile if other is not entry and
                           other["started_at"] < entry["finished_at"] and entry["started_at"] < other["finished_at"]]
    return profile


def wall_seconds(profile: list[dict]) -> float:
    """The wall time the phases took together: phases that ran side by side count once."""
    spans = sorted((e["started_at"], e["finished_at"]) for e in profile if "started_at" in e)
    if len(spans) < len(profile):  # a profile without times (an older results.json): the plain sum
        return sum(e["seconds"] for e in profile)
    total, end = 0.0, float("-inf")
    for start, finish in spans:
        if finish <= end:
            continue
        total += finish - max(start, end)
        end = finish
    return total


#: Marks a phase that ran beside another one in the work tables.
BESIDE_MARK = " ∥"
BESIDE_NOTE = "∥ ran side by side with the other phase so marked; the total is wall time, not the sum"


def _phase_label(entry: dict) -> str:
    return entry["phase"] + (BESIDE_MARK if entry.get("beside") else "")


_WORK_TITLES = ("phase", "seconds", "student steps", "prefilled tokens", "cached prompt tokens", "decoded tokens",
                "trained tokens")


def _optional_work_columns(profile: list[dict]) -> list[tuple[str, str, str]]:
    """The optional counters (OPTIONAL_WORK_COLUMNS) that some phase of the profile has above zero."""
    return [c for c in OPTIONAL_WORK_COLUMNS if any(entry.get(c[0]) for entry in profile)]


def _work_titles(optional: list[tuple[str, str, str]]) -> list[str]:
    return list(_WORK_TITLES) + [title for _key, title, _note in optional]


def _work_cells(entry: dict, optional: list[tuple[str, str, str]] = ()) -> list[str]:
    keys = list(WORK_COLUMNS) + [key for key, _title, _note in optional]
    return [f"{entry['seconds']:.1f}"] + [f"{entry[k]:,.0f}" if k in entry else "" for k in keys]


def _work_notes(profile: list[dict], optional: list[tuple[str, str, str]]) -> list[str]:
    return ([BESIDE_NOTE] if any(entry.get("beside") for entry in profile) else []) + [note for *_, note in optional]


def work_table(results: dict) -> Table:
    table = Table(title="work per phase")
    profile = results.get("profile", [])
    optional = _optional_work_columns(profile)
    for i, title in enumerate(_work_titles(optional)):
        table.add_column(title, justify="left" if i == 0 else "right", style="bold" if i == 0 else None)
    for entry in profile:
        table.add_row(_phase_label(entry), *_work_cells(entry, optional))
    if profile:
        table.add_row("total", *_work_cells(_total(profile), optional), style="bold")
    notes = _work_notes(profile, optional)
    if notes:
        table.caption = "\n".join(notes)
    return table


def _total(profile: list[dict]) -> dict:
    total = {"seconds": round(wall_seconds(profile), 2)}
    for key in list(WORK_COLUMNS) + [key for key, *_ in OPTIONAL_WORK_COLUMNS]:
        if any(key in e for e in profile):
            total[key] = sum(e.get(key, 0) for e in profile)
    return total


#: Counts shown as a column of their own when any episode has them: key, title, style, note.
_COUNTS = (
    ("errors", "errors", "red", "errors: episodes that could not be played, counted as failures"),
    ("cycles", "cycles", "yellow", "cycles: episodes stopped when the student came back to an earlier state "
                                   "(scored as they would end at the horizon)"),
)


def _counts(results: dict) -> list[tuple[str, str, str, str]]:
    """The count columns the tables show: those that some episode of some row has."""
    return [c for c in _COUNTS if any(o.get(c[0]) for row in results["rows"] for split in row["splits"].values()
                                      if (o := split.get("overall")))]


def _overall_cells(o: dict | None, counts: list) -> list[str]:
    if not o:
        return ["-"] * (3 + len(counts))
    cells = [f"{o['success']:.1f}", f"{o['score']:.2f}", f"{o['mean_steps']:.1f}"]
    return cells + [str(o.get(key, 0)) for key, *_ in counts]


def results_table(results: dict) -> Table:
    counts = _counts(results)
    table = Table(title=f"LEAP results ({results['run']}, {results['eval_tasks']} tasks per split)",
                  caption="; ".join(note for *_, note in counts) or None)
    table.add_column("agent", style="bold")
    for split in results["splits"]:
        table.add_column(f"{split} success %", justify="right")
        table.add_column("score", justify="right")
        table.add_column("steps", justify="right")
        for _key, title, style, _note in counts:
            table.add_column(title, justify="right", style=style)
    for row in results["rows"]:
        cells = [row["label"]]
        for split in results["splits"]:
            cells += _overall_cells(row["splits"].get(split, {}).get("overall"), counts)
        table.add_row(*cells)
    return table


def task_type_table(results: dict, split: str) -> Table:
    types = sorted({t for r in results["rows"] for t in r["splits"].get(split, {}).get("by_task_type", {})})
    table = Table(title=f"success % by task type ({split})")
    table.add_column("agent", style="bold")
    for t in types:
        table.add_column(t.replace("_", " "), justify="right")
    for row in results["rows"]:
        by_type = row["splits"].get(split, {}).get("by_task_type", {})
        table.add_row(row["label"], *[f"{by_type[t]['success']:.0f}" if t in by_type else "-" for t in types])
    return table


def markdown(results: dict) -> str:
    counts = _counts(results)
    notes = "; ".join(note for *_, note in counts)
    lines = [f"# LEAP results: {results['run']}", "", f"{results['eval_tasks']} held-out tasks per split"
             + (f" ({notes})." if notes else "."), ""]
    per_split = "success % | score | steps" + "".join(f" | {title}" for _key, title, *_ in counts)
    header = "| agent | " + " | ".join(f"{s} {per_split}" for s in results["splits"]) + " |"
    lines += [header, "|" + "---|" * (1 + (3 + len(counts)) * len(results["splits"]))]
    for row in results["rows"]:
        cells = []
        for split in results["splits"]:
            cells += _overall_cells(row["splits"].get(split, {}).get("overall"), counts)
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    profile = results.get("profile", [])
    if profile:
        optional = _optional_work_columns(profile)
        titles = _work_titles(optional)
        lines += ["", "## Work per phase", "", "| " + " | ".join(titles) + " |", "|---|" + "---:|" * (len(titles) - 1)]
        for entry in profile + [{"phase": "total", **_total(profile)}]:
            lines.append(f"| {_phase_label(entry)} | " + " | ".join(_work_cells(entry, optional)) + " |")
        for note in _work_notes(profile, optional):
            lines += ["", note + "."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = results["splits"][0]
    rows = {r["name"]: r for r in results["rows"]}

    def success(name):
        o = rows.get(name, {}).get("splits", {}).get(split, {}).get("overall")
        return None if o is None else o["success"]

    iterations = sorted(int(n[4:]) for n in rows if n.startswith("iter"))
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    xs = iterations
    ys = [success(f"iter{i}") for i in iterations]
    ax.plot(xs, ys, marker="o", linewidth=2.5, color="#1f77b4", label="student (BC at 0, then LEAP)")
    for x, y in zip(xs, ys):
        ax.annotate(f"{y:.0f}%", (x, y), textcoords="offset points", xytext=(0, 8), ha="center")
    styles = {"baseline": ("#7f7f7f", ":"), "searching_expert": ("#2ca02c", "--"), "privileged_planner": ("#d62728", "-.")}
    for name, (color, ls) in styles.items():
        label = _label(name)
        y = success(name)
        if y is not None:
            ax.axhline(y, color=color, linestyle=ls, linewidth=1.5, label=f"{label} ({y:.0f}%)")
    if xs:
        ax.set_xlim(xs[0] - 0.4, xs[-1] + 0.4)
    ax.set_xticks(xs or [0])
    ax.set_xticklabels(["BC" if x == 0 else f"LEAP {x}" for x in xs] or ["BC"])
    ax.set_ylim(-2, 105)
    ax.set_ylabel(f"success % on {split}")
    ax.set_xlabel("iteration")
    ax.set_title(f"LEAP on {results['run']}: success vs iteration ({results['eval_tasks']} tasks)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def write_report(run_dir: Path, config: RunConfig) -> dict[str, Path]:
    results = collect_results(run_dir, config)
    run_dir = Path(run_dir)
    return {
        "results_json": atomic_write_json(run_dir / "results.json", results),
        "results_md": atomic_write_text(run_dir / "results.md", markdown(results)),
        "results_png": plot(results, run_dir / "results.png"),
    }


def print_report(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    console.print(results_table(results))
    for split in results["splits"]:
        console.print(task_type_table(results, split))
    if results.get("profile"):
        console.print(work_table(results))
