"""What the documents put in front of the model: do they hold the answer?

For the queries of R1-Searcher's own trajectories (data/r1-searcher/traces/), how often a gold answer is in the
passages its retriever injected, and in what this project's BM25 over wiki-mini.jsonl injects for the same queries,
by top-k and by passage length (a rollout's --top-k and --doc-tokens). One count per trajectory: a gold answer, as
whole words, in any of its documents blocks (evaluation.found). The evaluation split (the first 100 questions of each
file) is left out, and so are yes/no answers, which any passage may hold.

    python benchmarks/passages.py --model "$GGUF"        # the tokenizer that cuts passages (the recipe's model)
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import qwen_tokenizer_dir  # noqa: E402
from minisearcher.data import load_corpus, load_questions, read_jsonl  # noqa: E402
from minisearcher.evaluation import found  # noqa: E402
from minisearcher.model import load_tokenizer  # noqa: E402
from minisearcher.prompts import documents_block  # noqa: E402
from minisearcher.retriever import BM25  # noqa: E402
from minisearcher.rewards import normalize_answer  # noqa: E402
from minisearcher.sft import TRAJECTORY_SEARCH, from_trajectory  # noqa: E402

TRACES = {"hotpotqa_500": ["hotpotqa_qwen", "hotpotqa_llama"], "2wiki_500": ["2wiki_qwen"]}
OURS = [(3, 64), (3, 128), (3, None), (5, 64), (5, 128)]  # (top-k, tokens a passage; None: whole)
NUMBERED = re.compile(r"\n\(\d+\)")  # the traces' blocks put each passage on a line of its own: "(1)..."


def their_blocks(trajectory: str, k: int | None) -> list[tuple[str, bool]]:
    """The documents R1-Searcher's system injected, the first k passages of each block, as system segments."""
    return [(" ".join(NUMBERED.split(block)[1:][:k]), False) for _, block in TRAJECTORY_SEARCH.findall(trajectory)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="whose tokenizer cuts the passages (default: Qwen2.5's)")
    p.add_argument("--data", default="data", help="the folder holding r1-searcher/ and wiki-mini.jsonl")
    args = p.parse_args()
    tokenizer = load_tokenizer(args.model or qwen_tokenizer_dir())
    bm25 = BM25(load_corpus(os.path.join(args.data, "wiki-mini.jsonl")))
    top = {}  # query -> BM25's top 5, searched once for every setting

    def ours(query: str, k: int, tokens: int | None) -> str:
        if query not in top:
            top[query] = bm25.search([query], 5)[0]
        return documents_block(top[query][:k], tokenizer, tokens)

    columns = ["theirs, top 3", "theirs, all"] + [f"top {k}, {t or 'whole'}" for k, t in OURS]
    print(f"{bm25}; passages cut by {args.model or 'Qwen2.5'}'s tokenizer\n")
    print("| traces | trajectories | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 2) + "|")
    for data, names in TRACES.items():
        golds = {q["question"]: q["answers"]
                 for q in load_questions(os.path.join(args.data, "r1-searcher", f"{data}.jsonl[100:]"))}
        for name in names:
            rows = [(row["trajectory"], golds[row["question"].strip()])
                    for _, row in read_jsonl(os.path.join(args.data, "r1-searcher", "traces", f"{name}.jsonl"))
                    if row["question"].strip() in golds]
            rows = [(t, g) for t, g in rows if not {normalize_answer(a) for a in g} & {"yes", "no"}]
            hits = [sum(found(their_blocks(t, k), g) for t, g in rows) for k in (3, None)]
            hits += [sum(found(from_trajectory(t, lambda q: ours(q, k, tokens)), g) for t, g in rows)
                     for k, tokens in OURS]
            print(f"| {name} | {len(rows)} | " + " | ".join(f"{h / len(rows):.2f}" for h in hits) + " |")


if __name__ == "__main__":
    main()
