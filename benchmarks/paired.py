"""Is one model better than another on the same questions, beyond the noise of which questions were asked?

Paired bootstrap over two prediction files of eval.py (OUT.<set>.jsonl, the same questions in the same order):
resample the questions with replacement, 10,000 times, and take the mean difference B minus A of each metric on
every resample; the 2.5th and 97.5th percentiles are the 95% interval. An interval that holds 0 is no difference.

    python benchmarks/paired.py runs/seed1/eval/sft.2wiki_500.jsonl runs/seed1-t07/eval/stage2.2wiki_500.jsonl
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from minisearcher.data import read_jsonl  # noqa: E402

METRICS = ["em", "f1", "cover_em", "format_ok", "found"]


def paired_bootstrap(a: list[float], b: list[float], resamples: int = 10_000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean of b - a, low, high of its 95% interval)."""
    diffs = [y - x for x, y in zip(a, b)]
    rng, n = random.Random(seed), len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="predictions of the model to subtract")
    p.add_argument("b", help="predictions of the model compared with it")
    args = p.parse_args()
    try:
        a, b = ([row for _, row in read_jsonl(path)] for path in (args.a, args.b))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if [r["question"] for r in a] != [r["question"] for r in b]:
        sys.exit(f"error: {args.a} and {args.b} do not hold the same questions in the same order")
    print(f"{len(a)} questions; {args.b} minus {args.a}, paired bootstrap, 95%")
    for m in METRICS:
        diff, low, high = paired_bootstrap([float(r[m]) for r in a], [float(r[m]) for r in b])
        print(f"{m:10s} {diff:+.2f} [{low:+.2f}, {high:+.2f}]")
    same = sum(x["prediction"] == y["prediction"] for x, y in zip(a, b))
    better = sum(y["cover_em"] > x["cover_em"] for x, y in zip(a, b))
    worse = sum(y["cover_em"] < x["cover_em"] for x, y in zip(a, b))
    print(f"Cover-EM: {better} questions better, {worse} worse; {same} predictions the very same string")


if __name__ == "__main__":
    main()
