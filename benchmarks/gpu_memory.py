"""Peak memory and seconds per GRPO step for the Qwen2.5 shapes, loaded the way train.py loads them (4-bit + LoRA).

    python benchmarks/gpu_memory.py --sizes 0.5B 1.5B 3B 7B      # on a CUDA GPU
    python benchmarks/gpu_memory.py --sizes 7B --micro-batch 2    # the update's micro-batch (train.py --micro-batch)
    python benchmarks/gpu_memory.py --tiny                        # CPU check of the harness: tiny model, bf16
    python benchmarks/gpu_memory.py --estimate                    # no GPU: what reading the code predicts

Each model has the exact Qwen2.5 shape but random weights (no download): it is built, saved with save_pretrained
into a temporary folder and loaded back through minisearcher.model.load_policy, so it goes through the same path as
a real checkpoint: NF4 4-bit with double quantisation and bf16 compute, peft's prepare_model_for_kbit_training
(gradient checkpointing), LoRA r=16 on every linear layer.

The update runs on synthetic episodes: Q questions x G episodes, each a prompt of --prompt-tokens random ids and a
response of --response-tokens ids shaped like a two-search episode (sampled / documents / sampled / documents /
sampled, loss_mask 0 on the documents), old log-probs of a random model (-ln V) and random rewards. Token values do
not change memory or time; sequence lengths and the mask do. Before the update it also times one rollout of the
same batch (--no-rollout skips it): a random model never pauses, so this is plain generation through the rollout loop
up to the full episode budget, the KV cache of episodes without searches (searches add padding holes to it).
"""
import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from common import qwen_tokenizer_dir  # noqa: E402
from minisearcher.grpo import GRPOConfig, group_advantages, grpo_update  # noqa: E402
from minisearcher.model import load_policy  # noqa: E402
from minisearcher.retriever import BM25  # noqa: E402
from minisearcher.episode import Episode  # noqa: E402
from minisearcher.rollout import RolloutConfig, rollout  # noqa: E402

VOCAB = 151936
# Qwen2.5's published configs: hidden, intermediate (MLP), layers, attention heads, key/value heads, tied embeddings
SHAPES = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "3B": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, tie_word_embeddings=True),
    "7B": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
TARGET_GIB = {"3B": 16, "7B": 24}


def save_random_model(size: str, folder: str, tokenizer, device: str):
    """A Qwen2 of that shape with random weights, saved like a hub checkpoint (bf16, as Qwen2.5 is published)."""
    config = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         eos_token_id=tokenizer.eos_token_id, **SHAPES[size])
    torch.manual_seed(0)
    with torch.device(device):  # initialising 7B parameters is much faster on the GPU
        model = Qwen2ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def synthetic_episodes(n: int, prompt_tokens: int, response_tokens: int) -> list[Episode]:
    """Two-search episodes: sampled 10%, documents 30%, sampled 10%, documents 30%, sampled 20% of the response."""
    g = torch.Generator().manual_seed(0)
    parts = [(0.1, True), (0.3, False), (0.1, True), (0.3, False), (0.2, True)]
    episodes = []
    for _ in range(n):
        e = Episode(torch.randint(0, 150_000, (prompt_tokens,), generator=g).tolist())
        left = response_tokens
        for i, (share, by_model) in enumerate(parts):
            length = left if i == len(parts) - 1 else int(share * response_tokens)
            left -= length
            e.extend(torch.randint(0, 150_000, (length,), generator=g).tolist(), "", by_model,
                     [-math.log(VOCAB)] * length)
        episodes.append(e)
    return episodes


def estimate_gib(size: str, args) -> dict:
    """What reading the code predicts on the 4-bit path (docs/PERFORMANCE.md explains each term). peft's
    prepare_model_for_kbit_training upcasts every frozen non-4-bit weight (embeddings, lm_head, norms) to float32,
    so the residual stream, the KV cache and the logits are float32 too."""
    c = SHAPES[size]
    H, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], VOCAB
    kv = H // c["num_attention_heads"] * c["num_key_value_heads"]  # width of k_proj and v_proj
    linear = L * (2 * H * H + 2 * H * kv + 3 * H * I)  # q, o; k, v; gate, up, down: the 4-bit weights
    lora = 16 * L * (2 * (H + H) + 2 * (H + kv) + 3 * (H + I))  # r=16 on each of them
    embed = V * H * (1 if c["tie_word_embeddings"] else 2)
    mb, T, K = args.micro_batch, args.prompt_tokens + args.response_tokens, args.response_tokens
    terms = {"4-bit linears": linear * 4.127 / 8,  # NF4 plus double-quantised block scales
             "fp32 embed/head": embed * 4,
             "LoRA+grad+Adam": lora * 16,
             "checkpoints": mb * T * H * 4 * L,  # each layer's float32 input, kept for the backward
             "1 layer recomputed": mb * T * (3 * I + 8 * H) * 4,
             # the policy pass keeps its (mb, K+1, V) float32 logits for backward while the reference pass makes
             # its own logits and a logsumexp temporary of the same size
             "logits": 3 * mb * (K + 1) * V * 4}
    terms = {k: v / 2**30 for k, v in terms.items()}
    rows = args.questions * args.group
    terms["rollout KV cache"] = rows * T * L * 2 * kv * 4 / 2**30  # float32; a lower bound (no padding holes)
    return terms


class Memory:
    """Peak memory: the CUDA allocator's peak on a GPU, the process's peak resident set on a CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def now_gib(self) -> float:
        if self.cuda:
            return torch.cuda.memory_allocated() / 2**30
        return float("nan")  # a process's resident set cannot be split into weights and the rest

    def peak_gib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run(size: str, args, tokenizer, memory: Memory) -> dict:
    device = "cuda" if memory.cuda else "cpu"
    folder = tempfile.mkdtemp(prefix=f"qwen-{size}-")
    try:
        n_params = save_random_model(size, folder, tokenizer, device)
        memory.reset()
        model, tok = load_policy(folder, load_in_4bit=args.load_in_4bit, dtype="bfloat16")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    weights = memory.now_gib()
    fp32 = sum(p.numel() * 4 for p in model.parameters() if p.dtype == torch.float32 and not p.requires_grad)
    row = {"size": size, "params": n_params, "weights_gib": weights, "fp32_gib": fp32 / 2**30}

    n = args.questions * args.group
    if args.rollout:  # the rollout's peak: weights + the KV cache of n episodes at the full episode budget
        memory.reset()
        model.eval()
        cfg = RolloutConfig(max_turn_tokens=args.response_tokens, max_episode_tokens=args.response_tokens)
        prompt = tok.decode(synthetic_episodes(1, args.prompt_tokens, 0)[0].prompt_ids)
        start = time.perf_counter()
        rollout(model, tok, BM25([{"title": "", "text": "unused"}]), [prompt] * n, cfg)
        memory.peak_gib()  # synchronises the GPU before the clock stops
        row["rollout_s"] = time.perf_counter() - start
        row["rollout_peak_gib"] = memory.peak_gib()

    episodes = synthetic_episodes(n, args.prompt_tokens, args.response_tokens)
    rewards = torch.rand(args.questions, args.group, generator=torch.Generator().manual_seed(0))
    advantages = group_advantages(rewards).flatten()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    config = GRPOConfig(micro_batch=args.micro_batch)
    memory.reset()
    model.train()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        grpo_update(model, optimizer, episodes, advantages, tok.pad_token_id, config)
        memory.peak_gib()  # synchronises the GPU before the clock stops
        times.append(time.perf_counter() - start)
    row["step_s"] = times[-1]  # the first step also pays for allocator warm-up and kernel selection
    row["update_peak_gib"] = memory.peak_gib()
    del model, optimizer
    return row


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", default=["0.5B", "1.5B", "3B", "7B"], choices=list(SHAPES))
    p.add_argument("--tiny", action="store_true",
                   help="check the harness on a CPU: the tiny shape, bf16 without 4-bit, a small batch")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--response-tokens", type=int, default=1024, help="as RolloutConfig.max_episode_tokens")
    p.add_argument("--micro-batch", type=int, default=4, help="GRPOConfig.micro_batch (train.py --micro-batch)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on with CUDA, off on a CPU (as train.py)")
    p.add_argument("--rollout", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--estimate", action="store_true", help="only print what reading the code predicts (no GPU)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if args.tiny:
        args.sizes, args.questions, args.group, args.prompt_tokens, args.response_tokens, args.micro_batch = \
            ["tiny"], 2, 2, 32, 64, 2
    elif args.estimate:
        args.load_in_4bit = True
        print_estimates(args)
        return
    elif not cuda:
        sys.exit("no CUDA GPU: the full sizes need one (--tiny checks the harness on a CPU, --estimate prints what "
                 "the code predicts)")
    if args.load_in_4bit is None:
        args.load_in_4bit = cuda

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; {args.questions} questions x {args.group} episodes, {args.prompt_tokens} prompt + "
          f"{args.response_tokens} response tokens each; micro-batch {args.micro_batch}; "
          f"{'NF4 4-bit' if args.load_in_4bit else 'bf16'} + LoRA r=16")
    memory = Memory(cuda)
    unit = "GiB" if cuda else "GiB RSS"
    print(f"\n{'size':>5s} {'params':>7s} {'weights':>8s} {'fp32 frozen':>11s} {'rollout s':>9s} "
          f"{'rollout peak':>12s} {'step s':>7s} {'update peak':>11s} {'target':>7s}")
    for size in args.sizes:
        r = run(size, args, tokenizer, memory)
        target = TARGET_GIB.get(size)
        peak = max(r["update_peak_gib"], r.get("rollout_peak_gib", 0.0))
        verdict = "" if target is None else f"<{target} " + ("ok" if peak < target else "NO")
        weights = f"{r['weights_gib']:7.2f}G" if cuda else f"{'-':>8s}"
        rollout_cells = (f"{r['rollout_s']:9.1f} {r['rollout_peak_gib']:11.2f}G" if args.rollout
                         else f"{'-':>9s} {'-':>12s}")
        print(f"{size:>5s} {r['params'] / 1e9:6.3f}B {weights} {r['fp32_gib']:10.2f}G {rollout_cells} "
              f"{r['step_s']:7.1f} {r['update_peak_gib']:10.2f}G {verdict:>7s}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    print(f"\nmemory in {unit}. weights: allocated after loading. fp32 frozen: frozen parameters held in "
          "float32 (with 4-bit: what prepare_model_for_kbit_training upcast: embeddings, lm_head, norms).")
    if args.load_in_4bit:
        print_estimates(args)


def print_estimates(args):
    sizes = [s for s in args.sizes if s != "tiny"]
    if not sizes:
        return
    table = {size: estimate_gib(size, args) for size in sizes}
    print(f"\nestimated from the code, GiB (micro-batch {args.micro_batch}):\n{'':20s}" +
          "".join(f"{s:>8s}" for s in sizes))
    for term in table[sizes[0]]:
        print(f"{term:20s}" + "".join(f"{table[s][term]:8.2f}" for s in sizes))
    update = {s: sum(v for k, v in table[s].items() if k != "rollout KV cache") for s in sizes}
    print(f"{'update peak':20s}" + "".join(f"{update[s]:8.2f}" for s in sizes))
    rollout = {s: sum(table[s][k] for k in ("4-bit linears", "fp32 embed/head", "rollout KV cache")) for s in sizes}
    print(f"{'rollout peak':20s}" + "".join(f"{rollout[s]:8.2f}" for s in sizes))


if __name__ == "__main__":
    main()
