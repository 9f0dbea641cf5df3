"""The retrievers at a million passages: BM25 built in memory, the saved index, rank_bm25 (and bm25s) on a sample.

    nice -n 10 python benchmarks/retrieval_scale.py --passages 1000000 --dir /tmp/scale       # ~15 min, ~6 GiB
    nice -n 10 python benchmarks/retrieval_scale.py --passages 2000000 --dir /tmp/scale2 --only saved
    nice -n 10 python benchmarks/retrieval_scale.py --only vocab       # loading a wiki-18-size vocabulary

The corpus is benchmarks/retrieval.py's synthetic one (seeded; 82 words a passage from a 50k-word Zipf law),
written once as JSON lines to DIR/corpus.jsonl; the 64 queries are drawn from it as there. Each retriever then runs
in a process of its own, starting from that file as train.py does:

- build: reading the corpus included. BM25 in memory pays it at every start (`--retriever bm25`); the saved index
  once (`python -m minisearcher.index`), then maps it in `load`.
- peak memory: the largest anonymous memory (RssAnon) of the process, polled every 20 ms: its heap, without the
  page cache of memory-mapped files, which the system gives back when it needs it.
- memory while searching: RssAnon once built or loaded.
- a batch: the 64 queries, top-3, best of 5 batches (the first batch of the saved index is also shown: it reads
  the postings from the page cache, or from disk after a reboot).

rank_bm25 and bm25s index only the first --sample passages (rank_bm25 scores every passage in Python for every
query word: hours at a million) and are shown next to BM25 on that same sample. bm25s (`pip install bm25s`, not a
dependency) runs only if installed.
"""
import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from retrieval import make_queries, synthetic_corpus  # noqa: E402
from minisearcher.data import iter_corpus, load_corpus, passage_text, write_jsonl  # noqa: E402
from minisearcher.index import SavedBM25, build  # noqa: E402
from minisearcher.retriever import BM25, distinct, tokenize  # noqa: E402

K = 3
QUERY = re.compile(r"<\|begin_of_query\|>(.*?)<\|end_of_query\|>", re.S)


def anonymous_mib(pid="self") -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def batch_seconds(search, queries, repeat=5) -> tuple[list, float, float]:
    """(results, first batch, best of `repeat` batches)."""
    results, first = timed(lambda: search(queries))
    return results, first, min(timed(lambda: search(queries))[1] for _ in range(repeat))


def folder_mib(folder: str, names=None) -> float:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in names or os.listdir(folder)) / 2**20


# ---- the jobs, each run in a process of its own: python retrieval_scale.py --job NAME ----------------------------

def job_corpus(args, queries):
    passages = synthetic_corpus(args.passages, vocab=args.vocab)
    write_jsonl(passages, os.path.join(args.dir, "corpus.jsonl"))
    with open(os.path.join(args.dir, "queries.json"), "w") as f:
        json.dump(make_queries(passages, args.queries), f)
    return {"passages": len(passages)}


def ids(found: list[list[dict]]) -> list[list[str]]:
    return [[p["id"] for p in passages] for passages in found]


def job_bm25(args, queries):
    index, seconds = timed(lambda: BM25(load_corpus(os.path.join(args.dir, "corpus.jsonl"))))
    found, first, best = batch_seconds(lambda q: index.search(q, K), queries)
    return {"build": seconds, "load": seconds, "memory": anonymous_mib(), "first": first, "batch": best,
            "top": ids(found), "pairs": len(index.doc), "words": len(index.vocab)}


def job_build(args, queries):
    folder = os.path.join(args.dir, "index")
    _, seconds = timed(lambda: build(os.path.join(args.dir, "corpus.jsonl"), folder))
    return {"build": seconds, "disk": folder_mib(folder),
            "postings": folder_mib(folder, ["doc.npy", "weight.npy", "indptr.npy", "best.npy", "vocab.json"])}


def job_saved(args, queries):
    index, seconds = timed(lambda: SavedBM25(os.path.join(args.dir, "index")))
    found, first, best = batch_seconds(lambda q: index.search(q, K), queries)
    return {"load": seconds, "memory": anonymous_mib(), "first": first, "batch": best, "top": ids(found)}


def sample(args) -> list[dict]:
    return list(itertools.islice(iter_corpus(os.path.join(args.dir, "corpus.jsonl")), args.sample))


def job_sample_bm25(args, queries):
    passages = sample(args)
    index, seconds = timed(lambda: BM25(passages))
    found, _, best = batch_seconds(lambda q: index.search(q, K), queries)
    scores = [index.top_k(index.words(q), K)[1].tolist() for q in queries]
    return {"build": seconds, "memory": anonymous_mib(), "batch": best, "top": ids(found), "scores": scores}


def job_rank_bm25(args, queries):
    from rank_bm25 import BM25Okapi
    passages = sample(args)
    index, seconds = timed(lambda: BM25Okapi([tokenize(passage_text(p)) for p in passages]))
    found, best = timed(lambda: [index.get_top_n(tokenize(q), passages, n=K) for q in queries])
    scores = [index.get_scores(tokenize(q))[[int(p["id"]) for p in top]].tolist() for q, top in zip(queries, found)]
    return {"build": seconds, "memory": anonymous_mib(), "batch": best, "top": ids(found), "scores": scores}


def job_bm25s(args, queries):
    import bm25s
    passages = sample(args)
    folder = os.path.join(args.dir, "bm25s")

    def build_and_save():
        index = bm25s.BM25(method="robertson")  # the closest to Okapi: no epsilon floor; float32 weights
        index.index([tokenize(passage_text(p)) for p in passages], show_progress=False)
        index.save(folder, corpus=passages)

    _, seconds = timed(build_and_save)
    index, load = timed(lambda: bm25s.BM25.load(folder, mmap=True, load_corpus=True))
    search = lambda qs: index.retrieve([tokenize(q) for q in qs], k=K, show_progress=False, n_threads=1)[0]
    found, _, best = batch_seconds(search, queries)
    return {"build": seconds, "disk": folder_mib(folder), "load": load, "batch": best, "top": ids(found.tolist())}


def job_vocab(args, queries):
    """Loading a vocabulary the size of wiki-18's (estimated by Heaps' law), as SavedBM25 does."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))
    path = os.path.join(args.dir, "vocab.json")
    with open(path, "w") as f:
        json.dump(["".join(w) for w in rng.choice(letters, (args.vocab_words, 9))], f)
    start = time.perf_counter()
    with open(path) as f:
        vocab = {w: j for j, w in enumerate(json.load(f))}
    return {"load": time.perf_counter() - start, "memory": anonymous_mib(), "words": len(vocab),
            "disk": os.path.getsize(path) / 2**20}


def every_passage(index: BM25, words: list[int], k: int) -> np.ndarray:
    """The top-k without pruning, as BM25 searched before: every passage holding a query word scored into a dense
    (N,) array, then the k best taken (ties in corpus order)."""
    scores = np.zeros(len(index.passages))
    for j in words:
        docs, weights = index.postings(j)
        scores[docs] += weights
    tied_or_better = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
    return tied_or_better[np.argsort(-scores[tied_or_better], kind="stable")[:k]]


def trace_queries() -> list[str]:
    """The queries a trained R1-Searcher model wrote in its trajectories (../shared/data)."""
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "r1-searcher", "traces")
    queries = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            for line in f:
                trajectory = json.loads(line)["trajectory"]
                queries += [q.strip() for q in QUERY.findall(trajectory)]
    return queries


def job_pruning(args, queries):
    """What top_k's pruning saves: passages scored per query, against those holding a query word (what scoring
    without pruning touches), and the time of both, on the synthetic index and on wiki-mini with real queries."""
    wiki = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "wiki-mini.jsonl")
    cases = {"synthetic": (SavedBM25(os.path.join(args.dir, "index")), queries)}
    if os.path.exists(wiki):
        cases["wiki-mini, model's queries"] = (BM25(load_corpus(wiki)), trace_queries())
    out = {}
    for name, (index, qs) in cases.items():
        words = [index.words(q) for q in qs]
        scored, score = [], index.score
        index.score = lambda w, passages: scored.append(len(passages)) or score(w, passages)
        found = [index.top_k(w, K)[0] for w in words]
        del index.score
        holding = [len(distinct(np.concatenate([index.postings(j)[0] for j in w] + [np.zeros(0, np.int32)])))
                   for w in words]
        assert all(list(a) == list(every_passage(index, w, K)) for a, w in zip(found, words))
        pruned = every = np.inf
        for _ in range(3):  # the best of 3, interleaved, after a first pass over both (above) warmed the page cache
            pruned = min(pruned, timed(lambda: [index.top_k(w, K) for w in words])[1])
            every = min(every, timed(lambda: [every_passage(index, w, K) for w in words])[1])
        out[name] = {"passages": len(index.passages), "queries": len(qs), "scored": sum(scored) / len(qs),
                     "holding": float(np.mean(holding)), "pruned_ms": pruned / len(qs) * 1e3,
                     "every_ms": every / len(qs) * 1e3}
    return out


JOBS = {"corpus": job_corpus, "bm25": job_bm25, "build": job_build, "saved": job_saved,
        "sample_bm25": job_sample_bm25, "rank_bm25": job_rank_bm25, "bm25s": job_bm25s, "vocab": job_vocab,
        "pruning": job_pruning}


def run(name: str, args) -> dict:
    """Run one job in a child process; add its peak anonymous memory, polled every 20 ms."""
    argv = [sys.executable, __file__, "--job", name, "--dir", args.dir, "--passages", str(args.passages),
            "--sample", str(args.sample), "--queries", str(args.queries), "--vocab-words", str(args.vocab_words),
            "--vocab", str(args.vocab)]
    child, peak = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True), 0.0
    while child.poll() is None:
        try:
            peak = max(peak, anonymous_mib(child.pid))
        except (FileNotFoundError, StopIteration, ProcessLookupError):
            pass
        time.sleep(0.02)
    if child.returncode:
        raise SystemExit(f"job {name} failed")
    result = json.loads(child.stdout.read().splitlines()[-1])
    shown = {k: v for k, v in result.items() if k not in ("top", "scores")}
    print(f"  {name}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
          + f", peak {peak:.0f} MiB", flush=True)
    return {**result, "peak": peak}


def same(a: list[list[str]], b: list[list[str]]) -> tuple[int, int]:
    """(queries with the same top-k passages, ... in the same order)."""
    return sum(set(x) == set(y) for x, y in zip(a, b)), sum(x == y for x, y in zip(a, b))


def same_but_ties(ours: dict, theirs: dict) -> int:
    """Queries whose top-k have the same scores, to the bit, and the same passages above the k-th score: they can
    differ only in which of several passages tied at the k-th score come last, and in the order of equal scores."""
    return sum(s == t and {i for i, x in zip(a, s) if x > s[-1]} == {i for i, x in zip(b, t) if x > t[-1]}
               for a, s, b, t in zip(ours["top"], ours["scores"], theirs["top"], theirs["scores"]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--vocab", type=int, default=50_000,
                   help="distinct words of the synthetic law: 50k as in retrieval.py; ~1.5M for 1M passages by Heaps' "
                        "law on wiki-mini, so that queries hold rare words as real ones do")
    p.add_argument("--sample", type=int, default=100_000, help="passages that rank_bm25 and bm25s index")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--dir", default="/tmp/retrieval-scale", help="corpus, index and results go here")
    p.add_argument("--only", nargs="+", choices=["bm25", "saved", "sample", "vocab", "pruning"],
                   default=["bm25", "saved", "sample"])
    p.add_argument("--vocab-words", type=int, default=15_000_000, help="wiki-18's, by Heaps' law on wiki-mini")
    p.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    if args.job:
        queries = None
        if args.job not in ("corpus", "vocab"):
            with open(os.path.join(args.dir, "queries.json")) as f:
                queries = json.load(f)
        print(json.dumps(JOBS[args.job](args, queries)))
        return

    if "vocab" in args.only:
        run("vocab", args)
    if args.only == ["vocab"]:
        return
    if not os.path.exists(os.path.join(args.dir, "corpus.jsonl")):
        run("corpus", args)
    corpus_mib = os.path.getsize(os.path.join(args.dir, "corpus.jsonl")) / 2**20
    print(f"corpus: {args.passages:,} synthetic passages ({args.vocab:,}-word law), {corpus_mib:,.0f} MiB of JSON "
          f"lines; {args.queries} queries, top-{K}")
    results = {}
    if "bm25" in args.only:
        results["bm25"] = run("bm25", args)
    if "saved" in args.only:
        if not os.path.exists(os.path.join(args.dir, "index")):
            results["build"] = run("build", args)
        results["saved"] = run("saved", args)
    if "pruning" in args.only:
        results["pruning"] = run("pruning", args)
    if "sample" in args.only:
        for name in ("sample_bm25", "rank_bm25", "bm25s"):
            if name != "bm25s" or __import__("importlib").util.find_spec("bm25s"):
                results[name] = run(name, args)
    print(json.dumps({k: {n: v for n, v in r.items() if n not in ("top", "scores")} for k, r in results.items()}))
    if "bm25" in results and "saved" in results:
        print("top-3 of the saved index = BM25 in memory (same passages, same order): "
              f"{same(results['saved']['top'], results['bm25']['top'])} of {args.queries}")
    if "rank_bm25" in results:
        print("top-3 of BM25 = rank_bm25 on the sample (same passages, same order): "
              f"{same(results['sample_bm25']['top'], results['rank_bm25']['top'])} of {args.queries}; same scores and "
              f"the same passages above the 3rd score: {same_but_ties(results['sample_bm25'], results['rank_bm25'])}")
    if "bm25s" in results:
        print("top-3 of bm25s = rank_bm25 on the sample (same passages, same order): "
              f"{same(results['bm25s']['top'], results['rank_bm25']['top'])} of {args.queries}")


if __name__ == "__main__":
    main()
