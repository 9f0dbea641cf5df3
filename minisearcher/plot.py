"""Plot a run's metrics.jsonl: reward, searches, format, answer F1 and KL per GRPO step, stage 1 then stage 2.

    python -m minisearcher.plot runs/demo/metrics.jsonl            # writes runs/demo/training.png
    python -m minisearcher.plot runs/a/metrics.jsonl -o a.png
"""
import argparse
import json
import os

PANELS = [("reward_mean", "mean reward\n(stage 1: 0..1; stage 2: F1 - format penalty)"),
          ("searches_mean", "searches per episode"),
          ("format_ok", "episodes in the right format"), ("f1_mean", "answer F1 of the samples"),
          ("kl", "KL to the reference, per token")]


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(rows: list[dict]):
    """One panel per metric, the GRPO steps of both stages in a row (rows of other phases are left out)."""
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("stage") in (1, 2)]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.6))
    for stage, colour in [(1, "tab:blue"), (2, "tab:orange")]:
        mine = [(i, r) for i, r in enumerate(rows) if r["stage"] == stage]
        if not mine:  # a run of one stage (--stage 2 from an adapter) gets no empty line in the legend
            continue
        for ax, (key, _) in zip(axes, PANELS):
            ax.plot([i for i, _ in mine], [r[key] for _, r in mine], color=colour, label=f"stage {stage}")
    for ax, (_, title) in zip(axes, PANELS):
        ax.set(title=title, xlabel="GRPO step (stage 1, then stage 2)")
        ax.legend()
    fig.tight_layout()
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="a run's metrics.jsonl")
    p.add_argument("-o", "--out", help="the picture to write (default: training.png beside the metrics)")
    args = p.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")  # a file, not a window
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "training.png")
    plot_training(read_metrics(args.metrics)).savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
