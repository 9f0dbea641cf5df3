"""How much of a model's Cover-EM on comparison questions comes from answers that name both candidates?

A comparison ("Which film came out first, X or Y?", "Who was born first out of X and Y?") has its gold answer written
in the question. Cover-EM counts an answer right when it holds every word of the gold, so "X came out before Y" is
right whichever of X and Y is. For each prediction file of eval.py (OUT.<set>.jsonl) this prints the comparisons,
their Cover-EM hits, the hits that name both candidates, the other questions (the multi-hop ones: "Where was the
director of film X born?"), their hits and how many of their answers the model's searches found, and the set's
Cover-EM with the hits naming both candidates counted wrong.

    python benchmarks/comparisons.py runs/seed1-t07/eval/stage2.2wiki_500.jsonl base/naive-plain.2wiki_500.jsonl
"""
import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minisearcher.data import read_jsonl  # noqa: E402
from minisearcher.rewards import cover_em  # noqa: E402

# the shapes of 2Wiki's comparisons (and most of HotpotQA's): "..., X or Y?", "Was X or Y born first?",
# "... out of X and Y?"
CANDIDATES = [re.compile(p) for p in (
    r"[,:] (.+) or (.+?)(?:, [^,]*)?\s*\?\s*$",
    r"^(?:Was|Were|Is|Are|Did|Does) (.+?) or (.+?) (?:born|older|younger|come|released|founded|formed)",
    r"(?:out of|[Bb]etween) (.+?) and (.+?)[,?]",
)]


def candidates(question: str, golds: list[str]) -> tuple[str, str] | None:
    """The two candidates of a comparison whose gold is one of them, or None for any other question."""
    for pattern in CANDIDATES:
        m = pattern.search(question)
        if m and any(cover_em(c, golds) for c in m.groups()):
            return m.group(1), m.group(2)
    return None


def count(rows: list[dict]) -> dict:
    pairs = [candidates(r["question"], r["golds"]) for r in rows]
    comparisons = [(r, pair) for r, pair in zip(rows, pairs) if pair]
    others = [r for r, pair in zip(rows, pairs) if not pair]
    return {"comparisons": len(comparisons), "their hits": sum(r["cover_em"] for r, _ in comparisons),
            "hits naming both": sum(bool(r["cover_em"]) and all(cover_em(r["prediction"], [c]) for c in pair)
                                    for r, pair in comparisons),
            "others": len(others), "others' hits": sum(r["cover_em"] for r in others),
            "others' answer found": sum(r["found"] for r in others), "Cover-EM": sum(r["cover_em"] for r in rows)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", nargs="+", help="eval.py's OUT.<set>.jsonl files")
    args = p.parse_args()
    try:
        files = {path: [row for _, row in read_jsonl(path)] for path in args.predictions}
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    columns = ["comparisons", "their hits", "hits naming both", "others", "others' hits", "others' answer found"]
    print("| predictions | n | " + " | ".join(columns) + " | Cover-EM | without those naming both |")
    print("|---" * (len(columns) + 4) + "|")
    for path, rows in files.items():
        c = count(rows)
        print(f"| {path} | {len(rows)} | " + " | ".join(f"{c[k]:.0f}" for k in columns)
              + f" | {c['Cover-EM'] / len(rows):.2f} | {(c['Cover-EM'] - c['hits naming both']) / len(rows):.2f} |")


if __name__ == "__main__":
    main()
