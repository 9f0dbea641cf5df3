"""Answer metrics, the format check and the two stages' rewards.

Everything here reads only the text the model itself wrote (the documents the system injected are not part of it),
so a retrieved passage that happens to contain "<answer>" cannot earn or lose a reward (invariant 3 of
docs/ARCHITECTURE.md).
"""
import re
import string
from collections import Counter

from .prompts import ANSWER, BEGIN_DOCS, BEGIN_QUERY, END_ANSWER, END_DOCS, END_QUERY, END_THINK, THINK

PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str, style: str = "paper") -> str:
    """Lower-case, punctuation out, the articles a/an/the out, whitespace squeezed.

    style "paper", as R1-Searcher's scorer: every punctuation mark (and ‘ ’ ´ `) becomes a space ("Vex-Cor" ->
    "vex cor"), so do underscores, and an answer "True" / "False" reads "yes" / "no". style "squad", SQuAD's
    scorer: punctuation is deleted ("Vex-Cor" -> "vexcor").
    """
    if style == "paper":
        s = {"True": "yes", "False": "no"}.get(s, s)
        s = "".join(" " if ch in PUNCTUATION or ch in "‘’´`" else ch for ch in s.lower())
    else:
        s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def exact_match(prediction: str, golds: list[str], style: str = "paper") -> float:
    return float(any(normalize_answer(prediction, style) == normalize_answer(g, style) for g in golds))


def f1_score(prediction: str, golds: list[str], style: str = "paper") -> float:
    """Token-overlap F1 against the best gold. A yes/no answer is all or nothing, as in HotpotQA's scorer."""
    pred = normalize_answer(prediction, style).split()
    best = 0.0
    for gold in (normalize_answer(g, style) for g in golds):
        if gold in ("yes", "no") or pred in (["yes"], ["no"]):
            best = max(best, float(pred == gold.split()))
            continue
        common = sum((Counter(pred) & Counter(gold.split())).values())
        if common:
            precision, recall = common / len(pred), common / len(gold.split())
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cover_em(prediction: str, golds: list[str], style: str = "paper") -> float:
    """The paper's ACC_R: every normalised token of some gold answer appears in the prediction."""
    pred = set(normalize_answer(prediction, style).split())
    return float(any(gold and set(gold) <= pred for gold in (normalize_answer(g, style).split() for g in golds)))


def extract_answer(model_text: str) -> str:
    """The text inside the last <answer> ... </answer>, or "" when there is none."""
    start = model_text.rfind(ANSWER)
    end = model_text.find(END_ANSWER, start)
    return model_text[start + len(ANSWER):end].strip() if start >= 0 and end >= 0 else ""


def format_ok(model_text: str) -> bool:
    """Reasoning (with balanced queries), exactly one </think>, then exactly one non-empty <answer>...</answer>.

    The prompt already ends with <think>, so the model must not write another; nor may it write the documents tags,
    which belong to the system.
    """
    if THINK in model_text or BEGIN_DOCS in model_text or END_DOCS in model_text:
        return False
    if any(model_text.count(tag) != 1 for tag in (END_THINK, ANSWER, END_ANSWER)):
        return False
    thinking, _, after = model_text.partition(END_THINK)
    between, _, rest = after.partition(ANSWER)
    answer, _, tail = rest.partition(END_ANSWER)
    if between.strip() or tail.strip() or not answer.strip() or BEGIN_QUERY in after or END_QUERY in after:
        return False
    queries = re.findall(re.escape(BEGIN_QUERY) + "|" + re.escape(END_QUERY), thinking)
    return queries == [BEGIN_QUERY, END_QUERY] * (len(queries) // 2)


def reward(stage: int, model_text: str, n_searches: int, golds: list[str], format_penalty: float = 2.0) -> float:
    ok = format_ok(model_text)
    if stage == 1:  # R = R_retrieval + R_format: learn to use search, in the right format
        return 0.5 * (n_searches > 0) + 0.5 * ok
    # stage 2: R = F1(answer, gold) + R_format', with R_format' = 0 if the format is right, else -format_penalty
    # (the paper's: -2)
    return f1_score(extract_answer(model_text), golds) - (0.0 if ok else format_penalty)
