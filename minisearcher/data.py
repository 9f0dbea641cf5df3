"""Question sets and passage corpora. Every bad row is reported with its file and line before any work starts."""
import json
import os
import re


def iter_jsonl(path: str):
    """(line number, row) of each non-blank line, read as it goes: a corpus of millions is never held at once."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row


def read_jsonl(path: str) -> list[tuple[int, dict]]:
    rows = list(iter_jsonl(path))
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    return rows


def gold_answers(answer, where: str) -> list[str]:
    """`answer` may be one string or a list of accepted strings; either way we keep a non-empty list."""
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: 'answer' must be a non-empty string or a list of them, got {answer!r}")
    return answers


def load_questions(source: str, limit: int | None = None) -> list[dict]:
    """Rows {"question": str, "answers": [str, ...]} from a JSON-lines file or a `datasets` name.

    A dataset name may carry a config and split: "hotpot_qa:distractor@validation" (default split: train). Either may
    end with a slice of its rows, as in Python: "hotpotqa_500.jsonl[100:]" is all but the first 100.
    """
    source, rows_slice = split_slice(source)
    if os.path.exists(source) or source.endswith((".jsonl", ".json")):
        rows = [(f"{source}:{n}", row) for n, row in read_jsonl(source)]
    else:
        rows = [(f"{source}[{i}]", row) for i, row in enumerate(load_hub_dataset(source))]
    questions = []
    for where, row in rows[rows_slice][:limit]:
        question = row.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: missing 'question' (a non-empty string)")
        answers = gold_answers(row.get("answer", row.get("answers")), where)
        questions.append({"question": question.strip(), "answers": answers})
    return questions


def split_slice(source: str) -> tuple[str, slice]:
    match = re.fullmatch(r"(.+)\[(\d*):(\d*)\]", source)
    if not match:
        return source, slice(None)
    start, stop = (int(x) if x else None for x in match.group(2, 3))
    return match.group(1), slice(start, stop)


def load_hub_dataset(name: str):
    import datasets

    name, _, split = name.partition("@")
    name, _, config = name.partition(":")
    try:
        return datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as e:
        raise ValueError(f"could not load the dataset {name!r} ({type(e).__name__}: {e}). "
                         "Pass a local JSON-lines file with 'question' and 'answer' instead.") from None


def passage_text(passage: dict) -> str:
    """What BM25 indexes and what a documents block shows of a passage."""
    return f"{passage['title']} {passage['text']}"


def write_jsonl(rows: list[dict], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def split_contents(contents: str) -> tuple[str, str]:
    """Title and text of '"Title"\\ntext', the one field of the Wikipedia dumps of R1-Searcher, FlashRAG and
    Search-R1."""
    title, _, text = contents.partition("\n")
    return title.strip('"'), text


def iter_corpus(path: str):
    """Passages {"id", "title", "text"}, one at a time; a row with a single "contents" field is split."""
    for n, row in iter_jsonl(path):
        if "contents" in row and "text" not in row:
            title, text = split_contents(str(row["contents"]))
            row = {"id": row.get("id", str(n)), "title": title, "text": text}
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{path}:{n}: missing 'text' (or 'contents')")
        yield {"id": str(row.get("id", n)), "title": str(row.get("title", "")), "text": row["text"]}


def load_corpus(path: str) -> list[dict]:
    passages = list(iter_corpus(path))
    if not passages:
        raise ValueError(f"{path}: the file is empty")
    return passages
