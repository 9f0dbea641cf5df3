"""Batched BM25 top-k (minisearcher.retriever.BM25) against a loop of rank_bm25.BM25Okapi.get_top_n.

    nice -n 10 python benchmarks/retrieval.py                 # 100k synthetic passages, 64 queries, k = 3
    nice -n 10 python benchmarks/retrieval.py --passages 20000 --queries 256 --k 10
    nice -n 10 python benchmarks/retrieval.py --against 7a72985   # also the retriever.py of that commit

The corpus is synthetic and seeded: words drawn from a Zipf-Mandelbrot law over a 50k-word vocabulary, ~80 words
a passage plus a 2-word title, like a Wikipedia chunk. Each query is 2 to 5 words taken from one random passage, the
way a model copies names from what it read. Both indexes see the same tokens (our `tokenize`), so their scores can be
compared bit for bit. Build times include tokenisation; memory is the peak traced by tracemalloc during the build,
measured in a second build so that tracing does not slow the timed one.
"""
import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import module_from_git  # noqa: E402
from minisearcher.retriever import BM25, tokenize  # noqa: E402


def synthetic_corpus(n: int, words_per_passage: int = 80, vocab: int = 50_000, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(vocab)]
    p = 1.0 / (np.arange(vocab) + 2.7)  # Zipf-Mandelbrot: a few very common words, a long tail of rare ones
    lengths = rng.integers(words_per_passage // 2, words_per_passage * 3 // 2 + 1, n)  # mean 80
    ids = rng.choice(vocab, size=lengths.sum() + 2 * n, p=p / p.sum())
    passages, at = [], 0
    for i, length in enumerate(lengths):
        title, text = ids[at:at + 2], ids[at + 2:at + 2 + length]
        at += 2 + length
        passages.append({"id": str(i), "title": " ".join(words[w].capitalize() for w in title),
                         "text": " ".join(words[w] for w in text) + "."})
    return passages


def make_queries(passages: list[dict], n: int, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    queries = []
    for i in rng.integers(0, len(passages), n):
        words = tokenize(passages[i]["title"] + " " + passages[i]["text"])
        queries.append(" ".join(rng.choice(words, rng.integers(2, 6), replace=False)))
    return queries


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def peak_mib(fn) -> float:
    tracemalloc.start()
    result = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak / 2**20


def same_top_k(ours: list[int], theirs: list[int], scores: np.ndarray) -> tuple[bool, bool]:
    """(identical up to tie order, identical order too). Ties at the k-th score may pick different passages."""
    if not np.array_equal(scores[ours], scores[theirs]):  # the same k scores, best first
        return False, False
    kth = scores[ours[-1]]
    above = [i for i in ours if scores[i] > kth] == [i for i in theirs if scores[i] > kth]
    return above, list(ours) == list(theirs)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--passages", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--against", nargs="*", default=[],
                   help="git revisions whose retriever.py is measured side by side with the working tree's")
    p.add_argument("--no-memory", action="store_true", help="skip the traced (slow) memory builds")
    args = p.parse_args()
    from rank_bm25 import BM25Okapi

    passages, t_corpus = timed(lambda: synthetic_corpus(args.passages))
    queries = make_queries(passages, args.queries)
    n_words = sum(len(tokenize(p["title"] + " " + p["text"])) for p in passages[:1000]) / 1000
    print(f"corpus: {len(passages):,} synthetic passages, {n_words:.0f} words each on average "
          f"(generated in {t_corpus:.1f}s); {len(queries)} queries of 2-5 words; k = {args.k}")

    def okapi_build():
        return BM25Okapi([tokenize(p["title"] + " " + p["text"]) for p in passages])

    builders = {"BM25": lambda: BM25(passages)}
    for rev in args.against:
        old = module_from_git(rev, "retriever").BM25
        builders[f"BM25 @ {rev}"] = lambda old=old: old(passages)
    builders["rank_bm25"] = okapi_build
    ids = list(range(len(passages)))
    indexes, rows = {}, {}  # name -> [build seconds, search seconds, peak build MiB]
    for name, build in builders.items():
        indexes[name], t_build = timed(build)
        rows[name] = [t_build, None, None]
    okapi, ours = indexes.pop("rank_bm25"), indexes["BM25"]
    top_n, rows["rank_bm25"][1] = timed(lambda: [okapi.get_top_n(tokenize(q), ids, n=args.k) for q in queries])
    for _ in range(5):  # a batch takes ~0.1 s: the best of 5, interleaved so that noise hits every variant
        for name, index in indexes.items():
            found, seconds = timed(lambda: index.search(queries, args.k))
            rows[name][1] = min(rows[name][1] or seconds, seconds)
            if name == "BM25":
                ours_found = found
    del indexes
    if not args.no_memory:
        for name, build in builders.items():
            rows[name][2] = peak_mib(build)

    exact = tie_aware = ordered = 0
    for q, docs, theirs in zip(queries, ours_found, top_n):
        reference = okapi.get_scores(tokenize(q))
        exact += np.array_equal(ours.scores([q])[0], reference)
        same, same_order = same_top_k([int(d["id"]) for d in docs], theirs, reference)
        tie_aware += same
        ordered += same_order

    names = list(builders)
    print(f"\n{'':26s}" + "".join(f"{n:>16s}" for n in names) + f"{'rank_bm25 / BM25':>18s}")
    for label, col, fmt in [("build (incl. tokenising)", 0, "{:.2f} s"), ("peak memory of the build", 2, "{:.0f} MiB"),
                            (f"top-{args.k} of {len(queries)} queries", 1, "{:.3f} s")]:
        if rows["BM25"][col] is None:
            continue
        cells = "".join(f"{fmt.format(rows[n][col]):>16s}" for n in names)
        print(f"{label:26s}{cells}{rows['rank_bm25'][col] / rows['BM25'][col]:17.1f}x")
    per_query = "".join(f"{rows[n][1] / len(queries) * 1e3:13.2f} ms" for n in names)
    print(f"{'per query':26s}{per_query}")
    index_mib = (ours.doc.nbytes + ours.indptr.nbytes + ours.weight.nbytes) / 2**20
    print(f"\nBM25 index arrays (postings, weights): {index_mib:.0f} MiB; vocabulary: {len(ours.vocab):,} words")
    print(f"scores bit-identical to BM25Okapi.get_scores: {exact}/{len(queries)} queries")
    print(f"top-{args.k} identical (same scores; same passages above the k-th score): {tie_aware}/{len(queries)}; "
          f"same order too: {ordered}/{len(queries)} (the rest differ only in how ties are ordered)")


if __name__ == "__main__":
    main()
