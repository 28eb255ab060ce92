"""`webshop`: a seeded synthetic WebShop (pure Python + bm25s), and an adapter to a real installation.

Modules: data (the vocabulary), catalogue (seeded products), search (BM25 via bm25s), reward
(WebShop's reward), goals (goal records, instructions, splits, task ids), shop (pages, clickables,
transitions, texts), task (a goal over the shop and its satisfying products), experts (planner /
searcher), backend (the synthetic Backend), adapter (a real WebShop, by HTTP or by path).

`webshop_backend(**options)` is what the registry creates: the adapter when `server` or `path` is
given, else the synthetic shop.
"""

from __future__ import annotations

from typing import Any

from services.environment.backends.base import Backend

ADAPTER_OPTIONS = ("server", "path")


def webshop_backend(**options: Any) -> Backend:
    """The webshop backend for these options (strings accepted, as from `--env-option`)."""
    if any(str(options.get(key) or "").strip() for key in ADAPTER_OPTIONS):
        from services.environment.backends.webshop.adapter import WebShopAdapterBackend

        return WebShopAdapterBackend(**options)
    options = {k: v for k, v in options.items() if k not in ADAPTER_OPTIONS}
    from services.environment.backends.webshop.backend import WebShopBackend

    return WebShopBackend(**options)


__all__ = ["ADAPTER_OPTIONS", "webshop_backend"]
