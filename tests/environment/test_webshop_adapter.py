"""The adapter to a real WebShop installation.

- Option parsing and validation: always run (hostile values included).
- The HTTP mode against a site of our own that answers WebShop's routes with pages shaped like its
  templates (web_agent_site/templates: search, results, item, sub pages, and the done page with the
  goal record in a hidden block), served on loopback from the synthetic shop: always runs.
- A real installation: runs only when LEAP_WEBSHOP_SERVER (a running `web_agent_site.app`) or
  LEAP_WEBSHOP_PATH (a set-up checkout) names one; skipped otherwise.
"""

from __future__ import annotations

import ast
import html
import os
import threading
import urllib.parse
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from services.environment import backends
from services.environment.backends.webshop import webshop_backend
from services.environment.backends.webshop.adapter import (
    HttpEpisode,
    WebShopAdapterBackend,
    clickables,
    parse_adapter_options,
    parse_page,
)
from services.environment.backends.webshop.backend import WebShopBackend
from services.environment.backends.webshop.shop import SUB_PAGES
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound

SHOP = WebShopBackend(products=600, train_tasks=5, valid_seen_tasks=5, valid_unseen_tasks=20)


# --- options ------------------------------------------------------------------------------------------

def test_adapter_options_are_validated(tmp_path):
    config = parse_adapter_options({"server": "http://127.0.0.1:3000/", "goals": "2000", "timeout_s": "5"})
    assert config.server == "http://127.0.0.1:3000" and config.mode == "server" and config.goals == 2000
    assert config.split_range("valid_unseen") == range(0, 500)
    assert config.split_range("valid_seen") == range(500, 1500) and config.split_range("train") == range(1500, 2000)
    checkout = tmp_path / "WebShop"
    (checkout / "web_agent_site").mkdir(parents=True)
    assert parse_adapter_options({"path": str(checkout)}).mode == "path"
    bad = [
        {}, {"server": "ftp://x:1"}, {"server": "http://"}, {"server": "http://u:p@host:1"}, {"server": "not a url"},
        {"server": "http://h:99999"}, {"server": "http://h:1/?q=1"}, {"server": "http://h\x00:1"},
        {"server": "http://h:1", "path": str(checkout)}, {"path": str(tmp_path / "missing")},
        {"path": str(tmp_path)}, {"path": "x\x00y"}, {"server": "http://h:1", "goals": "-1"},
        {"server": "http://h:1", "goals": "1e9"}, {"server": "http://h:1", "goals": "９"},
        {"server": "http://h:1", "timeout_s": "0"}, {"server": "http://h:1", "timeout_s": "nan"},
        {"server": "http://h:1", "horizon": "99999"}, {"server": "http://h:1", "num_products": "5"},
        {"server": "http://h:1", "color": "red"}, {"server": "http://h:1", "goals": "9" * 5000},
    ]
    for options in bad:
        with pytest.raises(InvalidArgument):
            parse_adapter_options(options)


def test_the_registry_picks_the_adapter_only_when_asked(tmp_path):
    assert isinstance(webshop_backend(products="300", train_tasks="3", valid_seen_tasks="3",
                                      valid_unseen_tasks="3"), WebShopBackend)
    adapter = backends.create("webshop", server="http://127.0.0.1:9")
    assert isinstance(adapter, WebShopAdapterBackend) and adapter.spec().experts == ()
    with pytest.raises(FailedPrecondition, match="path=DIR"):
        adapter.privileged_state("valid_unseen-00000", [])
    with pytest.raises(NotFound):
        adapter.task("valid_unseen-00500")
    # A checkout that does not import is a clear FailedPrecondition, not a traceback.
    broken = tmp_path / "WebShop"
    (broken / "web_agent_site").mkdir(parents=True)
    (broken / "web_agent_site" / "__init__.py").write_text("raise ImportError('no data set up')\n")
    with pytest.raises(FailedPrecondition, match="does not import"):
        backends.create("webshop", path=str(broken))


# --- a WebShop-shaped site ----------------------------------------------------------------------------

def _page(body: str, instruction: str = "", query: str = "") -> bytes:
    head = ('<!DOCTYPE html><html><head><title>WebShop</title><script>var x = "Buy Now";</script></head><body>'
            '<div class="container py-5">')
    if instruction:
        head += (f'<div id="instruction-text"><h4 style="padding:2px 10px;">Instruction: {html.escape(instruction)}'
                 f'</h4><h4>Current Query: {html.escape(query)}</h4></div>')
    return (head + body + "</div></body></html>").encode("utf-8")


def _button(label: str) -> str:
    return f'<form method="post"><button type="submit" class="btn btn-primary">{html.escape(label)}</button></form>'


class Site:
    """WebShop's routes (web_agent_site/app.py) over the synthetic shop; goal i = valid_unseen task i."""

    def __init__(self):
        self.sessions: dict[str, int] = {}
        self.requests: list[str] = []

    def goal(self, session: str):
        return SHOP.shop_task(f"valid_unseen-{self.sessions[session]:05d}")

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        self.requests.append(path)
        parts = path.strip("/").split("/")
        try:
            body = self.route(parts)
            status = "200 OK"
        except (KeyError, ValueError, IndexError):
            body, status = b"<html><body>Internal Server Error</body></html>", "500 INTERNAL SERVER ERROR"
        start_response(status, [("Content-Type", "text/html; charset=utf-8")])
        return [body]

    def route(self, parts: list[str]) -> bytes:
        catalogue = SHOP.shop.catalogue
        if len(parts) == 1:
            session = parts[0]
            if session not in self.sessions and "fixed" in session:
                self.sessions[session] = int(session.split("_")[-1])
            instruction = self.goal(session).goal.instruction_text
            return _page(f'<div id="logo"><h2>WebShop</h2></div><div id="instruction-text" class="text-center">'
                         f'<h4>Instruction: <br>{html.escape(instruction)}</h4></div><form><input id="search_input" '
                         'name="search_query" type="text"><button class="btn btn-success" type="submit">Search'
                         '</button></form>')
        kind, session = parts[0], parts[1]
        task = self.goal(session)
        instruction = task.goal.instruction_text
        if kind == "search_results":
            keywords, page = ast.literal_eval(parts[2]), int(parts[3])
            results = SHOP.shop.search(" ".join(keywords))
            items = results[(page - 1) * 10:page * 10]
            body = (f"<h1>Results</h1><p>Page {page} ({(page - 1) * 10 + 1}-{page * 10}) of {len(results)} "
                    "total results</p>")
            body += _button("Back to Search") + (_button("< Prev") if page > 1 else "")
            body += _button("Next >") if page * 10 < len(results) else ""
            for i in items:
                p = catalogue[i]
                body += (f'<div class="grid-item"><img src="x.jpg"><h4><a class="product-link" href="#">{p.asin}'
                         '</a></h4>'
                         f'<h4 class="product-title">{html.escape(p.title)}</h4><h5>{p.price_text}</h5></div>')
            return _page(body, instruction, " ".join(keywords))
        asin = parts[2]
        product = catalogue.find(asin)
        if kind == "done":
            options = ast.literal_eval(parts[3])
            result = task.reward(product, tuple(options.items()))
            goal = task.goal
            hidden = (f'<div style="display:none"><h4 id="goal-asin">asin<pre>{goal.asin}</pre></h4>'
                      f'<h4 id="goal-attrs">attrs<pre>{goal.attributes}</pre></h4>'
                      f'<h4>price upper<pre>{goal.price_upper}</pre></h4><h4>product category<pre>'
                      f'{html.escape(goal.product_category)}</pre></h4></div>')
            return _page('<div id="thankyou"><h1>Thank you for shopping with us!</h1></div><h3>Your code: </h3>'
                         f'<p><pre>abc123</pre> (Paste it in your MTurk interface.)</p>{hidden}<hr>'
                         f'<h3 id="reward">Your score (min 0.0, max 1.0)<pre>{result.total}</pre></h3>'
                         f'<h4 hidden>Reward Details <div id="reward_info"><pre>{result}</pre></div></h4>')
        keywords, page = parts[3], parts[4]
        if kind == "item_page":
            options = ast.literal_eval(parts[5])
            body = _button("Back to Search") + _button("< Prev")
            for name, values in product.options:
                body += f"<div><h4>{name}</h4><div class='radio-toolbar'>"
                for k, value in enumerate(values):
                    body += (f'<input type="radio" id="radio_{name}{k}" name="{name}" value="{html.escape(value)}">'
                             f'<label for="radio_{name}{k}">{html.escape(value)}</label>')
                body += "</div></div>"
            body += (f"<h2>{html.escape(product.title)}</h2><h4>Price: {product.price_text}</h4>"
                     f"<h4>Rating: {product.rating}</h4>")
            body += "".join(_button(label) for label in ("Description", "Features", "Reviews", "Buy Now"))
            del options
            return _page(body, instruction, keywords)
        sub = parts[5]
        text = {"Description": product.description, "Features": " ".join(product.bullets),
                "Reviews": "No reviews found"}[sub]
        return _page(_button("Back to Search") + _button("< Back to Item Page") + f'<p class="product-info">'
                     f"{html.escape(text)}</p>", instruction, keywords)


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    app = Site()
    httpd = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


def test_plays_webshops_site_over_http(site):
    app, url = site
    adapter = backends.create("webshop", server=url, goals="20")
    assert adapter.num_tasks("valid_unseen") == 20 and adapter.num_tasks("train") == 0
    task_id = "valid_unseen-00003"
    summary = adapter.task(task_id)
    goal = SHOP.shop_task(task_id).goal
    assert summary.goal == goal.instruction_text
    plan = SHOP.privileged_state(task_id, []).optimal_actions
    episode = adapter.start(task_id, 0)
    assert isinstance(episode, HttpEpisode) and "_fixed_3" in episode.session
    obs = episode.reset()
    assert obs.text == f"WebShop\nInstruction:\n{goal.instruction_text}\n[Search]"
    assert obs.action_templates == ("search[<query>]",) and obs.candidates == ()
    synthetic = SHOP.start(task_id, 0)
    synthetic.reset()
    for action in plan:
        obs = episode.step(action)
        mine = synthetic.step(action)
        assert obs.last_action_valid, action
        if not obs.done:
            # The same page, read from HTML, as the synthetic shop renders it (minus its rating format).
            assert set(obs.candidates) == set(mine.candidates), action
            ours, theirs = obs.text.splitlines(), mine.text.splitlines()
            assert ours[:2] == theirs[:2]
            assert [line for line in ours if line.startswith("[")] == [line for line in theirs if line.startswith("[")]
    assert obs.done and obs.won and obs.score == 1.0 and obs.text.endswith("1.00")
    # The done page's hidden goal record never reaches the agent.
    assert goal.asin not in obs.text and "price upper" not in obs.text and "Reward Details" not in obs.text
    assert any(r.startswith("/done/") for r in app.requests)


def test_http_episode_pages_options_and_invalid_actions(site):
    _, url = site
    adapter = backends.create("webshop", server=url, goals="20", horizon="30")
    episode = adapter.start("valid_unseen-00001", 0)
    episode.reset()
    obs = episode.step("click[back to search]")
    assert not obs.last_action_valid and obs.text.startswith("Invalid action:")
    obs = episode.step("search[usb/cable  black]")  # '/' would break the site's URL; it becomes a space
    assert obs.last_action_valid and obs.text.startswith("[Back to Search]\nPage 1")
    assert not episode.step("search[again]").last_action_valid  # no search box on a results page
    obs = episode.step("click[next >]")
    assert "Page 2" in obs.text and "click[< prev]" in obs.candidates
    product = next(c for c in obs.candidates if c.startswith("click[b0"))
    obs = episode.step(product)
    assert "click[buy now]" in obs.candidates and "click[description]" in obs.candidates
    value = next((c for c in obs.candidates if c[6:-1] not in {"back to search", "< prev", "buy now", *SUB_PAGES}),
                 None)
    if value:
        obs = episode.step(value)
        assert f"[[{value[6:-1]}]]" in obs.text
    obs = episode.step("click[features]")
    assert obs.candidates == ("click[back to search]", "click[< prev]")
    obs = episode.step("click[< prev]")
    assert "click[buy now]" in obs.candidates
    obs = episode.step("click[< prev]")
    assert "Page 2" in obs.text
    obs = episode.step("click[back to search]")
    assert obs.action_templates == ("search[<query>]",)


def test_an_unreachable_server_is_unavailable():
    from services.runtime.errors import Unavailable

    adapter = backends.create("webshop", server="http://127.0.0.1:9", goals="10", timeout_s="2")
    with pytest.raises(Unavailable):
        adapter.task("valid_unseen-00000")


def test_parse_page_skips_hidden_blocks_and_scripts():
    page = parse_page('<html><head><script>alert("Buy Now")</script><style>.x{}</style></head><body>'
                      '<div style="display: none">secret goal</div><p hidden>also secret</p>'
                      '<button class="btn">Next &gt;</button><a class="product-link">B012345678</a>'
                      '<input type="radio" name="Color" value="navy blue"><label>navy blue</label>'
                      '<h3 id="reward">Your score (min 0.0, max 1.0)<pre>0.6666</pre></h3></body></html>', "results")
    text = "\n".join(page.lines)
    assert "secret" not in text and "alert" not in text and page.score == pytest.approx(0.6666)
    assert clickables(page) == ["next >", "b012345678", "navy blue"] and page.options == [("color", "navy blue")]


# --- a real installation ------------------------------------------------------------------------------

REAL_SERVER = os.environ.get("LEAP_WEBSHOP_SERVER", "")
REAL_PATH = os.environ.get("LEAP_WEBSHOP_PATH", "")


@pytest.mark.skipif(not REAL_SERVER, reason="no WebShop site: set LEAP_WEBSHOP_SERVER=http://host:port to test one")
def test_a_real_webshop_site():
    adapter = backends.create("webshop", server=REAL_SERVER)
    episode = adapter.start("valid_unseen-00000", 0)
    obs = episode.reset()
    assert obs.action_templates and "Instruction:" in obs.text
    query = urllib.parse.unquote(episode.task.goal.split(",")[0])
    obs = episode.step(f"search[{query}]")
    assert obs.last_action_valid and obs.candidates
    product = next(c for c in obs.candidates if c not in ("click[back to search]", "click[next >]"))
    obs = episode.step(product)
    obs = episode.step("click[buy now]")
    assert obs.done and 0.0 <= obs.score <= 1.0


@pytest.mark.skipif(not REAL_PATH, reason="no WebShop checkout: set LEAP_WEBSHOP_PATH=DIR to test one")
def test_a_real_webshop_checkout():
    adapter = backends.create("webshop", path=REAL_PATH, num_products=os.environ.get("LEAP_WEBSHOP_PRODUCTS", "0"))
    assert adapter.spec().experts == ("planner",)
    info = adapter.privileged_state("valid_unseen-00000", [])
    assert info.goal_record_json and info.optimal_actions
    episode = adapter.start("valid_unseen-00000", 30)
    obs = episode.reset()
    for action in info.optimal_actions:
        obs = episode.step(action)
    assert obs.done and obs.score > 0.0
