"""Okapi BM25 over passages, answering a batch of queries at once.

Scores are exactly those of `rank_bm25.BM25Okapi` (k1=1.5, b=0.75, epsilon=0.25), which scores a query by walking
every passage in Python for every query word. Here the same weights live in an inverted index: for each word, the
passages that contain it and that word's precomputed weight in each, so a query touches only the passages that share
one of its words.

Tokenisation: lower-case, then every run of letters, digits or underscores (`\\w+`) is a word. No stemming, no
stop-word list (BM25's idf already makes "the" worth almost nothing).
"""
import re

import numpy as np

from .data import passage_text

WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return WORD.findall(text.lower())


class BM25:
    def __init__(self, passages: list[dict], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        if not passages:
            raise ValueError("the corpus has no passages")
        self.passages = passages
        self.vocab: dict[str, int] = {}
        # word ids, one array per passage as soon as it is tokenised: the words of every passage as Python strings
        # at once would nearly double the build's peak memory (docs/PERFORMANCE.md)
        words = [np.array([self.vocab.setdefault(w, len(self.vocab)) for w in tokenize(passage_text(p))],
                          dtype=np.int64) for p in passages]
        doc_len = np.array([len(w) for w in words])  # (N,)
        N, V = len(passages), len(self.vocab)
        if V == 0:
            raise ValueError("the corpus has no words to index: every passage's title and text are empty")
        word, doc = np.concatenate(words), np.repeat(np.arange(N), doc_len)  # (total words,) each

        # one entry per (word, passage) pair, sorted by word: a compressed sparse column matrix (V x N)
        pair, tf = np.unique(word * N + doc, return_counts=True)
        self.doc = (pair % N).astype(np.int32)
        self.indptr = np.searchsorted(pair // N, np.arange(V + 1))  # word w's entries: indptr[w]:indptr[w+1]
        df = np.diff(self.indptr)  # (V,) passages containing each word

        # idf(w) = ln(N - df + 0.5) - ln(df + 0.5); words in over half the passages get epsilon * mean idf instead
        idf = np.log(N - df + 0.5) - np.log(df + 0.5)
        idf[idf < 0] = epsilon * idf.cumsum()[-1] / V  # summed left to right as rank_bm25 does: equal to the bit
        # weight(w, d) = idf(w) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl))
        avgdl = doc_len.sum() / N
        dl = doc_len[self.doc]
        self.weight = idf[pair // N] * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl)))

    def scores(self, queries: list[str]) -> np.ndarray:
        """(Q, N) BM25 score of every passage for every query. A repeated query word counts each time, as in
        rank_bm25."""
        scores = np.zeros((len(queries), len(self.passages)))
        for i, query in enumerate(queries):
            for w in tokenize(query):
                if (j := self.vocab.get(w)) is not None:
                    lo, hi = self.indptr[j], self.indptr[j + 1]
                    scores[i, self.doc[lo:hi]] += self.weight[lo:hi]
        return scores

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        """The top-k passages of each query, best first; equal scores in corpus order, also across the k-th place."""
        scores = self.scores(queries)  # (Q, N)
        N = scores.shape[1]
        k = min(k, N)
        results = []
        for s in scores:
            kth = np.partition(s, N - k)[N - k]  # the k-th best score
            tied_or_better = np.flatnonzero(s >= kth)  # in corpus order
            best = tied_or_better[np.argsort(-s[tied_or_better], kind="stable")[:k]]
            results.append([self.passages[j] for j in best])
        return results
