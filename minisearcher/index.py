"""A BM25 index on disk, for corpora of millions of passages: built once, memory-mapped at every start.

    python -m minisearcher.index --corpus wiki-18.jsonl --out index/wiki-18
    python train.py --retriever index/wiki-18 ...

The folder holds the arrays of minisearcher.retriever.BM25, equal to those `BM25(passages)` builds in memory (so
the top-k are the same), and the passages:

    vocab.json            the words, in the order of their ids
    indptr.npy  (V+1,)    word w's entries are indptr[w]:indptr[w+1] of doc and weight
    doc.npy     (P,)      int32, the passage of each (word, passage) pair; ascending within a word
    weight.npy  (P,)      float64, the word's BM25 weight in that passage
    best.npy    (V,)      each word's largest weight
    passages.jsonl        one passage a line: {"id", "title", "text"}
    offsets.npy (N+1,)    where each line of passages.jsonl starts, in bytes
    meta.json             the counts, to tell a complete index from a broken one

Opening the index reads the vocabulary and maps the rest: the operating system pages postings and passages in as
queries touch them. The build never holds the corpus's words at once, so that it fits in memory for any corpus:
pass 1 reads the passages one at a time and, every SHARD passages, writes the shard's (word, passage, tf) triples,
sorted by word, to a temporary file; pass 2 fills doc and weight one range of words at a time (about CHUNK pairs),
gathering that range from every shard.
"""
import argparse
import json
import mmap
import os
import shutil
import sys
from array import array

import numpy as np
from tqdm import tqdm

from .data import iter_corpus
from .retriever import BM25, idf, pairs, weight, word_ids

SHARD = 100_000  # passages per shard in pass 1: a few hundred MB of arrays while its pairs are sorted
CHUNK = 16_000_000  # (word, passage) pairs per range of words in pass 2: the build peaks at ~0.7 GB (and the vocab)
ARRAYS = ["indptr", "doc", "weight", "best", "offsets"]
TRIPLE = np.dtype([("word", np.int32), ("doc", np.int32), ("tf", np.int32)])  # one (word, passage) pair of pass 1


def build(corpus: str, out: str, shard: int = SHARD, chunk: int = CHUNK, k1: float = 1.5, b: float = 0.75,
          epsilon: float = 0.25):
    """Index the passages of the JSON-lines file `corpus` into the new folder `out`."""
    if os.path.exists(out):
        raise ValueError(f"--out {out} already exists; remove it or choose another folder")
    tmp = out + ".tmp"  # renamed to `out` once complete: a folder named `out` always holds a whole index
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        vocab, doc_len, starts = read_passages(corpus, tmp, shard)
        with open(os.path.join(tmp, "vocab.json"), "w") as f:
            json.dump(list(vocab), f)
        V = len(vocab)
        del vocab  # ~2 GB for wiki-18's ~15M words: not held through pass 2
        sort_pairs(tmp, V, doc_len, starts, chunk, k1, b, epsilon)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"passages": len(doc_len), "words": V, "pairs": starts[-1], "k1": k1, "b": b,
                       "epsilon": epsilon, "corpus": os.path.abspath(corpus)}, f, indent=2)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, out)


def read_passages(corpus: str, folder: str, shard: int) -> tuple[dict, np.ndarray, list[int]]:
    """Pass 1: passages.jsonl and offsets.npy, and the (word, passage, tf) triples of each shard of passages, sorted
    by word, in triples.tmp. Returns the vocabulary, each passage's length in words and where each shard starts."""
    vocab, offsets, doc_len, starts = {}, array("q", [0]), array("i"), [0]
    with (open(os.path.join(folder, "passages.jsonl"), "wb") as passages,
          open(os.path.join(folder, "triples.tmp"), "wb") as triples):
        def write_shard(words: list[np.ndarray]):
            word, doc, tf = pairs(words)
            shard_triples = np.empty(len(word), dtype=TRIPLE)
            shard_triples["word"], shard_triples["doc"], shard_triples["tf"] = word, doc + len(doc_len), tf
            triples.write(shard_triples.tobytes())
            starts.append(starts[-1] + len(word))
            doc_len.extend(len(w) for w in words)

        words = []
        for passage in tqdm(iter_corpus(corpus), total=count_lines(corpus), unit=" passages",
                            desc="pass 1 of 2: read"):
            line = (json.dumps(passage) + "\n").encode()
            passages.write(line)
            offsets.append(offsets[-1] + len(line))
            words.append(word_ids(passage, vocab))
            if len(words) == shard:
                write_shard(words)
                words = []
        if words:
            write_shard(words)
    if not vocab:
        raise ValueError(f"{corpus}: no passages with words to index")
    np.save(os.path.join(folder, "offsets.npy"), np.frombuffer(offsets, dtype=np.int64))
    return vocab, np.array(doc_len), starts


def sort_pairs(folder: str, V: int, doc_len: np.ndarray, starts: list[int], chunk: int, k1: float, b: float,
               epsilon: float):
    """Pass 2: indptr.npy, doc.npy, weight.npy and best.npy from the triples of pass 1, which it then deletes."""
    triples = np.memmap(os.path.join(folder, "triples.tmp"), dtype=TRIPLE, mode="r")
    shards = [triples[a:z] for a, z in zip(starts, starts[1:])]  # each sorted by word, the shards in corpus order
    df = sum(np.bincount(shard["word"], minlength=V) for shard in shards)  # (V,) passages holding each word
    indptr = np.concatenate([[0], np.cumsum(df)])
    N, P = len(doc_len), starts[-1]
    idfs, avgdl = idf(df, N, epsilon), doc_len.sum() / N
    doc = np.lib.format.open_memmap(os.path.join(folder, "doc.npy"), "w+", np.int32, (P,))
    weights = np.lib.format.open_memmap(os.path.join(folder, "weight.npy"), "w+", np.float64, (P,))
    best = np.empty(V)
    bounds = [0]  # ranges of words, about `chunk` pairs each: range r is words bounds[r] to bounds[r+1] - 1
    while bounds[-1] < V:
        bounds.append(max(bounds[-1] + 1, np.searchsorted(indptr, indptr[bounds[-1]] + chunk, side="right") - 1))
    # where each range starts in each shard: one search of the shard's (contiguous) words, not one per range
    cuts = [np.searchsorted(np.ascontiguousarray(shard["word"]), bounds) for shard in shards]
    with tqdm(total=P, unit=" pairs", unit_scale=True, desc="pass 2 of 2: sort") as bar:
        for r, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            # a stable sort by word keeps each word's passages ascending: the shards are in corpus order
            part = np.concatenate([shard[cut[r]:cut[r + 1]] for shard, cut in zip(shards, cuts)])
            part = part[np.argsort(part["word"], kind="stable")]
            doc[indptr[lo]:indptr[hi]] = part["doc"]
            weights[indptr[lo]:indptr[hi]] = weight(idfs[part["word"]], part["tf"], doc_len[part["doc"]], avgdl, k1, b)
            best[lo:hi] = np.maximum.reduceat(weights[indptr[lo]:indptr[hi]], indptr[lo:hi] - indptr[lo])
            bar.update(len(part))
    doc.flush()
    weights.flush()
    np.save(os.path.join(folder, "indptr.npy"), indptr)
    np.save(os.path.join(folder, "best.npy"), best)
    del triples, shards
    os.remove(os.path.join(folder, "triples.tmp"))


def count_lines(path: str) -> int:
    """For the progress bar's total: a pass over the raw bytes takes seconds where tokenising takes minutes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 24), b""))


class Passages:
    """The passages of a saved index, read from disk when asked for: passages[i] is line i of passages.jsonl."""

    def __init__(self, path: str, offsets: np.ndarray):
        self.offsets = offsets
        with open(path, "rb") as f:
            self.file = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # slices need no seek: thread-safe

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> dict:
        return json.loads(self.file[self.offsets[i]:self.offsets[i + 1]])


class SavedBM25(BM25):
    """A BM25 index written by `build`, memory-mapped from its folder; it searches as BM25 does."""

    def __init__(self, folder: str):
        self.folder = folder
        try:
            with open(os.path.join(folder, "meta.json")) as f:
                meta = json.load(f)
            with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
                self.vocab = {w: j for j, w in enumerate(json.load(f))}
            self.indptr, self.doc, self.weight, self.best, offsets = (
                np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r") for name in ARRAYS)
            self.passages = Passages(os.path.join(folder, "passages.jsonl"), offsets)
            N, V, P = meta["passages"], meta["words"], meta["pairs"]
            sizes = {"vocab.json": (len(self.vocab), V), "indptr.npy": (len(self.indptr), V + 1),
                     "best.npy": (len(self.best), V), "doc.npy": (len(self.doc), P),
                     "weight.npy": (len(self.weight), P), "offsets.npy": (len(offsets), N + 1),
                     "passages.jsonl": (len(self.passages.file), int(offsets[-1]))}
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{folder}: not a readable index ({type(e).__name__}: {e}); build one with "
                             "python -m minisearcher.index --corpus FILE --out FOLDER") from None
        for name, (found, expected) in sizes.items():
            if found != expected:
                raise ValueError(f"{folder}: broken index: {name} holds {found:,} entries where meta.json says "
                                 f"{expected:,}; build it again with python -m minisearcher.index")

    def __str__(self):
        return f"the BM25 index {self.folder} ({len(self.passages):,} passages)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="JSON lines of passages: id, title, text (or contents)")
    p.add_argument("--out", required=True, help="the index folder to create")
    args = p.parse_args(argv)
    try:
        build(args.corpus, args.out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"done: {SavedBM25(args.out)}")


if __name__ == "__main__":
    main()
