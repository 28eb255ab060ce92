"""Jinja2 templates of the teacher (files under services/teacher/templates/)."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jinja2

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


def _sentence(text: str) -> str:
    """Capitalised first letter and a closing period: "check the fridge" -> "Check the fridge."."""
    text = re.sub(r"\s+", " ", (text or "").strip())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def _squash(text: str) -> str:
    """Join a rendered multi-line template into single-spaced prose."""
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,
    )
    env.filters["sentence"] = _sentence
    env.filters["squash"] = _squash
    env.filters["tojson_text"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def exists(name: str) -> bool:
    return (TEMPLATE_DIR / name).is_file()


def render(name: str, **context) -> str:
    return environment().get_template(name).render(**context).strip()


def render_prose(name: str, **context) -> str:
    """Render and squash whitespace: for templates that produce one paragraph."""
    return _squash(render(name, **context))
