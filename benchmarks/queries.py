"""Whose queries find the answer: the model's, or R1-Searcher's on the same questions through the same BM25?

eval.py's predictions hold the model's queries and whether the documents they brought hold a gold answer (found).
This replays the queries of R1-Searcher's own trajectory for each of those questions (data/r1-searcher/traces/)
through this project's BM25 over wiki-mini.jsonl, with the same top-k and passage length, and counts found the same
way (evaluation.found), comparisons and the other questions apart (benchmarks/comparisons.py). Where the two differ
it is the queries, not the retriever or the corpus. It also counts the episodes with a bridging query: one that
names a capitalised word the question does not and an earlier search's documents do, the way a second hop names what
the first one found ("Sam Firstenberg birthplace" after "Revenge of the Ninja director"). It prints Cover-EM beside
them, to set what the searches find against what the model reads out. The evaluation split (the first 100 questions of
each file) is left out: its trajectories are never used.

    python eval.py --model "$GGUF" --adapter runs/seed1/stage2 --mode search \
        --data "data/r1-searcher/2wiki_500.jsonl[100:200]" --json runs/seed1/eval-train/stage2.json ...
    python benchmarks/queries.py runs/seed1/eval-train/stage2.2wiki_500.jsonl --traces 2wiki_qwen --model "$GGUF"
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import qwen_tokenizer_dir  # noqa: E402
from comparisons import candidates  # noqa: E402
from minisearcher.data import load_corpus, load_questions, read_jsonl  # noqa: E402
from minisearcher.evaluation import found  # noqa: E402
from minisearcher.model import load_tokenizer  # noqa: E402
from minisearcher.prompts import documents_block  # noqa: E402
from minisearcher.retriever import BM25  # noqa: E402
from minisearcher.sft import TRAJECTORY_SEARCH, from_trajectory  # noqa: E402

CAPITALISED = re.compile(r"\b[A-Z][\w-]+")


def bridges(question: str, searches: list[tuple[str, str]]) -> bool:
    """Does a query name a capitalised word that the question does not, read in an earlier search's documents?"""
    asked, read = question.lower(), ""
    for query, documents in searches:  # (query, the documents it brought), in order
        if any(word.lower() not in asked and word.lower() in read for word in CAPITALISED.findall(query)):
            return True
        read += documents.lower()
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", help="eval.py's OUT.<set>.jsonl, on questions outside the evaluation split")
    p.add_argument("--traces", required=True, choices=["hotpotqa_qwen", "hotpotqa_llama", "2wiki_qwen"])
    p.add_argument("--model", default=None, help="whose tokenizer cuts the passages (default: Qwen2.5's)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--doc-tokens", type=int, default=64)
    p.add_argument("--data", default="data", help="the folder holding r1-searcher/ and wiki-mini.jsonl")
    args = p.parse_args()
    folder = os.path.join(args.data, "r1-searcher")
    evaluation = {q["question"] for name in ("hotpotqa_500", "2wiki_500")
                  for q in load_questions(os.path.join(folder, f"{name}.jsonl[:100]"))}
    trajectories = {row["question"].strip(): row["trajectory"]
                    for _, row in read_jsonl(os.path.join(folder, "traces", f"{args.traces}.jsonl"))
                    if row["question"].strip() not in evaluation}
    rows = [row for _, row in read_jsonl(args.predictions) if row["question"] in trajectories]
    if not rows:
        sys.exit(f"error: no question of {args.predictions} has a trajectory in {args.traces} outside the "
                 "evaluation split")
    tokenizer = load_tokenizer(args.model or qwen_tokenizer_dir())
    bm25 = BM25(load_corpus(os.path.join(args.data, "wiki-mini.jsonl")))

    def documents(query: str) -> str:
        return documents_block(bm25.search([query], args.top_k)[0], tokenizer, args.doc_tokens)

    print(f"{len(rows)} questions of {args.predictions} with a trajectory in {args.traces}; {bm25}, top {args.top_k}, "
          f"{args.doc_tokens} tokens a passage\n")
    print("| questions | n | right (Cover-EM) | found, the model's queries | found, R1-Searcher's queries | "
          "bridging, the model | bridging, R1-Searcher | searches, the model | searches, R1-Searcher |\n"
          + "|---" * 9 + "|")
    for kind in ("comparisons", "others"):
        group = [r for r in rows if bool(candidates(r["question"], r["golds"])) == (kind == "comparisons")]
        theirs = [trajectories[r["question"]] for r in group]
        their_searches = [TRAJECTORY_SEARCH.findall(t) for t in theirs]
        our_searches = [list(zip(r["queries"], [text for text, by_model in r["segments"] if not by_model]))
                        for r in group]
        counts = [round(sum(r["cover_em"] for r in group)), sum(r["found"] for r in group),
                  sum(found(from_trajectory(t, documents), r["golds"]) for t, r in zip(theirs, group)),
                  sum(bridges(r["question"], s) for r, s in zip(group, our_searches)),
                  sum(bridges(r["question"], s) for r, s in zip(group, their_searches))]
        searches = [sum(r["searches"] for r in group), sum(map(len, their_searches))]
        n = max(len(group), 1)
        print(f"| {kind} | {len(group)} | " + " | ".join(f"{c} ({c / n:.2f})" for c in counts) + " | "
              + " | ".join(f"{s / n:.2f}" for s in searches) + " |")


if __name__ == "__main__":
    main()
