"""The R1-Searcher protocol: its tags, the two prompt templates and the documents block the system injects."""
from .data import passage_text

BEGIN_QUERY, END_QUERY = "<|begin_of_query|>", "<|end_of_query|>"
BEGIN_DOCS, END_DOCS = "<|begin_of_documents|>", "<|end_of_documents|>"
THINK, END_THINK = "<think>", "</think>"
ANSWER, END_ANSWER = "<answer>", "</answer>"

INSTRUCTIONS = (
    "The User asks a question, and the Assistant solves it. The Assistant first thinks through the reasoning "
    "process and then gives the User the final answer. The reasoning is enclosed in <think> </think> and the final "
    "answer in <answer> </answer>, i.e. \"<think> reasoning here </think> <answer> final answer here </answer>\". "
    "While thinking, the Assistant may search for knowledge it is unsure of by writing "
    "\"<|begin_of_query|> keyword_1 keyword_2 ... <|end_of_query|>\". The system then provides search results as "
    "\"<|begin_of_documents|> ...search results... <|end_of_documents|>\". The final answer is short: a name, a "
    "date, a place or yes/no."
)

LIMIT_REACHED = "The search limit has been reached. Answer with what you know now."
EMPTY_QUERY = "The query is empty: write keywords between the query tags."


def use_chat(tokenizer, prompt: str = "auto") -> bool:
    """The one rule for the template: "chat" or "base" as asked; "auto": chat if the tokenizer has a chat template
    (an instruct model), else the plain-text base prompt. Some base checkpoints ship a template too (Qwen2.5's do):
    give them "base"."""
    return tokenizer.chat_template is not None if prompt == "auto" else prompt == "chat"


def build_prompt(tokenizer, question: str, chat: bool, instructions: str = INSTRUCTIONS) -> str:
    """The text the episode starts from. It always ends with <think>, so the response must not write one
    (format_ok rejects it)."""
    if chat:  # instruct model: the instructions as a system message through the model's own chat template
        messages = [{"role": "system", "content": instructions}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + THINK
    return f"{instructions}\n\nUser: {question}\nAssistant: {THINK}"


def documents_block(passages: list[dict], tokenizer=None, max_tokens: int | None = None) -> str:
    """What the system appends after <|end_of_query|>; each passage is cut to `max_tokens` tokens."""
    return message_block(numbered_passages(passages, tokenizer, max_tokens))


def numbered_passages(passages: list[dict], tokenizer=None, max_tokens: int | None = None) -> str:
    """ "(1) Title text" lines, each passage cut to `max_tokens` tokens of the tokenizer."""
    lines = []
    for i, p in enumerate(passages, 1):
        text = passage_text(p)
        if tokenizer is not None:
            text = without_added_tokens(tokenizer, text)
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if max_tokens is not None and len(ids) > max_tokens:
                text = tokenizer.decode(ids[:max_tokens]) + " ..."
        lines.append(f"({i}) {text}")
    return "\n".join(lines)


def without_added_tokens(tokenizer, text: str) -> str:
    """Text from outside (a passage) with a space for every string that the tokenizer reads as one added token:
    "<|endoftext|>" or "<|im_end|>" in a passage would otherwise become the control token itself, end the episode
    or open a fake chat turn."""
    for token in tokenizer.get_added_vocab():  # control tokens hold no space, so a space makes no new one
        text = text.replace(token, " ")
    return text


def message_block(body: str) -> str:
    return f"\n\n{BEGIN_DOCS}\n{body}\n{END_DOCS}\n\n"


# The baselines of eval.py: the same answer format without the search protocol, so only the retrieval differs.
NAIVE_INSTRUCTIONS = (
    "The User asks a question, and the Assistant answers it. The Assistant first thinks through the reasoning "
    "process and then gives the User the final answer. The reasoning is enclosed in <think> </think> and the final "
    "answer in <answer> </answer>, i.e. \"<think> reasoning here </think> <answer> final answer here </answer>\". "
    "The final answer is short: a name, a date, a place or yes/no."
)
RAG_INSTRUCTIONS = NAIVE_INSTRUCTIONS + (
    " Before the question, the User gives search results that may help, between <|begin_of_documents|> and "
    "<|end_of_documents|>."
)


def build_baseline_prompt(tokenizer, question: str, chat: bool, documents: str = "") -> str:
    """The naive prompt, or with a documents block the RAG prompt: build_prompt's with other instructions."""
    if documents:
        return build_prompt(tokenizer, f"{documents.strip()}\n\n{question}", chat, RAG_INSTRUCTIONS)
    return build_prompt(tokenizer, question, chat, NAIVE_INSTRUCTIONS)


PLAIN_INSTRUCTION = "Answer the question with a short phrase only."


def build_plain_prompt(tokenizer, question: str, chat: bool, passages: str = "") -> str:
    """A baseline with no protocol at all: the numbered passages (rag), the instruction, the question, "Answer:". The
    model's first line is its answer: a fair bar for a small model that does not follow the think/answer format."""
    user = f"{PLAIN_INSTRUCTION}\n{question}\nAnswer:"
    if passages:
        user = f"{passages}\n\n{user}"
    if chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True)
    return user
