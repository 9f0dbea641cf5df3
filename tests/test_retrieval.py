"""The three retrievers on wiki-mini: BM25 built in memory, the saved index mapped from disk, a retrieval server."""
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

import eval as eval_cli
import train
from minisearcher import index as index_cli
from minisearcher.data import load_corpus, load_questions
from minisearcher.index import SavedBM25, build
from minisearcher.retriever import BM25
from minisearcher.serve import HTTPRetriever, passage

from conftest import shared_file

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def wiki():
    """wiki-mini's BM25 in memory, its corpus file and 60 real questions as queries."""
    corpus = shared_file("wiki-mini.jsonl")
    queries = [q["question"] for q in load_questions(shared_file("r1-searcher", "hotpotqa_500.jsonl"), limit=30)]
    queries += [q["question"] for q in load_questions(shared_file("r1-searcher", "2wiki_500.jsonl"), limit=30)]
    return BM25(load_corpus(corpus)), corpus, queries + ["the of and", "", "zzzz"]


@pytest.fixture(scope="module")
def saved(wiki, tmp_path_factory):
    """wiki-mini's index, built by `python -m minisearcher.index`."""
    folder = str(tmp_path_factory.mktemp("index") / "wiki-mini")
    index_cli.main(["--corpus", wiki[1], "--out", folder])
    return folder


def test_the_saved_index_is_the_in_memory_index(wiki, saved, tmp_path):
    ours, corpus, queries = wiki
    # also built in shards of 1,000 passages merged by ranges of 50,000 pairs, so that both passes really split
    # and merge (wiki-mini is one shard and one range with the defaults)
    build(corpus, str(tmp_path / "sharded"), shard=1_000, chunk=50_000)
    for mapped in SavedBM25(saved), SavedBM25(str(tmp_path / "sharded")):
        assert mapped.vocab == ours.vocab
        for name in ("indptr", "doc", "weight", "best"):  # the same arrays, to the bit
            assert np.array_equal(getattr(mapped, name), getattr(ours, name)), name
        assert isinstance(mapped.weight, np.memmap)  # mapped, not read
        assert len(mapped.passages) == len(ours.passages)
        assert [mapped.passages[i] for i in range(0, len(ours.passages), 97)] == ours.passages[::97]
        assert mapped.search(queries, 5) == ours.search(queries, 5)
    with pytest.raises(SystemExit, match="already exists"):
        index_cli.main(["--corpus", corpus, "--out", saved])


def test_search_prunes_but_equals_scoring_every_passage(wiki):
    """top_k leaves out passages that cannot make the top k; on 60 questions and k = 1, 3, 10 it still returns what
    sorting every passage's exact score (ties in corpus order) returns."""
    ours, _, queries = wiki
    every = np.arange(len(ours.passages))
    for query, scores in zip(queries, ours.scores(queries)):
        for k in (1, 3, 10):
            found, found_scores = ours.top_k(ours.words(query), k)
            assert list(found) == list(np.lexsort((every, -scores))[:k]), (query, k)
            assert list(found_scores) == list(scores[found])


@pytest.fixture(scope="module")
def server(saved):
    """`python -m minisearcher.serve` on the saved index, in a subprocess, on a port the system picks."""
    process = subprocess.Popen([sys.executable, "-m", "minisearcher.serve", "--index", saved, "--port", "0"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = process.stdout.readline()  # "serving ... at http://127.0.0.1:PORT/retrieve"
    try:
        assert line.startswith("serving"), line + process.stdout.read()
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(timeout=10)


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def test_the_server_answers_as_the_index_does(wiki, server):
    ours, _, queries = wiki
    assert HTTPRetriever(server.removesuffix("/retrieve")).search(queries, 5) == ours.search(queries, 5)
    # Search-R1's request and response shapes, with and without scores; "topk" missing: the server's --top-k (3)
    with_scores = post(server, {"queries": queries[:2], "topk": 4, "return_scores": True})["result"]
    for query, found in zip(queries, with_scores):
        passages, scores = ours.top_k(ours.words(query), 4)
        assert [item["score"] for item in found] == list(scores)
        first = found[0]["document"]
        assert first["contents"] == f'"{first["title"]}"\n{first["text"]}'
        assert passage(first) == ours.passages[passages[0]]
    plain = post(server, {"queries": queries[:2]})["result"]
    assert [[passage(d) for d in found] for found in plain] == ours.search(queries[:2], 3)
    # a Search-R1 dense retriever's documents are corpus rows: {"id", "contents"}
    assert passage({"id": "7", "contents": '"Title"\nthe text'}) == {"id": "7", "title": "Title", "text": "the text"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_bad_retriever_stops_train_and_eval_before_the_model_loads(saved, tmp_path, capsys):
    """The model does not exist: any message about the retriever shows that it was checked first."""
    questions, no_model = shared_file("r1-searcher", "stage_1.jsonl"), str(tmp_path / "no-model")

    def errors(*argv):
        messages = []
        for main, data in ((train.main, ["--train-data", questions, "--out", str(tmp_path / "run")]),
                           (eval_cli.main, ["--data", questions, "--mode", "search"])):
            with pytest.raises(SystemExit) as e:
                main(["--model", no_model, *data, *argv])
            messages.append(str(e.value.code) + capsys.readouterr().err)
        return messages

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for message in errors("--retriever", url):
        assert f"no retrieval server answers at {url}/retrieve" in message
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    with open(broken / "weight.npy", "r+b") as f:  # cut short, as by a full disk
        f.truncate(os.path.getsize(broken / "weight.npy") // 2)
    for message in errors("--retriever", str(broken)):
        assert f"{broken}: not a readable index" in message
    np.save(broken / "weight.npy", np.zeros(10))  # whole, but not this index's
    for message in errors("--retriever", str(broken)):
        assert f"{broken}: broken index: weight.npy holds 10 entries" in message
    os.remove(broken / "weight.npy")
    for message in errors("--retriever", str(broken)):
        assert f"{broken}: not a readable index (FileNotFoundError" in message
    for message in errors("--retriever", str(tmp_path / "nowhere")):
        assert f"{tmp_path / 'nowhere'}: not a readable index" in message
    for message in errors():  # the default, bm25, builds from --corpus
        assert "--retriever bm25 needs --corpus" in message
    for message in errors("--retriever", saved, "--corpus", shared_file("wiki-mini.jsonl")):
        assert "--corpus is read by --retriever bm25 only" in message
