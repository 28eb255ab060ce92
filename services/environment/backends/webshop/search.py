"""The shop's search engine: BM25 retrieval over the catalogue with the `bm25s` library.

WebShop searches its products with Lucene (pyserini's LuceneSearcher, BM25 with k1=0.9, b=0.4, an
English analyzer: lower-case, stop words removed, Porter stemming) over a document per product:
title, description, first bullet point and option text (see Product.search_text), and returns the top
50 hits, shown 10 per page. Here the scoring is bm25s's BM25 ("lucene" variant, the same k1 and b);
the analyzer is ours: lower-case alphanumeric tokens, bm25s's English stop words, and the Snowball
English stemmer (PyStemmer, the one bm25s itself uses).

Ties (products with equal scores) are broken by catalogue order, so results are the same on every
machine. Results of a query are cached (the experts replay the same searches at every step).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Sequence

import bm25s
import numpy as np
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

# WebShop's SEARCH_RETURN_N and PRODUCT_WINDOW.
SEARCH_RETURN_N = 50
PAGE_SIZE = 10
# Lucene's BM25 defaults as pyserini uses them.
K1 = 0.9
B = 0.4
# Queries are cut to this many tokens (a 4 KB action holds ~700; Lucene caps clauses at 1024).
MAX_QUERY_TOKENS = 64

_TOKEN_RE = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(STOPWORDS_EN)
_CACHED_WORD_CHARS = 32
_CACHE_WORDS = 200_000


class Analyzer:
    """Lower-case, split on non-alphanumerics, drop English stop words, stem (with a per-word cache)."""

    def __init__(self):
        self._stemmer = Stemmer.Stemmer("english")
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, text: str) -> list[str]:
        words = [w for w in _TOKEN_RE.findall(text.lower()) if w not in _STOPWORDS]
        cache = self._cache
        # Only words of a sensible length are cached, and the cache is bounded, so hostile queries
        # cannot grow it without limit.
        missing = [w for w in set(words) if len(w) <= _CACHED_WORD_CHARS and w not in cache]
        if missing:
            stems = self._stemmer.stemWords(missing)
            with self._lock:
                if len(cache) > _CACHE_WORDS:
                    cache.clear()
                cache.update(zip(missing, stems))
        return [cache.get(w) or self._stemmer.stemWord(w) for w in words]


class SearchEngine:
    """BM25 over a list of documents; `search` returns document indices, best first."""

    def __init__(self, documents: Sequence[str], cache_size: int = 4096):
        self.analyzer = Analyzer()
        corpus = [self.analyzer(doc) for doc in documents]
        self.retriever = bm25s.BM25(k1=K1, b=B, method="lucene")
        self.retriever.index(corpus, show_progress=False)
        self.size = len(documents)
        self._cache: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def query_tokens(self, query: str) -> list[str]:
        """The analyzed query tokens that the index knows (at most MAX_QUERY_TOKENS)."""
        vocab = self.retriever.vocab_dict
        return [t for t in self.analyzer(query)[:MAX_QUERY_TOKENS] if t in vocab and t != ""]

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> tuple[int, ...]:
        """Indices of the top-k documents for `query` (positive score only), best first, ties by index."""
        key = f"{k}|{query}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        result = self._search(query, k)
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    def _search(self, query: str, k: int) -> tuple[int, ...]:
        tokens = self.query_tokens(query)
        if not tokens or k <= 0:
            return ()
        scores = self.retriever.get_scores(tokens)
        n = min(k, self.size)
        # The k best by score, then by catalogue order among equal scores (argpartition's choice
        # among ties at the boundary would depend on the memory layout, so take a margin of ties).
        if n < self.size:
            top = np.argpartition(-scores, n - 1)[:n]
            threshold = scores[top].min()
            top = np.flatnonzero(scores >= threshold)
        else:
            top = np.arange(self.size)
        top = top[scores[top] > 0]
        order = np.lexsort((top, -scores[top]))
        return tuple(int(i) for i in top[order][:n])
