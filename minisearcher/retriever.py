"""Okapi BM25 over passages, answering a batch of queries at once.

Scores are exactly those of `rank_bm25.BM25Okapi` (k1=1.5, b=0.75, epsilon=0.25), which scores a query by walking
every passage in Python for every query word. Here the same weights live in an inverted index: for each word, the
passages that contain it (in corpus order) and that word's precomputed weight in each, so a query touches only the
passages that share one of its words, and of a very common word's passages only those that can still make the top-k
(`BM25.top_k`). minisearcher/index.py writes the same arrays to disk for corpora of millions of passages.

Tokenisation: lower-case, then every run of letters, digits or underscores (`\\w+`) is a word. No stemming, no
stop-word list, as in rank_bm25, whose idf gives every word in over half the passages ("the", "of") the same floor:
epsilon times the mean idf, on wiki-mini about half a typical word's weight and more than "film" gets (in 20%).
"""
import re

import numpy as np

from .data import passage_text

WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    return WORD.findall(text.lower())


def idf(df: np.ndarray, n: int, epsilon: float = 0.25) -> np.ndarray:
    """idf(w) = ln(N - df + 0.5) - ln(df + 0.5) for each word; words in over half the passages get epsilon * mean
    idf instead."""
    idf = np.log(n - df + 0.5) - np.log(df + 0.5)
    idf[idf < 0] = epsilon * idf.cumsum()[-1] / len(df)  # summed left to right as rank_bm25 does: equal to the bit
    return idf


def weight(idf: np.ndarray, tf: np.ndarray, doc_len: np.ndarray, avgdl: float, k1: float = 1.5, b: float = 0.75):
    """weight(w, d) = idf(w) * tf (k1 + 1) / (tf + k1 (1 - b + b |d| / avgdl)), for arrays of (w, d) pairs."""
    return idf * (tf * (k1 + 1) / (tf + k1 * (1 - b + b * doc_len / avgdl)))


def word_ids(passage: dict, vocab: dict[str, int]) -> np.ndarray:
    """The passage's words as ids; a new word gets the next id."""
    return np.array([vocab.setdefault(w, len(vocab)) for w in tokenize(passage_text(passage))], dtype=np.int32)


def pairs(words: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per (word, passage) pair of these passages' word ids, sorted by word, then passage: the word, the
    passage (its index in `words`, int32) and tf, how often the word occurs in the passage."""
    N = len(words)
    word, doc = np.concatenate(words).astype(np.int64), np.repeat(np.arange(N), [len(w) for w in words])
    pair, tf = np.unique(word * N + doc, return_counts=True)
    return pair // N, (pair % N).astype(np.int32), tf


class BM25:
    def __init__(self, passages: list[dict], k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25):
        self.passages = passages
        self.vocab: dict[str, int] = {}
        # word ids, one array per passage as soon as it is tokenised: the words of every passage as Python strings
        # at once would nearly double the build's peak memory (docs/PERFORMANCE.md)
        words = [word_ids(p, self.vocab) for p in passages]
        doc_len = np.array([len(w) for w in words])  # (N,)
        N, V = len(passages), len(self.vocab)
        if V == 0:
            raise ValueError("the corpus has no words to index: no passages, or only empty ones")
        word, self.doc, tf = pairs(words)  # sorted by word: a compressed sparse column matrix (V x N)
        self.indptr = np.searchsorted(word, np.arange(V + 1))  # word w's entries: indptr[w]:indptr[w+1]
        df = np.diff(self.indptr)  # (V,) passages containing each word
        self.weight = weight(idf(df, N, epsilon)[word], tf, doc_len[self.doc], doc_len.sum() / N, k1, b)
        self.best = np.maximum.reduceat(self.weight, self.indptr[:-1])  # (V,) each word's largest weight

    def __str__(self):
        return f"BM25 over {len(self.passages):,} passages"

    def search(self, queries: list[str], k: int) -> list[list[dict]]:
        """The top-k passages of each query, best first; equal scores in corpus order, also across the k-th place."""
        return [[self.passages[j] for j in self.top_k(self.words(query), k)[0]] for query in queries]

    def words(self, query: str) -> list[int]:
        """The query's word ids in order. A repeated word counts each time, as in rank_bm25; unknown words add 0."""
        return [j for w in tokenize(query) if (j := self.vocab.get(w)) is not None]

    def postings(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """The passages holding word j, ascending, and the word's weight in each."""
        lo, hi = self.indptr[j], self.indptr[j + 1]
        return self.doc[lo:hi], self.weight[lo:hi]

    def score(self, words: list[int], passages: np.ndarray) -> np.ndarray:
        """BM25 scores of `passages` (ascending indices): each word's weight added in the query's order, the order
        rank_bm25 adds them in, so that the sums are equal to the bit."""
        total = np.zeros(len(passages))
        for j in words:
            docs, weights = self.postings(j)
            if len(docs) <= len(passages):  # look the shorter sorted list up in the longer one
                at = np.searchsorted(passages, docs).clip(max=len(passages) - 1)
                found = passages[at] == docs
                total[at[found]] += weights[found]
            else:
                at = np.searchsorted(docs, passages).clip(max=len(docs) - 1)
                found = docs[at] == passages
                total[found] += weights[at[found]]
        return total

    def scores(self, queries: list[str]) -> np.ndarray:
        """(Q, N) BM25 score of every passage for every query: for small corpora (the tests compare it with
        rank_bm25's); search() never scores every passage."""
        every = np.arange(len(self.passages))
        return np.stack([self.score(self.words(query), every) for query in queries])

    def top_k(self, words: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The indices and scores of the k best passages for a query's words, best first; equal scores in corpus
        order.

        Exact, but a passage that cannot make the top-k is never scored (MaxScore, Turtle and Flood 1995). The
        passages of the query's rarest words are scored first; k of them reach the k-th best of those scores, a
        floor. A passage can score at most the sum of the largest weights (`best`) of the query words it holds, so
        if the words with the smallest `best` add up to less than the floor, a passage holding only those is out:
        only the passages of the other words are scored. The rarest words carry the largest idf, so the floor is
        high and the very common words ("the", "of", millions of passages each) are only looked up.
        """
        N = len(self.passages)
        k = min(k, N)
        seeds, floor = np.zeros(0, dtype=np.int32), -np.inf
        for j in sorted(set(words), key=lambda j: self.indptr[j + 1] - self.indptr[j]):  # rarest first
            seeds = distinct(np.concatenate([seeds, self.postings(j)[0]]))
            if len(seeds) >= k:
                floor = kth_best(self.score(words, seeds), k)
                break
        # the most each word adds to a passage; summed in the query's order, as scores are, so that rounding cannot
        # lift a left-out passage above the bound
        bound = np.maximum(self.best[words], 0) if words else np.zeros(0)
        left_out: set[int] = set()
        for j in sorted(set(words), key=lambda j: self.best[j]):
            if np.cumsum(bound[[w in left_out | {j} for w in words]])[-1] >= floor:
                break
            left_out.add(j)
        candidates = distinct(np.concatenate([seeds] + [self.postings(j)[0] for j in set(words) - left_out]))
        # the passages holding no kept word score below the floor (or 0, when none is left out); the first k of them
        # stand for all, since equal scores go in corpus order
        others = np.setdiff1d(np.arange(min(N, len(candidates) + k)), candidates, assume_unique=True)[:k]
        pool = np.sort(np.concatenate([candidates, others]))
        scores = self.score(words, pool)
        kth = kth_best(scores, k)
        tied_or_better = np.flatnonzero(scores >= kth)  # in corpus order
        best = tied_or_better[np.argsort(-scores[tied_or_better], kind="stable")[:k]]
        return pool[best], scores[best]


def distinct(passages: np.ndarray) -> np.ndarray:
    """Sorted, each once: np.unique, which in numpy 2.4 hashes, and is 80 times slower on a million passages."""
    passages = np.sort(passages)
    return passages[np.diff(passages, prepend=-1) > 0]


def kth_best(scores: np.ndarray, k: int) -> float:
    return np.partition(scores, len(scores) - k)[len(scores) - k]
