"""The command-line options that train.py and eval.py share, and recipe files (--config) that hold options."""
import argparse

from .data import load_corpus
from .index import SavedBM25
from .retriever import BM25
from .rollout import RolloutConfig
from .serve import HTTPRetriever


def positive(kind, zero_ok: bool = False):
    """An argparse type: a number of `kind` above 0, or at least 0 if zero_ok (named after kind: argparse's error
    then reads 'invalid int value')."""
    def parse(text):
        value = kind(text)
        if value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero_ok else '>'} 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_model_options(p: argparse.ArgumentParser):
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct", help="hub id, local folder or .gguf file")
    p.add_argument("--adapter", help="a peft adapter folder written by train.py (e.g. OUT/stage1)")
    p.add_argument("--prompt", choices=["auto", "base", "chat"], default="auto",
                   help="prompt template; auto: chat if the tokenizer has a chat template (a base Qwen2.5 has one: "
                        "give it base)")
    p.add_argument("--retriever", default="bm25",
                   help="bm25: BM25 over --corpus, built at start; a folder: an index built by python -m "
                        "minisearcher.index; http://host:port: a retrieval server (python -m minisearcher.serve, or "
                        "Search-R1's)")
    p.add_argument("--corpus", help="JSON lines of passages for --retriever bm25: id, title, text (or contents)")
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"], default="auto")


def open_retriever(args):
    """The retriever that --retriever names: anything with search(queries, k) -> a list of passages per query.
    Opening it checks it (the corpus read, the index whole, the server answering): a ValueError says what is wrong."""
    if args.retriever == "bm25":
        if not args.corpus:
            raise ValueError("--retriever bm25 needs --corpus, JSON lines of passages")
        return BM25(load_corpus(args.corpus))
    if args.corpus:
        raise ValueError(f"--corpus is read by --retriever bm25 only; --retriever {args.retriever} has its passages")
    if args.retriever.startswith(("http://", "https://")):
        return HTTPRetriever(args.retriever)
    return SavedBM25(args.retriever)


def add_rollout_options(p: argparse.ArgumentParser, defaults: RolloutConfig):
    p.add_argument("--top-k", type=positive(int), default=defaults.top_k, help="passages per search")
    p.add_argument("--max-searches", type=positive(int, zero_ok=True), default=defaults.max_searches,
                   help="searches per episode; then the system tells the model to answer")
    p.add_argument("--doc-tokens", type=positive(int), default=defaults.doc_tokens,
                   help="each passage is cut to this many tokens")
    p.add_argument("--max-turn-tokens", type=positive(int), default=defaults.max_turn_tokens,
                   help="sampled tokens between two searches")
    p.add_argument("--max-episode-tokens", type=positive(int), default=defaults.max_episode_tokens,
                   help="response tokens, sampled and injected")


def rollout_config(args, temperature: float) -> RolloutConfig:
    return RolloutConfig(max_searches=args.max_searches, top_k=args.top_k, doc_tokens=args.doc_tokens,
                         max_turn_tokens=args.max_turn_tokens, max_episode_tokens=args.max_episode_tokens,
                         temperature=temperature)


def parse_with_recipe(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """The options of the command line over those of a recipe (--config FILE.yaml, its keys the options' names)."""
    p.add_argument("--config", help="a recipe: a YAML file of this script's options (the command line wins)")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    path = pre.parse_known_args(argv)[0].config
    if path:
        p.set_defaults(**recipe_options(p, path))
    return p.parse_args(argv)


def recipe_options(p: argparse.ArgumentParser, path: str) -> dict:
    """A recipe's options, checked and converted as the command line's are; an error names the file and the key."""
    import yaml

    try:
        with open(path) as f:
            recipe = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        p.error(f"--config {path}: cannot read it ({e})")
    if not isinstance(recipe, dict):
        p.error(f"--config {path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in p._actions if a.dest not in ("help", "config")}
    options = {}
    for key, value in recipe.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None:
            p.error(f"--config {path}: {key!r} is not an option of this script")
        if action.nargs == 0:  # a flag: true or false
            if not isinstance(value, bool):
                p.error(f"--config {path}: {key} takes true or false, got {value!r}")
            options[action.dest] = value
            continue
        many = action.nargs in ("+", "*")
        if isinstance(value, list) != many:
            p.error(f"--config {path}: {key} takes {'a list' if many else 'one value'}, got {value!r}")
        try:
            values = [action.type(str(v)) if action.type else str(v) for v in (value if many else [value])]
        except (ValueError, argparse.ArgumentTypeError) as e:
            kind = getattr(action.type, '__name__', 'option')
            p.error(f"--config {path}: {key}: invalid {kind} value {value!r} ({e})")
        if action.choices and any(v not in action.choices for v in values):
            p.error(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        options[action.dest] = values if many else values[0]
    return options
