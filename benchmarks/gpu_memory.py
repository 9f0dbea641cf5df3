"""Peak memory and seconds of a GRPO step for the Qwen2.5 shapes, loaded the way train.py loads them.

    python benchmarks/gpu_memory.py --sizes 0.5B 1.5B 3B 7B      # on a CUDA GPU: NF4 4-bit + LoRA, bf16
    python benchmarks/gpu_memory.py --sizes 7B --micro-batch 2    # the update's micro-batch (train.py --micro-batch)
    python benchmarks/gpu_memory.py --sizes 7B --card-gib 15      # does it run within 15 GiB, as on a 16 GB card?
    python benchmarks/gpu_memory.py --estimate                    # no GPU: what reading the code predicts
    python benchmarks/gpu_memory.py --sizes 0.5B --questions 1 --against 085be9a   # a CPU, before and after
    python benchmarks/gpu_memory.py --tiny                        # CPU check of the harness: tiny model

Each model has the exact Qwen2.5 shape but random weights (no download): it is built, saved with save_pretrained
into a temporary folder and loaded back through minisearcher.model.load_policy, so it goes through the same path as
a real checkpoint (on a GPU: NF4 4-bit with double quantisation, bf16 compute, gradient checkpointing, LoRA r=16 on
every linear layer; on a CPU: --dtype, and gradient checkpointing as on a GPU unless --no-checkpointing).
`--against REV` measures minisearcher/model.py and grpo.py as they were at commit REV too.

The update runs on synthetic episodes: Q questions x G episodes, each a prompt of --prompt-tokens random ids and a
response of --response-tokens ids shaped like a two-search episode (sampled / documents / sampled / documents /
sampled, loss_mask 0 on the documents), old log-probs of a random model (-ln V) and random rewards. Token values do
not change memory or time; sequence lengths and the mask do. The rollout is timed on the same number of episodes:
a random model never pauses, so this is plain generation through the rollout loop up to the full episode budget,
the KV cache of episodes without searches (searches add padding holes to it).

Every measurement (one size, one version of the code, the rollout or the update) runs in a fresh process that loads
the saved model: memory a process has freed may stay resident, and so count in a later peak. "above weights" is
the peak minus what was in use once the model was loaded: on a GPU the allocator's, on a CPU the resident set
(VmRSS; the peak VmHWM is reset before the measured part through /proc/self/clear_refs) once every weight has been
read: a CPU model's weights map the safetensors file, and a page of it is resident only from its first read (the
0.5B shape in bf16: 0.59 GiB resident once loaded, 1.50 once read), which the first forward would otherwise count.
The measured part comes after a warm-up (a first update, a short rollout), so the process's one-time costs are not
in it. On a CPU the resident set also holds what malloc keeps of freed memory: glibc serves blocks of up to 32 MiB
from its heap once a block that size has been freed, and keeps them. The measuring process therefore runs with
MALLOC_MMAP_THRESHOLD_ fixed at 64 KiB, so that freed tensors go back to the OS, and it also reports the peak of the
bytes held by tensors (TensorPeak), which is what a GPU's allocator counts and what --estimate predicts.
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
from common import module_from_git, qwen_tokenizer_dir  # noqa: E402
from minisearcher import grpo, model as model_py  # noqa: E402
from minisearcher.episode import Episode  # noqa: E402
from minisearcher.retriever import BM25  # noqa: E402
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
TARGET_GIB = {"0.5B": 4, "3B": 10, "7B": 16}  # a whole GRPO step, rollout included, 8 x 8 episodes
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
    if device == "cuda":
        torch.cuda.empty_cache()  # the measurements run in other processes, which need that memory
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


# Bytes per token, per unit of (hidden, MLP, key/value width), that one decoder layer with LoRA r=16 holds at the
# peak of its recomputed backward, by compute dtype. The hidden and key/value terms are the tensors it keeps for the
# backward (counted with torch.autograd.graph.saved_tensors_hooks on one Qwen2 layer); the MLP term adds the
# gradients in flight, fitted to TensorPeak's peak on the 0.5B shape cut to two layers (4 x 1,280 tokens: within 2%).
# In bf16 the norms work on float32 copies and peft casts each LoRA layer's input to float32: more hidden-wide bytes.
SAVED = {4: (20, 24, 16), 2: (36, 16, 10)}


def estimate_gib(size: str, args) -> dict:
    """What reading the code predicts, in GiB (docs/PERFORMANCE.md, section 4, explains each term): the weights,
    what the update adds to them, and what the rollout adds. The frozen weights, activations and KV cache are in the
    compute dtype (b bytes a value); LoRA weights, their gradients and AdamW's moments in float32."""
    c = SHAPES[size]
    H, I, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], VOCAB
    kv = H // c["num_attention_heads"] * c["num_key_value_heads"]  # width of k_proj and v_proj
    b = BYTES[args.dtype]
    linear = L * (2 * H * H + 2 * H * kv + 3 * H * I)  # q, o; k, v; gate, up, down
    lora = 16 * L * (2 * (H + H) + 2 * (H + kv) + 3 * (H + I))  # r=16 on each of them
    tokens = args.micro_batch * (args.prompt_tokens + args.response_tokens)  # in one forward of the update
    rows = args.questions * args.group
    per_layer = tokens * (SAVED[b][0] * H + SAVED[b][1] * I + SAVED[b][2] * kv)
    weights = {"linear weights": linear * (4.127 / 8 if args.load_in_4bit else b),  # NF4 + double-quantised scales
               "embeddings (+ lm_head)": V * H * (1 if c["tie_word_embeddings"] else 2) * b,
               "LoRA weights": lora * 4}
    update = {"LoRA grads + AdamW": lora * 12,
              # with gradient checkpointing each layer keeps only its input, and one layer at a time is recomputed
              "kept layer inputs": tokens * H * b * L if args.checkpointing else 0,
              "layers' activations": per_layer * (1 if args.checkpointing else L),
              # then, one after the other, each chunk of the vocabulary head: its float32 logits, recomputed
              "logits (one chunk)": 5 * grpo.CHUNK * V * 4}
    rollout = {"KV cache": rows * (args.prompt_tokens + args.response_tokens) * L * 2 * kv * b,  # no padding holes
               "sampling logits": 4 * rows * V * 4}
    gib = lambda terms: {k: v / 2**30 for k, v in terms.items()}
    return {"weights": gib(weights), "update": gib(update), "rollout": gib(rollout)}


def above_weights(estimate: dict) -> tuple[float, float]:
    """(update, rollout): the peaks above the weights. A layer's backward and a chunk's come one after the other."""
    u = estimate["update"]
    return (u["LoRA grads + AdamW"] + u["kept layer inputs"] + max(u["layers' activations"], u["logits (one chunk)"]),
            sum(estimate["rollout"].values()))


class Memory:
    """Memory in use and its peak since reset(): the CUDA allocator's on a GPU, the resident set on a CPU, and there
    also the tensors' (`with memory.tensors:` counts them; on a GPU the allocator counts tensors already)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.tensors = contextlib.nullcontext() if cuda else TensorPeak()

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set (Linux)
            self.tensors.peak = self.tensors.live

    def now_gib(self) -> float:
        return torch.cuda.memory_allocated() / 2**30 if self.cuda else self.status("VmRSS")

    def peak_gib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30
        return self.status("VmHWM")

    @staticmethod
    def status(field: str) -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 2**20  # kB


class TensorPeak(TorchDispatchMode):
    """While active, the bytes held by the tensors that operators create, and their peak: what a GPU's allocator
    counts, without what a CPU's malloc keeps of freed memory. A view or an in-place result shares an input's storage
    and adds nothing; tensors made before (the weights) are not counted, nor what a kernel allocates inside itself."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.storages = 0, 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if torch.is_tensor(t)}
        for t in tree_flatten(out)[0]:
            storage = t.untyped_storage() if torch.is_tensor(t) else None
            if storage is None or not storage.nbytes() or storage.data_ptr() in inputs or \
                    storage.data_ptr() in self.storages:
                continue
            self.storages.add(storage.data_ptr())
            self.live += storage.nbytes()
            weakref.finalize(storage, self.free, storage.data_ptr(), storage.nbytes())
        self.peak = max(self.peak, self.live)
        return out

    def free(self, ptr: int, nbytes: int):
        self.storages.discard(ptr)
        self.live -= nbytes


def measure(args) -> dict:
    """One measurement, in this process: --phase (rollout or update) of the code at --rev on the model in --folder."""
    cuda = torch.cuda.is_available()
    code_model, code_grpo = (model_py, grpo) if args.rev == "now" else \
        (module_from_git(args.rev, "model"), module_from_git(args.rev, "grpo"))
    memory = Memory(cuda)
    if args.card_gib:  # the allocator frees its cache and retries before it fails, as on a card of that size
        torch.cuda.set_per_process_memory_fraction(args.card_gib * 2**30 / torch.cuda.mem_get_info()[1])
    model, tok = code_model.load_policy(args.folder, load_in_4bit=args.load_in_4bit, dtype=args.dtype)
    base = model.get_base_model()
    if args.checkpointing and not base.is_activation_checkpointing:
        base.activation_checkpointing_enable()
    for p in model.parameters():  # on a CPU the weights map the safetensors file: resident only once read
        p.detach().sum()
    fp32 = sum(p.numel() * 4 for p in model.parameters() if p.dtype == torch.float32 and not p.requires_grad)
    row = {"weights_gib": memory.now_gib(), "fp32_gib": fp32 / 2**30}
    n = args.questions * args.group
    with memory.tensors:
        if args.phase == "rollout":  # weights + the KV cache of n episodes at the full episode budget
            model.eval()
            prompt = tok.decode(synthetic_episodes(1, args.prompt_tokens, 0)[0].prompt_ids)
            for tokens in (4, args.response_tokens):  # a warm-up, then the measured rollout
                memory.reset()
                start = time.perf_counter()
                rollout(model, tok, BM25([{"title": "", "text": "unused"}]), [prompt] * n,
                        RolloutConfig(max_turn_tokens=tokens, max_episode_tokens=tokens))
        else:
            episodes = synthetic_episodes(n, args.prompt_tokens, args.response_tokens)
            rewards = torch.rand(args.questions, args.group, generator=torch.Generator().manual_seed(0))
            advantages = grpo.group_advantages(rewards).flatten()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
            model.train()
            for _ in range(args.steps):  # the last step is measured; AdamW's moments, made by the first, stay counted
                memory.reset()
                start = time.perf_counter()
                code_grpo.grpo_update(model, optimizer, episodes, advantages, tok.pad_token_id,
                                      grpo.GRPOConfig(micro_batch=args.micro_batch))
    peak = memory.peak_gib()  # synchronises the GPU before the clock stops
    above = peak - row["weights_gib"]
    return {**row, "seconds": time.perf_counter() - start, "peak_gib": peak, "above_gib": above,
            "tensors_gib": above if cuda else memory.tensors.peak / 2**30,
            # what the card must have free: the allocator's reserved blocks (the CUDA context comes on top)
            "reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}


def run_fresh(args, folder: str, rev: str, phase: str) -> dict:
    """measure() in a fresh Python process, with this run's settings."""
    command = [sys.executable, os.path.abspath(__file__), "--folder", folder, "--rev", rev, "--phase", phase,
               "--questions", str(args.questions), "--group", str(args.group), "--steps", str(args.steps),
               "--prompt-tokens", str(args.prompt_tokens), "--response-tokens", str(args.response_tokens),
               "--micro-batch", str(args.micro_batch), "--dtype", args.dtype, "--card-gib", str(args.card_gib),
               "--load-in-4bit" if args.load_in_4bit else "--no-load-in-4bit",
               "--checkpointing" if args.checkpointing else "--no-checkpointing"]
    env = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), **os.environ}  # glibc: freed tensors go back to the OS
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", default=["0.5B", "1.5B", "3B", "7B"], choices=list(SHAPES))
    p.add_argument("--tiny", action="store_true",
                   help="check the harness on a CPU: the tiny shape, a small batch")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--response-tokens", type=int, default=1024, help="as RolloutConfig.max_episode_tokens")
    p.add_argument("--micro-batch", type=int, default=4, help="GRPOConfig.micro_batch (train.py --micro-batch)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtype", choices=list(BYTES), default=None,
                   help="the compute dtype; default: bfloat16 on a GPU, float32 on a CPU (load_policy's auto)")
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on with CUDA, off on a CPU (as train.py)")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="gradient checkpointing, on by default on a CPU too, as train.py has it on a GPU")
    p.add_argument("--card-gib", type=float, default=0,
                   help="on a GPU: let each measurement use at most this much, as a smaller card would (0: all)")
    p.add_argument("--phases", nargs="+", choices=["rollout", "update"], default=["rollout", "update"])
    p.add_argument("--against", nargs="*", default=[], help="also measure model.py and grpo.py at these commits")
    p.add_argument("--estimate", action="store_true", help="only print what reading the code predicts")
    p.add_argument("--folder", help=argparse.SUPPRESS)  # set for measure(), in a fresh process
    p.add_argument("--rev", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    if args.load_in_4bit is None:
        args.load_in_4bit = (cuda or args.estimate) and not args.tiny
    if args.dtype is None:
        args.dtype = "bfloat16" if cuda or args.estimate else "float32"
    if args.folder:
        print(json.dumps(measure(args)))
        return
    if args.tiny:
        args.sizes, args.questions, args.group, args.prompt_tokens, args.response_tokens, args.micro_batch = \
            ["tiny"], 2, 2, 32, 64, 2
    if args.estimate:
        print_estimates(args, [s for s in args.sizes if s != "tiny"])
        return

    tokenizer = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{device}; {args.questions} questions x {args.group} episodes, {args.prompt_tokens} prompt + "
          f"{args.response_tokens} response tokens each; micro-batch {args.micro_batch}; "
          f"{'NF4 4-bit + ' if args.load_in_4bit else ''}{args.dtype} + LoRA r=16; gradient checkpointing "
          f"{'on' if args.checkpointing else 'off'}", flush=True)
    unit = "GiB" if cuda else "GiB of resident set; tensors: GiB held by tensors (TensorPeak)"
    print(f"\n{'size':>5s} {'code':>8s} {'weights':>8s} {'fp32 frozen':>11s} {'rollout s':>9s} {'rollout +':>9s} "
          f"{'tensors':>7s} {'update s':>8s} {'update +':>8s} {'tensors':>7s} {'estimated +: rollout':>20s} "
          f"{'update':>6s}", flush=True)
    for size in args.sizes:
        folder = tempfile.mkdtemp(prefix=f"qwen-{size}-")
        try:
            save_random_model(size, folder, tokenizer, "cuda" if cuda else "cpu")
            for rev in ["now", *args.against]:
                r = {phase: run_fresh(args, folder, rev, phase) for phase in args.phases}
                first = next(iter(r.values()))
                cells = [f"{r[ph]['seconds']:{w}.1f} {r[ph]['above_gib']:{w}.2f} {r[ph]['tensors_gib']:7.2f}" if ph in r
                         else f"{'-':>{w}s} {'-':>{w}s} {'-':>7s}" for ph, w in (("rollout", 9), ("update", 8))]
                estimate = ""
                if rev == "now" and size != "tiny":
                    update, rollout_above = above_weights(estimate_gib(size, args))
                    estimate = f"{rollout_above:20.2f} {update:6.2f}"
                print(f"{size:>5s} {rev:>8s} {first['weights_gib']:7.2f}G {first['fp32_gib']:10.2f}G "
                      f"{cells[0]} {cells[1]} {estimate}", flush=True)
                if cuda:
                    print(f"{'':>14s} peak reserved by the allocator: " +
                          ", ".join(f"{ph} {r[ph]['reserved_gib']:.2f} GiB" for ph in r), flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nmemory in {unit}. weights: in use once the model was loaded and read; +: the peak above it. fp32 "
          "frozen: frozen parameters held in float32. code: now, or model.py and grpo.py at that commit.")


def print_estimates(args, sizes: list[str]):
    table = {size: estimate_gib(size, args) for size in sizes}
    quant = "NF4 4-bit + " if args.load_in_4bit else ""
    print(f"estimated from the code, GiB: {args.questions} x {args.group} episodes of {args.prompt_tokens} + "
          f"{args.response_tokens} tokens, micro-batch {args.micro_batch}, {quant}{args.dtype}\n{'':26s}" +
          "".join(f"{s:>8s}" for s in sizes))
    for part in ("weights", "update", "rollout"):
        for term in table[sizes[0]][part]:
            print(f"{part[0]} {term:24s}" + "".join(f"{table[s][part][term]:8.2f}" for s in sizes))
    weights = {s: sum(table[s]["weights"].values()) for s in sizes}
    above = {s: above_weights(table[s]) for s in sizes}
    print(f"{'update peak':26s}" + "".join(f"{weights[s] + above[s][0]:8.2f}" for s in sizes))
    print(f"{'rollout peak':26s}" + "".join(f"{weights[s] + above[s][1]:8.2f}" for s in sizes))
    # from the second step on, AdamW's moments (2/3 of that term) are still there during the rollout
    step = {s: weights[s] + max(above[s][0], above[s][1] + table[s]["update"]["LoRA grads + AdamW"] * 2 / 3)
            for s in sizes}
    print(f"{'GRPO step peak (target)':26s}" + "".join(
        f"{step[s]:5.1f}" + (f"<{TARGET_GIB[s]:<2d}" if s in TARGET_GIB else "   ") for s in sizes))


if __name__ == "__main__":
    main()
