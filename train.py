"""Train a searcher with R1-Searcher's two-stage GRPO.

    cold-start SFT (optional) -> stage 1: reward searching in the right format -> stage 2: reward the right answer

Each GRPO step (minisearcher.grpo.grpo_step): questions -> rollout (G episodes each) -> rewards -> group advantages
-> clipped masked loss -> update. Writes OUT/metrics.jsonl (one line per step), OUT/sft/, OUT/stage1/, OUT/stage2/
(peft adapters) and OUT/checkpoint/ (for --resume).
"""
import argparse
import json
import os
import random
import shutil
import sys
import time

import torch
from tqdm import tqdm

from minisearcher.data import load_corpus, load_questions
from minisearcher.grpo import GRPOConfig, grpo_step
from minisearcher.model import load_policy
from minisearcher.options import add_model_options, add_rollout_options, at_least_0, positive, rollout_config
from minisearcher.prompts import build_prompt, use_chat
from minisearcher.retriever import BM25
from minisearcher.rollout import RolloutConfig
from minisearcher.sft import load_traces, sft_step, trace_episode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--train-data", help="JSON lines with question/answer, or a `datasets` name[:config][@split]")
    p.add_argument("--sft-data", help="JSON lines of cold-start traces: {question, segments: [[text, by_model]...]}")
    p.add_argument("--sft-steps", type=at_least_0(int), default=0)
    p.add_argument("--stage", choices=["1", "2", "both"], default="both")
    p.add_argument("--steps", type=positive(int), default=100, help="GRPO steps per stage")
    p.add_argument("--stage1-steps", type=positive(int), help="GRPO steps of stage 1 (default: --steps)")
    p.add_argument("--questions-per-step", type=positive(int), default=8)
    p.add_argument("--group-size", type=int, default=8, help="episodes per question (G >= 2)")
    p.add_argument("--lr", type=positive(float), default=1e-5)
    p.add_argument("--beta", type=at_least_0(float), default=0.001, help="KL penalty weight")
    p.add_argument("--clip-eps", type=positive(float), default=0.2)
    p.add_argument("--temperature", type=positive(float), default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--dr-grpo", action="store_true", help="centre the advantages without dividing by the std")
    p.add_argument("--updates", type=positive(int), default=1, help="optimizer steps per rollout batch")
    p.add_argument("--micro-batch", type=positive(int), default=4)
    add_rollout_options(p, RolloutConfig())
    p.add_argument("--lora-r", type=positive(int), default=16)
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="NF4 weights through bitsandbytes (default: on with CUDA, off on CPU)")
    p.add_argument("--save-every", type=positive(int), default=10, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/default")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = p.parse_args(argv)
    if args.group_size < 2:
        p.error("--group-size must be at least 2: GRPO compares episodes within a group")
    if args.sft_steps and not args.sft_data:
        p.error("--sft-steps needs --sft-data")
    for name in ("train_data", "corpus"):
        if not getattr(args, name):
            p.error(f"--{name.replace('_', '-')} is required")
    return args


def grpo_config(args) -> GRPOConfig:
    return GRPOConfig(group_size=args.group_size, clip_eps=args.clip_eps, beta=args.beta,
                      scale_by_std=not args.dr_grpo, updates=args.updates, micro_batch=args.micro_batch)


# ---- the run folder: refuse to mix runs, save atomically, resume -------------------------------------------------

def check_out_dir(args):
    """Refuse to mix two runs in one folder, and refuse to resume what is not there, before any work is done."""
    checkpoint = os.path.join(args.out, "checkpoint")
    if args.resume and not os.path.isdir(checkpoint):
        raise ValueError(f"--resume: {checkpoint} does not exist; start without --resume")
    if not args.resume and os.path.exists(os.path.join(args.out, "metrics.jsonl")):
        raise ValueError(f"--out {args.out} already holds a run; pass --resume to continue it or choose another --out")
    os.makedirs(args.out, exist_ok=True)


def save_atomically(write, folder: str):
    """write(tmp) then swap it in: an interrupted save never leaves a half-written folder behind."""
    tmp, old = folder + ".tmp", folder + ".old"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if os.path.exists(folder):
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(args, model, optimizer, phase: str, step: int):
    def write(tmp):
        model.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"phase": phase, "step": step}, f)
    save_atomically(write, os.path.join(args.out, "checkpoint"))


def load_checkpoint(args, model) -> tuple[str, int, dict]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    folder = os.path.join(args.out, "checkpoint")
    set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    return state["phase"], state["step"], torch.load(os.path.join(folder, "optimizer.pt"))


PHASES = ["copy", "read", "sft", "1", "2"]


def keep_metrics_before(path: str, phase: str, step: int):
    """On resume, drop the lines of steps after the checkpoint: they are run again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(path, "w") as f:
        for row in rows:
            if (PHASES.index(str(row["stage"])), row["step"]) < (PHASES.index(phase), step):
                f.write(json.dumps(row) + "\n")


# ---- the phases --------------------------------------------------------------------------------------------------

def sft_phase_step(args, model, tokenizer, traces, optimizer, step: int, chat: bool) -> dict:
    start = time.time()
    batch = random.Random(f"{args.seed}-sft-{step}").sample(traces, min(args.questions_per_step * 2, len(traces)))
    episodes = [trace_episode(tokenizer, build_prompt(tokenizer, t["question"], chat), t["segments"]) for t in batch]
    model.train()
    loss = sft_step(model, optimizer, episodes, tokenizer.pad_token_id, args.micro_batch)
    return {"loss": loss, "tokens": sum(len(e.ids) for e in episodes), "seconds": time.time() - start}


def train(args, model, tokenizer, retriever, questions, traces):
    """Run the phases in order, from a checkpoint if resuming; save each stage's adapter when it ends."""
    chat = use_chat(tokenizer, args.prompt)
    rollout_cfg, cfg = rollout_config(args, args.temperature), grpo_config(args)
    phases = (["sft"] if traces else []) + (["1", "2"] if args.stage == "both" else [args.stage])
    metrics_path = os.path.join(args.out, "metrics.jsonl")
    start_phase, start_step, optimizer_state = phases[0], 0, None
    if args.resume:
        start_phase, start_step, optimizer_state = load_checkpoint(args, model)
        keep_metrics_before(metrics_path, start_phase, start_step)
    for phase in phases[phases.index(start_phase):]:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        first = 0
        if phase == start_phase and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            first = start_step
        n_steps = {"sft": args.sft_steps, "1": args.stage1_steps or args.steps}.get(phase, args.steps)
        bar = tqdm(range(first, n_steps), desc="cold-start SFT" if phase == "sft" else f"stage {phase}",
                   initial=first, total=n_steps)
        for step in bar:
            torch.manual_seed(args.seed * 1_000_003 + PHASES.index(phase) * 100_003 + step)  # resumable
            if phase == "sft":
                row = sft_phase_step(args, model, tokenizer, traces, optimizer, step, chat)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            else:
                batch = random.Random(f"{args.seed}-{phase}-{step}").sample(
                    questions, min(args.questions_per_step, len(questions)))
                row = grpo_step(model, tokenizer, retriever, batch, optimizer, int(phase), rollout_cfg, cfg, chat)
                bar.set_postfix(reward=f"{row['reward_mean']:.2f}", searches=f"{row['searches_mean']:.2f}")
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"stage": phase if phase == "sft" else int(phase), "step": step, **row}) + "\n")
            if (step + 1) % args.save_every == 0 and step + 1 < n_steps:
                save_checkpoint(args, model, optimizer, phase, step + 1)
        name = "sft" if phase == "sft" else f"stage{phase}"
        save_atomically(model.save_pretrained, os.path.join(args.out, name))
        following = phases[phases.index(phase) + 1:]
        if following:
            save_checkpoint(args, model, optimizer, following[0], 0)
    shutil.rmtree(os.path.join(args.out, "checkpoint"), ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    try:  # every input is checked before the model is loaded and any training time is spent
        questions = load_questions(args.train_data)
        traces = load_traces(args.sft_data) if args.sft_data else []
        retriever = BM25(load_corpus(args.corpus))
        check_out_dir(args)
        model, tokenizer = load_policy(args.model, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
                                       lora_r=args.lora_r, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(questions)} questions, {len(retriever.passages)} passages, model {args.model}")
    train(args, model, tokenizer, retriever, questions, traces)
    print(f"done: {args.out}")


if __name__ == "__main__":
    main()
