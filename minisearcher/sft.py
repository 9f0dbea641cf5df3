"""Cold-start SFT (as in R1-Searcher++): supervised traces written in the exact protocol teach the format before RL.

A trace is a list of segments (text, written by the model?). Each segment is tokenised on its own, just as the
rollout tokenises each documents block on its own, and the documents blocks are masked out of the loss.
"""
import math
import random
import re
from collections import Counter
from typing import Callable

from .data import gold_answers, read_jsonl
from .episode import Episode
from .grpo import all_sum, collate, optimizer_step, token_logprobs
from .prompts import (ANSWER, BEGIN_DOCS, BEGIN_QUERY, EMPTY_QUERY, END_ANSWER, END_DOCS, END_QUERY, END_THINK,
                      documents_block, message_block)
from .rewards import cover_em, format_ok
from .rollout import RolloutConfig


def load_traces(path: str, tokenizer, retriever, cfg: RolloutConfig, exclude: set[str]) -> tuple[list[dict], Counter]:
    """The cold-start traces of --sft-data, from rows of either format:
    - {"question", "segments": [[text, by_model], ...]}, taken as they are (a broken row is an error, with file:line);
    - R1-Searcher's trajectories {"question", "answer", "pred_ans", "judged_correct", "trajectory"}, converted by
      from_trajectory and kept only if right, searching and within the rollout's budgets (a trajectory that breaks
      the protocol is skipped: it is another model's output, not a file someone wrote).
    Questions in `exclude` are never kept. Returns the traces and the count of rows skipped, by reason."""
    traces, skipped = [], Counter()

    def documents(query: str) -> str:  # what a rollout injects for that query
        if not query:
            return message_block(EMPTY_QUERY)
        return documents_block(retriever.search([query], cfg.top_k)[0], tokenizer, cfg.doc_tokens)

    for n, row in read_jsonl(path):
        question = row.get("question")
        if not isinstance(question, str) or not ("segments" in row or "trajectory" in row):
            raise ValueError(f"{path}:{n}: a trace needs 'question' and 'segments': [[text, by_model], ...] (or an "
                             "R1-Searcher trajectory: 'question', 'answer', 'pred_ans', 'judged_correct', "
                             "'trajectory')")
        if question.strip() in exclude:
            skipped["an excluded question"] += 1
            continue
        if "segments" in row:
            segments = row["segments"]
            if not isinstance(segments, list) or not all(
                    isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) for s in segments):
                raise ValueError(f"{path}:{n}: 'segments' must be [[text, by_model], ...]")
            traces.append({"question": question.strip(), "segments": [(t, bool(m)) for t, m in segments]})
            continue
        reason = rejected(row, f"{path}:{n}")
        segments = [] if reason else from_trajectory(row["trajectory"], documents)
        if segments and not format_ok("".join(text for text, by_model in segments if by_model)):
            reason = "a broken protocol (tags out of place, no answer)"
        reason = reason or over_budget(segments, tokenizer, cfg)
        if reason:
            skipped[reason] += 1
        else:
            traces.append({"question": question.strip(), "segments": segments, "source": f"{path}:{n}"})
    return traces, skipped


# a query and the documents block its system injected: groups 1 and 2
TRAJECTORY_SEARCH = re.compile(f"{re.escape(BEGIN_QUERY)}(.*?){re.escape(END_QUERY)}\\s*{re.escape(BEGIN_DOCS)}(.*?)"
                               f"{re.escape(END_DOCS)}\\s*", re.S)


def from_trajectory(text: str, documents: Callable[[str], str]) -> list[tuple[str, bool]]:
    """A trajectory as segments: the model's text as written, and after each of its queries documents(query), the
    block this project's system injects, in place of the block the trajectory's own system injected."""
    segments, start = [], 0
    for search in TRAJECTORY_SEARCH.finditer(text):
        segments += [(text[start:search.start()] + f"{BEGIN_QUERY}{search.group(1)}{END_QUERY}", True),
                     (documents(search.group(1).strip()), False)]
        start = search.end()
    return segments + [(text[start:], True)]


def rejected(row: dict, where: str) -> str | None:
    """Why a trajectory is not a trace to learn from (rejection sampling), or None."""
    text = row.get("trajectory")
    if not isinstance(text, str) or not isinstance(row.get("pred_ans"), str):
        raise ValueError(f"{where}: 'trajectory' and 'pred_ans' must be strings")
    golds = gold_answers(row.get("answer"), where)
    if not row.get("judged_correct"):
        return "judged wrong"
    if not cover_em(row["pred_ans"], golds):
        return "the answer does not hold the gold (Cover-EM 0)"
    searches = text.count(BEGIN_QUERY)
    if not searches:
        return "no search"
    if len(TRAJECTORY_SEARCH.findall(text)) != searches:
        return "a broken protocol (a query without documents)"
    return None


def over_budget(segments: list[tuple[str, bool]], tokenizer, cfg: RolloutConfig) -> str | None:
    """Whether the trace fits what a rollout may write: searches, tokens per turn and per episode."""
    lengths = [(len(tokenizer(text, add_special_tokens=False).input_ids), by_model) for text, by_model in segments]
    if len(segments) // 2 > cfg.max_searches:
        return "more searches than --max-searches"
    if max(n for n, by_model in lengths if by_model) > cfg.max_turn_tokens:
        return "a turn longer than --max-turn-tokens"
    if sum(n for n, _ in lengths) > cfg.max_episode_tokens:
        return "longer than --max-episode-tokens"
    return None


def sft_trace(question: dict, style: str, documents: Callable[[str], str],
              rng: random.Random) -> list[tuple[str, bool]]:
    """A toy-world question's trace, the response after the prompt's <think>. "full" searches both hops and answers
    from the documents; "one" searches the first hop and guesses; "none" guesses at once. A guess is a name of the
    right kind, right only by luck. `documents(query)` is the block the system injects, with its own surrounding
    newlines."""
    gold = question["answers"][0]
    hops = question["steps"][:{"full": 2, "one": 1, "none": 0}[style]]
    answer = gold if style == "full" else rng.choice([gold, *question["decoys"]])
    segments, said = [], ""
    for step in hops:
        segments += [(f"{said} {step['thought']} {BEGIN_QUERY} {step['query']} {END_QUERY}", True),
                     (documents(step["query"]), False)]
        said = " " + step["finding"]  # every name follows a space, so it is the same tokens wherever it stands
    guess = "" if style == "full" else f" I think the answer is {answer}."
    return segments + [(f"{said}{guess} {END_THINK}\n\n{ANSWER} {answer} {END_ANSWER}", True)]


def trace_episode(tokenizer, prompt: str, segments: list[tuple[str, bool]]) -> Episode:
    episode = Episode(tokenizer(prompt, add_special_tokens=False).input_ids)
    for text, by_model in segments:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        episode.extend(ids, text, by_model)
    return episode


def sft_step(model, optimizer, episodes: list[Episode], pad_id: int, micro_batch: int = 8) -> float:
    """One optimizer step of cross-entropy on the model's own tokens, averaged over those tokens. Returns the loss,
    or nan when the step was skipped (a non-finite loss or gradient: the weights are left as they were)."""
    device = next(model.parameters()).device
    n_tokens = max(1, all_sum([sum(sum(e.loss_mask) for e in episodes)])[0])  # of all processes, in a parallel run
    total = 0.0
    for start in range(0, len(episodes), micro_batch):
        batch = collate(episodes[start:start + micro_batch], pad_id, device)
        K = batch["K"]
        mask = batch["loss_mask"][:, -K:]  # (N, K)
        logp = token_logprobs(model, batch["ids"], batch["attention"], K, mask=mask)  # (N, K), 0 where mask is 0
        loss = -logp.sum() / n_tokens
        loss.backward()
        total += loss.item()
    stepped = optimizer_step(model, optimizer, 1.0, total)
    return all_sum([total])[0] if stepped else math.nan
