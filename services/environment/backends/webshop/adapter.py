"""The adapter to a real WebShop installation (princeton-nlp/WebShop), for users who have one.

Two ways to reach it, chosen by option (`leap env serve --env webshop -o webshop:server=... `):

- `server=http://HOST:PORT`: WebShop's web site (`python -m web_agent_site.app`, port 3000), played
  over HTTP as ReAct and LEAP play it: GET `/<session>` (the search page; a session id containing
  "fixed_<i>" selects goal i), `/search_results/<session>/<keywords>/<page>`,
  `/item_page/<session>/<asin>/<keywords>/<page>/<options>`,
  `/item_sub_page/<session>/<asin>/<keywords>/<page>/<Description|Features|Reviews>/<options>`,
  `/done/<session>/<asin>/<options>` (the score). The site keeps the goal to itself, so this mode
  has no privileged state and no experts.
- `path=DIR`: a local checkout whose `web_agent_site` package (with its data and search index set
  up by its setup.sh) imports; its text environment (`WebAgentTextEnv`) is played in this process,
  and the goal records are read from its server object, so this mode has privileged state and a
  planner (it searches, opens the goal's product, selects the goal's options, buys).

Either way the pages are parsed from WebShop's HTML and rendered in our text format (shop.py):
clickables in [brackets], chosen options in [[double brackets]], the instruction on the search page
only. Hidden parts of a page are skipped: WebShop's done page carries the whole goal record in a
`display:none` block, which its own text mode would pass to the agent.

Splits follow WebShop's baselines: valid_unseen = its test goals 0-499, valid_seen = its eval goals
500-1499, train = goals 1500 on (`goals=N` says how many the server has; path mode reads it).
"""

from __future__ import annotations

import html.parser
import json
import re
import secrets as _secrets
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from services.environment.backends import base
from services.environment.backends.webshop import reward as rw
from services.environment.backends.webshop.experts import keyword_query
from services.environment.backends.webshop.shop import (
    BACK_TO_SEARCH,
    BUY_NOW,
    NEXT_PAGE,
    PREV_PAGE,
    SEARCH_TEMPLATE,
    SUB_PAGES,
    parse_action,
)
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

NAME = "webshop"
SPLITS = ("train", "valid_seen", "valid_unseen")
DEFAULT_GOALS = 6910
MAX_PAGE_BYTES = 4 * 1024 * 1024
_TASK_ID_RE = re.compile(r"(train|valid_seen|valid_unseen)-([0-9]{1,9})", re.ASCII)
_SUB_PAGE_NAMES = {"description": "Description", "features": "Features", "reviews": "Reviews"}


# --- configuration -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdapterConfig:
    """Where the real WebShop is and how to play it."""

    server: str = ""          # base URL of WebShop's web site
    path: str = ""            # a checkout whose web_agent_site package imports
    goals: int = DEFAULT_GOALS
    horizon: int = 15
    timeout_s: float = 30.0
    num_products: int = 0     # path mode: WebShop's num_products (0: all; 100, 1000, 100000 have indexes)

    @property
    def mode(self) -> str:
        return "path" if self.path else "server"

    def split_range(self, split: str) -> range:
        if split == "valid_unseen":
            return range(0, min(500, self.goals))
        if split == "valid_seen":
            return range(min(500, self.goals), min(1500, self.goals))
        return range(min(1500, self.goals), self.goals)


_INT_RE = re.compile(r"[0-9]{1,9}", re.ASCII)
_FLOAT_RE = re.compile(r"[0-9]{1,4}(\.[0-9]{1,3})?", re.ASCII)


def parse_adapter_options(options: dict[str, Any]) -> AdapterConfig:
    """An AdapterConfig from `--env-option` values, validated (InvalidArgument naming the problem)."""
    known = {"server", "path", "goals", "horizon", "timeout_s", "num_products"}
    values: dict[str, Any] = {}
    for key, raw in options.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise InvalidArgument(f"unknown option {str(key)[:40]!r} of the webshop adapter; valid options: "
                                  f"{', '.join(sorted(known))}")
        text = str(raw).strip()
        if "\x00" in text or len(text) > 4096:
            raise InvalidArgument(f"webshop option {name} is not a usable value")
        values[name] = text
    server, path = values.pop("server", ""), values.pop("path", "")
    if server and path:
        raise InvalidArgument("give the webshop adapter either server=URL or path=DIR, not both")
    if not server and not path:
        raise InvalidArgument("the webshop adapter needs server=http://HOST:PORT or path=DIR")
    if server:
        server = _check_server(server)
    if path:
        path = _check_path(path)
    parsed: dict[str, Any] = {"server": server, "path": path}
    for name, text in values.items():
        if name == "timeout_s":
            if not _FLOAT_RE.fullmatch(text) or not 0 < float(text) <= 600:
                raise InvalidArgument(f"webshop option timeout_s={text[:20]!r} must be a number in (0, 600]")
            parsed[name] = float(text)
            continue
        if not _INT_RE.fullmatch(text):
            raise InvalidArgument(f"webshop option {name}={text[:20]!r} is not a whole number")
        number = int(text)
        if name == "goals" and not 1 <= number <= 10_000_000:
            raise InvalidArgument("webshop option goals must be between 1 and 10000000")
        if name == "horizon" and not 1 <= number <= 1000:
            raise InvalidArgument("webshop option horizon must be between 1 and 1000")
        if name == "num_products" and number not in (0, 100, 1000, 100000):
            raise InvalidArgument("webshop option num_products must be 0 (all), 100, 1000 or 100000 "
                                  "(the sizes WebShop builds search indexes for)")
        parsed[name] = number
    return AdapterConfig(**parsed)


def _check_server(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument(f"webshop server={url[:80]!r} is not a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"webshop server={url[:80]!r} must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidArgument("webshop server URL must not carry credentials, a query or a fragment")
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidArgument("webshop server URL must not contain spaces or control characters")
    del port
    return url.rstrip("/")


def _check_path(path: str) -> str:
    folder = Path(path).expanduser()
    try:
        resolved = folder.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InvalidArgument(f"webshop path={path[:200]!r} does not exist") from None
    if not resolved.is_dir() or not (resolved / "web_agent_site").is_dir():
        raise InvalidArgument(f"webshop path={path[:200]!r} is not a WebShop checkout (no web_agent_site/ in it)")
    return str(resolved)


# --- pages -------------------------------------------------------------------------------------------

@dataclass
class Page:
    """A WebShop page as parsed from its HTML: its lines of text and what can be clicked."""

    kind: str                                  # index | results | item | sub | done | other
    lines: list[str] = field(default_factory=list)
    buttons: list[str] = field(default_factory=list)          # normalized labels
    products: list[str] = field(default_factory=list)         # asins, as shown
    options: list[tuple[str, str]] = field(default_factory=list)  # (option name, value)
    has_search: bool = False
    instruction: str = ""
    score: float | None = None


def _button_label(text: str) -> str:
    label = " ".join(text.split()).lower()
    if label.startswith("<"):
        return PREV_PAGE  # "< Prev", "< Back to Results", "< Back to Item Page"
    if label.startswith("next"):
        return NEXT_PAGE
    return label


class _PageParser(html.parser.HTMLParser):
    """Visible text of WebShop's pages in document order, with its buttons, product links and options.
    Skips head/script/style/title and hidden blocks (style display:none or the hidden attribute)."""

    _SKIP = {"head", "script", "style", "title", "iframe", "noscript"}
    _VOID = {"br", "img", "input", "link", "meta", "hr", "source", "area", "base", "col", "embed", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool, str]] = []  # (tag, hidden-or-skipped, role)
        self.items: list[tuple[str, str]] = []  # (role, text)
        self.options: list[tuple[str, str]] = []
        self.has_search = False
        self._radio_names: dict[str, str] = {}

    def _hidden(self) -> bool:
        return any(h for _, h, _ in self.stack)

    def _role(self) -> str:
        for _, _, role in reversed(self.stack):
            if role:
                return role
        return ""

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        style = a.get("style", "").replace(" ", "").lower()
        hidden = tag in self._SKIP or "display:none" in style or "hidden" in a
        role = ""
        if tag == "button":
            role = "button"
        elif tag == "a" and "product-link" in a.get("class", "").split():
            role = "product"
        elif tag == "label":
            role = "label"
        elif a.get("id") == "instruction-text":
            role = "instruction"
        elif a.get("id") == "reward":
            role = "reward"
        if tag == "input":
            if a.get("id") == "search_input" and not self._hidden():
                self.has_search = True
            if a.get("type", "").lower() == "radio" and not self._hidden() and not hidden:
                self.options.append((a.get("name", "").lower(), a.get("value", "")))
            return
        if tag in self._VOID:
            return
        self.stack.append((tag, hidden, role))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        text = " ".join(data.split())
        if text and not self._hidden():
            self.items.append((self._role(), text))


def parse_page(html_text: str, kind: str) -> Page:
    """Parse one WebShop page (its kind is known from the URL that fetched it)."""
    parser = _PageParser()
    parser.feed(html_text)
    parser.close()
    page = Page(kind=kind, has_search=parser.has_search)
    instruction_parts: list[str] = []
    reward_parts: list[str] = []
    for role, text in parser.items:
        if role == "instruction":
            instruction_parts.append(text)
            continue
        if role == "reward":
            reward_parts.append(text)
            continue
        if role == "button":
            label = _button_label(text)
            if label == "search":
                continue
            page.buttons.append(label)
            page.lines.append(f"[{BUTTON_TEXT.get(label, text)}]")
        elif role == "product":
            page.products.append(text.strip())
            page.lines.append(f"[{text.strip()}]")
        elif role == "label":
            continue  # options are rendered from the radio inputs below
        else:
            page.lines.append(text)
    page.options = [(n, v) for n, v in parser.options if v]
    instruction = " ".join(instruction_parts)
    page.instruction = re.sub(r"^Instruction:\s*", "", instruction).split(" Current Query:")[0].strip()
    if reward_parts:
        numbers = re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", " ".join(reward_parts).split(")", 1)[-1])
        if numbers:
            page.score = float(numbers[0])
    return page


BUTTON_TEXT = {BACK_TO_SEARCH: "Back to Search", NEXT_PAGE: "Next >", PREV_PAGE: "< Prev", BUY_NOW: "Buy Now",
               "description": "Description", "features": "Features", "reviews": "Reviews"}


def render_page(page: Page, chosen: dict[str, str], instruction: str) -> str:
    """Our text of a parsed page."""
    if page.kind == "index":
        return f"WebShop\nInstruction:\n{instruction}\n[Search]"
    if page.kind == "done":
        text = "Thank you for shopping with us!"
        if page.score is not None:
            text += f"\nYour score (min 0.0, max 1.0): {page.score:.2f}"
        return text
    lines = [line for line in page.lines if not line.startswith("Your code")]
    if page.kind == "results":
        # "Results" / "Page 2 (11-20) of 50 total results" / buttons -> our order and wording.
        lines = [line for line in lines if line != "Results"]
        for i, line in enumerate(lines):
            match = re.fullmatch(r"Page (\d+) \(\d+-\d+\) of (\d+) total results", line)
            if match:
                lines[i] = f"Page {match.group(1)} (Total results: {match.group(2)})"
        if "[Back to Search]" in lines:
            lines.remove("[Back to Search]")
            lines.insert(0, "[Back to Search]")
    if page.kind == "item" and page.options:
        names: list[str] = []
        for name, _ in page.options:
            if name not in names:
                names.append(name)
        lines = [line for line in lines if line.lower() not in names]  # the option headings
        option_lines = [name + " " + "".join(f"[[{v}]]" if chosen.get(name) == v else f"[{v}]"
                                             for n, v in page.options if n == name) for name in names]
        # Options go right after the navigation buttons, as on the page.
        at = next((i for i, line in enumerate(lines) if not line.startswith("[")), len(lines))
        lines[at:at] = option_lines
    return "\n".join(lines)


def clickables(page: Page) -> list[str]:
    """Lower-case clickables of a page (WebShop's get_available_actions), without its search button."""
    items: list[str] = []
    for label in page.buttons:
        if label not in items:
            items.append(label)
    for asin in page.products:
        if asin.lower() not in items:
            items.append(asin.lower())
    for _, value in page.options:
        if value.lower() not in items:
            items.append(value.lower())
    return items


# --- the HTTP client ---------------------------------------------------------------------------------

class WebShopSite:
    """WebShop's web site over HTTP: one GET per page, with a timeout and a size limit."""

    def __init__(self, base_url: str, timeout_s: float):
        self.base = base_url
        self.timeout_s = timeout_s

    def get(self, *segments: str) -> str:
        path = "/".join(urllib.parse.quote(s, safe="") for s in segments)
        url = f"{self.base}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as response:  # noqa: S310 - configured URL
                body = response.read(MAX_PAGE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise Unavailable(f"the WebShop server answered {exc.code} for /{segments[0] if segments else ''}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unavailable(f"the WebShop server at {self.base} cannot be reached: {exc}") from None
        if len(body) > MAX_PAGE_BYTES:
            raise Unavailable("the WebShop server sent a page over 4 MiB")
        return body.decode("utf-8", "replace")


def _keywords_segment(query: str) -> str:
    # The site's index turns a query into query.lower().split(' ') and puts the list's repr in the URL.
    words = [w for w in query.lower().replace("/", " ").split(" ") if w]
    return repr(words)


@dataclass
class _Nav:
    """Where an adapter episode is on the site (WebShop keeps the same in its session)."""

    kind: str = "index"
    keywords: str = ""
    page_no: int = 1
    asin: str = ""
    options: dict[str, str] = field(default_factory=dict)
    sub: str = ""


def _choices(page: Page | None, over: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The candidates and action templates of a page (none once the episode is over)."""
    if over or page is None:
        return (), ()
    return tuple(f"click[{c}]" for c in clickables(page)), (SEARCH_TEMPLATE,) if page.has_search else ()


class HttpEpisode(base.EpisodeState):
    """An episode on WebShop's web site."""

    def __init__(self, site: WebShopSite, summary: base.TaskSummary, goal_index: int, horizon: int):
        self.site = site
        self.task = summary
        self.horizon = horizon
        self.session = f"leap{_secrets.token_hex(6)}_fixed_{goal_index}"
        self.nav = _Nav()
        self.page: Page | None = None
        self.instruction = ""

    def _load(self, nav: _Nav) -> Page:
        options = repr(nav.options)
        if nav.kind == "index":
            html_text = self.site.get(self.session)
        elif nav.kind == "results":
            html_text = self.site.get("search_results", self.session, nav.keywords, str(nav.page_no))
        elif nav.kind == "item":
            html_text = self.site.get("item_page", self.session, nav.asin, nav.keywords, str(nav.page_no), options)
        elif nav.kind == "sub":
            html_text = self.site.get("item_sub_page", self.session, nav.asin, nav.keywords, str(nav.page_no),
                                      _SUB_PAGE_NAMES[nav.sub], options)
        else:
            html_text = self.site.get("done", self.session, nav.asin, options)
        return parse_page(html_text, nav.kind)

    def _page_observation(self, text: str, valid: bool = True, truncated: bool = False) -> base.Observation:
        cands, templates = _choices(self.page, self._done)
        return self._observation(text, cands, action_templates=templates, truncated=truncated, valid=valid,
                                 reward=self._score if self._done and not truncated else 0.0,
                                 info={"page": self.nav.kind})

    def reset(self) -> base.Observation:
        self.page = self._load(self.nav)
        self.instruction = self.page.instruction or self.task.goal
        return self._page_observation(render_page(self.page, {}, self.instruction))

    def _next_nav(self, action: str) -> _Nav | None:
        parsed = parse_action(action)
        page = self.page
        if parsed is None or page is None:
            return None
        kind, arg = parsed
        nav = self.nav
        if kind == "search":
            if not page.has_search:
                return None
            return _Nav(kind="results", keywords=_keywords_segment(arg), page_no=1)
        if arg not in clickables(page):
            return None
        if arg == BACK_TO_SEARCH:
            return _Nav()
        if nav.kind == "results":
            if arg == NEXT_PAGE:
                return _Nav("results", nav.keywords, nav.page_no + 1)
            if arg == PREV_PAGE:
                return _Nav("results", nav.keywords, max(1, nav.page_no - 1))
            asin = next(a for a in page.products if a.lower() == arg)
            return _Nav("item", nav.keywords, nav.page_no, asin, {})
        if nav.kind == "item":
            if arg == PREV_PAGE:
                return _Nav("results", nav.keywords, nav.page_no)
            if arg in SUB_PAGES:
                return _Nav("sub", nav.keywords, nav.page_no, nav.asin, dict(nav.options), arg)
            if arg == BUY_NOW:
                return _Nav("done", nav.keywords, nav.page_no, nav.asin, dict(nav.options))
            for name, value in page.options:
                if value.lower() == arg:
                    options = dict(nav.options)
                    options[name] = value
                    return _Nav("item", nav.keywords, nav.page_no, nav.asin, options)
            return None
        if nav.kind == "sub" and arg == PREV_PAGE:
            return _Nav("item", nav.keywords, nav.page_no, nav.asin, dict(nav.options))
        return None

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        self._steps += 1
        nav = self._next_nav(action)
        if nav is None:
            valid, text = False, "Invalid action: that is not a search box action or a clickable of this page. " \
                                 "The page is unchanged.\n\n" + render_page(self.page, self.nav.options,
                                                                            self.instruction)
        else:
            self.page = self._load(nav)
            self.nav = nav
            valid, text = True, render_page(self.page, nav.options, self.instruction)
            if nav.kind == "done":
                self._done = True
                self._score = self.page.score or 0.0
                self._won = self._score >= 1.0
                return self._page_observation(text)
        truncated = self._steps >= self.horizon
        self._done = truncated
        return self._page_observation(text, valid, truncated)


# --- the local checkout ------------------------------------------------------------------------------

class LocalWebShop:
    """A WebShop checkout's text environment, loaded once (it loads products, goals and its index)."""

    def __init__(self, path: str, num_products: int):
        if path not in sys.path:
            sys.path.insert(0, path)
        try:
            from web_agent_site.envs.web_agent_text_env import SimServer, WebAgentTextEnv  # type: ignore
        except Exception as exc:  # noqa: BLE001 - a broken checkout raises anything
            raise FailedPrecondition(f"the WebShop checkout at {path} does not import: "
                                     f"{type(exc).__name__}: {str(exc)[:200]}") from None
        self._env_class = WebAgentTextEnv
        kwargs = {"num_products": num_products or None, "human_goals": True}
        self.env = WebAgentTextEnv(observation_mode="html", **kwargs)
        self.server = self.env.server
        del SimServer
        self.lock = threading.Lock()  # its server and search engine are not made for threads

    def new_env(self, prefix: str):
        return self._env_class(observation_mode="html", server=self.server, session_prefix=prefix)


class LocalEpisode(base.EpisodeState):
    """An episode in a checkout's text environment (pages parsed from its HTML like the site's)."""

    def __init__(self, local: LocalWebShop, summary: base.TaskSummary, goal_index: int, horizon: int):
        self.local = local
        self.task = summary
        self.horizon = horizon
        self.goal_index = goal_index
        with local.lock:
            self.env = local.new_env(f"leap{_secrets.token_hex(6)}_")
        self.page: Page | None = None
        self.instruction = ""
        self.chosen: dict[str, str] = {}
        self.seen: set[str] = set()  # product ids listed or opened so far (lower case)
        self._bought = False

    def _kind(self) -> str:
        url = self.env.state["url"] or ""
        for kind, marker in (("done", "/done/"), ("sub", "/item_sub_page/"), ("item", "/item_page/"),
                             ("results", "/search_results/")):
            if marker in url:
                return kind
        return "index"

    def _parse(self) -> Page:
        return parse_page(self.env.state["html"], self._kind())

    def _page_observation(self, text: str, valid: bool = True, truncated: bool = False) -> base.Observation:
        page = self.page
        cands, templates = _choices(page, self._done)
        return self._observation(text, cands, action_templates=templates, truncated=truncated, valid=valid,
                                 reward=self._score if self._bought else 0.0, info={"page": page.kind if page else ""})

    def reset(self) -> base.Observation:
        with self.local.lock:
            self.env.reset(session=self.goal_index)
            self.page = self._parse()
        self.instruction = self.page.instruction or self.task.goal
        return self._page_observation(render_page(self.page, {}, self.instruction))

    def apply(self, action: str) -> bool:
        """Step the underlying environment when the action is valid on the page; whether it was."""
        parsed = parse_action(action)
        page = self.page
        if parsed is None or page is None:
            return False
        kind, arg = parsed
        if kind == "search" and not page.has_search:
            return False
        if kind == "click" and arg not in clickables(page):
            return False
        with self.local.lock:
            _, reward, done, _ = self.env.step(f"{kind}[{arg}]")
            before = page.kind
            self.page = self._parse()
            self.seen.update(a.lower() for a in self.page.products)
            if self.page.kind == "item":
                self.seen.add(str(self.env.server.user_sessions[self.env.session].get("asin") or "").lower())
        if kind == "click":
            if arg == BACK_TO_SEARCH or (before == "item" and arg == PREV_PAGE):
                self.chosen = {}
            for name, value in page.options:
                if value.lower() == arg:
                    self.chosen[name] = value
        if done:
            self._bought = True
            self._score = float(reward)
            self._won = self._score >= 1.0
        return True

    def step(self, action: str) -> base.Observation:
        self._begin_step()
        self._steps += 1
        valid = self.apply(action)
        text = render_page(self.page, self.chosen, self.instruction)
        if not valid:
            text = "Invalid action: that is not a search box action or a clickable of this page. The page is " \
                   "unchanged.\n\n" + text
        truncated = not self._bought and self._steps >= self.horizon
        self._done = self._bought or truncated
        if self._bought:
            text = f"Thank you for shopping with us!\nYour score (min 0.0, max 1.0): {self._score:.2f}"
        return self._page_observation(text, valid, truncated)


# --- the backend -------------------------------------------------------------------------------------

class WebShopAdapterBackend(base.Backend):
    """A real WebShop behind our Backend interface (options: see AdapterConfig)."""

    name = NAME

    def __init__(self, **options: Any):
        self.config = parse_adapter_options(options)
        self._local: LocalWebShop | None = None
        self._site: WebShopSite | None = None
        self._instructions: dict[int, str] = {}
        self._lock = threading.Lock()
        if self.config.mode == "path":
            self._local = LocalWebShop(self.config.path, self.config.num_products)
            self.config = AdapterConfig(path=self.config.path, goals=len(self._local.server.goals),
                                        horizon=self.config.horizon, timeout_s=self.config.timeout_s,
                                        num_products=self.config.num_products)
        else:
            self._site = WebShopSite(self.config.server, self.config.timeout_s)

    def spec(self) -> base.EnvironmentSpec:
        where = self.config.path or self.config.server
        return base.EnvironmentSpec(
            name=NAME, description=f"WebShop (princeton-nlp) at {where}, played through its {self.config.mode}.",
            splits=SPLITS, action_space=base.TEMPLATED, default_horizon=self.config.horizon,
            version=f"webshop-real ({self.config.mode})", task_types=(),
            experts=("planner",) if self._local is not None else (),
        )

    def num_tasks(self, split: str) -> int:
        if split not in SPLITS:
            raise NotFound(f"unknown split {split[:64]!r} of {NAME}; valid splits: {', '.join(SPLITS)}")
        return len(self.config.split_range(split))

    def _goal_index(self, task_id: str) -> tuple[str, int]:
        match = _TASK_ID_RE.fullmatch(task_id) if isinstance(task_id, str) and len(task_id) <= 32 else None
        if match is not None:
            split, index = match.group(1), int(match.group(2))
            span = self.config.split_range(split)
            if 0 <= index < len(span):
                return split, span.start + index
        ranges = ", ".join(f"{s}-00000..{s}-{len(self.config.split_range(s)) - 1:05d}" for s in SPLITS)
        raise NotFound(f"unknown task {str(task_id)[:64]!r} of {NAME}; valid task ids: {ranges}")

    def _instruction(self, goal_index: int) -> str:
        if self._local is not None:
            return self._local.server.goals[goal_index]["instruction_text"]
        with self._lock:
            known = self._instructions.get(goal_index)
        if known is None:
            page = parse_page(self._site.get(f"leap{_secrets.token_hex(6)}_fixed_{goal_index}"), "index")
            known = page.instruction
            with self._lock:
                self._instructions[goal_index] = known
        return known

    def task(self, task_id: str) -> base.TaskSummary:
        split, goal_index = self._goal_index(task_id)
        return base.TaskSummary(task_id, split, self._instruction(goal_index), "")

    def list_tasks(self, split: str, offset: int, limit: int) -> list[base.TaskSummary]:
        size = self.num_tasks(split)
        return [self.task(f"{split}-{i:05d}") for i in range(max(0, offset), min(size, max(0, offset) + limit))]

    def start(self, task_id: str, horizon: int) -> base.Episode:
        summary = self.task(task_id)
        _, goal_index = self._goal_index(task_id)
        if self._local is not None:
            return LocalEpisode(self._local, summary, goal_index, horizon or self.config.horizon)
        return HttpEpisode(self._site, summary, goal_index, horizon or self.config.horizon)

    # --- privileged side (path mode) ------------------------------------------------------------------

    def _require_local(self) -> LocalWebShop:
        if self._local is None:
            raise FailedPrecondition("a WebShop reached by server= keeps its goals to itself: privileged state "
                                     "and experts need path=DIR (a local checkout)")
        return self._local

    def _goal(self, goal_index: int) -> dict:
        return self._require_local().server.goals[goal_index]

    def _replay(self, task_id: str, actions: Sequence[str]) -> LocalEpisode:
        local = self._require_local()
        summary = self.task(task_id)
        _, goal_index = self._goal_index(task_id)
        episode = LocalEpisode(local, summary, goal_index, 10**9)
        episode.reset()
        for action in actions:
            if episode._bought:
                break
            episode._steps += 1
            episode.apply(action)
        return episode

    def _planner_action(self, episode: LocalEpisode, goal: dict, history: Sequence[str]) -> str:
        page = episode.page
        target = str(goal["asin"]).lower()
        if episode._bought or page is None:
            return ""
        if page.kind == "index":
            first = f"search[{keyword_query(goal['instruction_text'])}]"
            return first if first not in history else f"search[{str(goal['name']).lower()[:300]}]"
        if page.kind == "results":
            if target in [p.lower() for p in page.products]:
                return f"click[{target}]"
            if NEXT_PAGE in page.buttons and episode.env.server.user_sessions[episode.env.session]["page"] < 5:
                return f"click[{NEXT_PAGE}]"
            return f"click[{BACK_TO_SEARCH}]"
        if page.kind == "sub":
            return f"click[{PREV_PAGE}]"
        if page.kind == "item":
            session = episode.env.server.user_sessions[episode.env.session]
            if str(session.get("asin") or "").lower() != target:
                return f"click[{PREV_PAGE}]"
            wanted = list(goal["goal_options"].values()) if isinstance(goal["goal_options"], dict) \
                else list(goal["goal_options"])
            by_name: dict[str, list[str]] = {}
            for name, value in page.options:
                by_name.setdefault(name, []).append(value)
            for name, value in rw.best_choice(wanted, list(by_name.items())):
                if episode.chosen.get(name) != value:
                    return f"click[{value.lower()}]"
            return f"click[{BUY_NOW}]"
        return ""

    def privileged_state(self, task_id: str, actions: Sequence[str]) -> base.PrivilegedInfo:
        episode = self._replay(task_id, actions)
        goal = self._goal(episode.goal_index)
        seen, won = set(episode.seen), episode.won  # before the plan moves the episode on
        plan = self._plan(episode, goal, list(actions))
        instruction = str(goal.get("instruction_text", ""))
        secrets = [str(goal["asin"])] if str(goal["asin"]).lower() not in seen else []
        values = list(goal["goal_options"].values()) if isinstance(goal["goal_options"], dict) \
            else list(goal["goal_options"])
        for phrase in list(goal.get("attributes", [])) + values:
            if not re.search(r"(?<![\w])" + re.escape(str(phrase).lower()) + r"(?![\w])", instruction.lower()):
                secrets.append(str(phrase))
        return base.PrivilegedInfo(
            task=episode.task, essential_objects=(str(goal["asin"]),), optimal_actions=tuple(plan),
            secrets=tuple(dict.fromkeys(secrets)), goal_record_json=json.dumps(goal, default=str, sort_keys=True),
            extra={"engine": "webshop-real (path)", "target_asin": str(goal["asin"]),
                   "target_title": str(goal.get("name", "")), "replayed_actions": str(len(actions)),
                   "won": str(won).lower()})

    def _plan(self, episode: LocalEpisode, goal: dict, history: list[str]) -> list[str]:
        plan: list[str] = []
        while len(plan) < self.config.horizon:
            action = self._planner_action(episode, goal, history + plan)
            if not action:
                break
            plan.append(action)
            episode.apply(action)
        return plan

    def expert_advice(self, task_id: str, actions: Sequence[str], expert: str) -> base.ExpertAdvice:
        if expert != "planner":
            raise InvalidArgument(f"the webshop adapter offers the planner only, not {expert[:40]!r}")
        episode = self._replay(task_id, actions)
        if episode._bought:
            return base.ExpertAdvice("", (), True, "")
        goal = self._goal(episode.goal_index)
        plan = self._plan(episode, goal, list(actions))
        return base.ExpertAdvice(plan[0] if plan else "", tuple(plan), False,
                                 "I follow the instruction: search, open the matching product, pick its options, buy.")
