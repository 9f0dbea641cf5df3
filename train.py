"""Train a searcher with R1-Searcher's two-stage GRPO.

    cold-start SFT (optional) -> stage 1: reward searching in the right format -> stage 2: reward the right answer

Each GRPO step (minisearcher.grpo.grpo_step): questions -> rollout (G episodes each) -> rewards -> group advantages
-> clipped masked loss -> update. Writes OUT/metrics.jsonl (one line per step), OUT/sft/, OUT/stage1/, OUT/stage2/
(peft adapters) and OUT/checkpoint/ (for --resume).
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import set_seed

from minisearcher.data import load_questions
from minisearcher.grpo import GRPOConfig, all_sum, grpo_step
from minisearcher.model import load_policy, load_tokenizer
from minisearcher.options import (add_model_options, add_rollout_options, open_retriever, parse_with_recipe,
                                  positive, rollout_config)
from minisearcher.prompts import build_prompt, use_chat
from minisearcher.rollout import RolloutConfig
from minisearcher.runs import (ADAPTERS, PHASES, adapter_weights, check_out_dir, keep_metrics_before, load_checkpoint,
                               reporter, run_phases, save_atomically, save_checkpoint, start_run, trainable_weights)
from minisearcher.sft import load_traces, sft_step, trace_episode


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--train-data", nargs="+", help="JSON lines with question/answer, or `datasets` "
                   "names[:config][@split]; each may end with a slice of its rows: file.jsonl[100:]")
    p.add_argument("--exclude", nargs="*", default=[],
                   help="question sets never to train on, in --train-data or --sft-data (the evaluation split)")
    p.add_argument("--sft-data", nargs="+", help="JSON lines of cold-start traces: {question, segments: [[text, "
                   "by_model]...]}, or R1-Searcher's trajectories (converted: minisearcher/sft.py)")
    p.add_argument("--sft-steps", type=positive(int, zero_ok=True), default=0)
    p.add_argument("--stage", choices=["1", "2", "both", "none"], default="both",
                   help="the RL stages to run after the cold start (none: the cold start only)")
    p.add_argument("--sft-batch", type=positive(int), default=16, help="traces per cold-start step")
    p.add_argument("--sft-lr", type=positive(float), help="learning rate of the cold start (default: --lr)")
    p.add_argument("--steps", type=positive(int), default=100, help="GRPO steps per stage")
    p.add_argument("--stage1-steps", type=positive(int), help="GRPO steps of stage 1 (default: --steps)")
    p.add_argument("--questions-per-step", type=positive(int), default=8)
    p.add_argument("--group-size", type=int, default=8, help="episodes per question (G >= 2)")
    p.add_argument("--lr", type=positive(float), default=1e-5)
    p.add_argument("--beta", type=positive(float, zero_ok=True), default=0.001, help="KL penalty weight")
    p.add_argument("--clip-eps", type=positive(float), default=0.2)
    p.add_argument("--temperature", type=positive(float), default=1.0, help="sampling temperature of the rollouts")
    p.add_argument("--stage1-temperature", type=positive(float), help="sampling temperature of stage 1 "
                   "(default: --temperature)")
    p.add_argument("--format-penalty", type=positive(float, zero_ok=True), default=2.0,
                   help="stage 2 rewards a broken format with F1 - this (R1-Searcher: 2)")
    p.add_argument("--dr-grpo", action="store_true", help="centre the advantages without dividing by the std")
    p.add_argument("--reference", choices=["base", "start"], default="base",
                   help="pi_ref of the KL term: the base model (the adapter off), or the model each RL stage starts "
                        "from (the cold-start model in stage 1, the stage-1 model in stage 2)")
    p.add_argument("--updates", type=positive(int), default=1, help="optimizer steps per rollout batch")
    p.add_argument("--micro-batch", type=positive(int), default=4)
    add_rollout_options(p, RolloutConfig())
    p.add_argument("--lora-r", type=positive(int), default=16)
    p.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                   help="NF4 weights through bitsandbytes (default: on with CUDA, off on CPU)")
    p.add_argument("--save-every", type=positive(int), default=10, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-to", choices=["tensorboard", "wandb"],
                   help="also send the metrics to TensorBoard or Weights & Biases (pip install -e \".[tensorboard]\")")
    p.add_argument("--out", default="runs/default")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = parse_with_recipe(p, argv)
    if args.group_size < 2:
        p.error("--group-size must be at least 2: GRPO compares episodes within a group")
    if args.sft_steps and not args.sft_data:
        p.error("--sft-steps needs --sft-data")
    if not run_phases(args):
        p.error("nothing to run: --stage none and no --sft-steps")
    if not args.train_data:
        p.error("--train-data is required")
    return args


# ---- the phases --------------------------------------------------------------------------------------------------

def sft_phase_step(args, model, tokenizer, traces, optimizer, step: int, chat: bool) -> dict:
    start = time.time()
    n, positions = len(traces), range(step * args.sft_batch, (step + 1) * args.sft_batch)
    orders = {epoch: random.Random(f"{args.seed}-sft-{epoch}").sample(traces, n)
              for epoch in {i // n for i in positions}}
    batch = [orders[i // n][i % n] for i in positions]  # the traces epoch after epoch, each in a new order
    episodes = [trace_episode(tokenizer, build_prompt(tokenizer, t["question"], chat), t["segments"])
                for t in share(batch)]
    model.train()
    loss = sft_step(model, optimizer, episodes, tokenizer.pad_token_id, args.micro_batch)
    [tokens] = all_sum([sum(len(e.ids) for e in episodes)])
    return {"loss": loss, "skipped": int(math.isnan(loss)), "tokens": int(tokens), "seconds": time.time() - start}


def share(items: list) -> list:
    """This process's part of a step's questions or traces in a data-parallel run (torchrun); all of them in one."""
    return items[dist.get_rank()::dist.get_world_size()] if dist.is_initialized() else items


def train(args, model, tokenizer, retriever, questions, traces):
    """Run the phases in order, from the checkpoint if resuming; save each phase's adapter when it ends. In a
    data-parallel run every process runs this, and the first alone writes files."""
    lead = not dist.is_initialized() or dist.get_rank() == 0
    report = reporter(args) if lead else None
    chat = use_chat(tokenizer, args.prompt)
    cfg = GRPOConfig(group_size=args.group_size, clip_eps=args.clip_eps, beta=args.beta,
                     scale_by_std=not args.dr_grpo, updates=args.updates, micro_batch=args.micro_batch,
                     format_penalty=args.format_penalty)
    phases = run_phases(args)
    metrics_path, checkpoint = os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "checkpoint")
    start_phase, start_step, optimizer_state = phases[0], 0, None
    if args.resume and os.path.isdir(checkpoint):  # else it was interrupted before its first checkpoint
        start_phase, start_step, optimizer_state = load_checkpoint(args, model)
    if args.resume and lead:
        keep_metrics_before(metrics_path, start_phase, start_step)
    reference = None  # pi_ref: None is the adapter disabled; with --reference start, the weights the stage began with
    if args.reference == "start" and start_phase in ("1", "2") and start_step > 0:
        before = phases[phases.index(start_phase) - 1] if start_phase != phases[0] else None
        began = os.path.join(args.out, ADAPTERS[before]) if before else args.adapter  # None: a zero adapter, the base
        reference = adapter_weights(model, began) if began else None
    for phase in phases[phases.index(start_phase):]:
        lr = (args.sft_lr or args.lr) if phase == "sft" else args.lr
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        first = start_step if phase == start_phase else 0
        if first and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        if args.reference == "start" and phase != "sft" and first == 0:
            reference = trainable_weights(model)
        n_steps = {"sft": args.sft_steps, "1": args.stage1_steps or args.steps}.get(phase, args.steps)
        rollout_cfg = rollout_config(args, (args.stage1_temperature or args.temperature) if phase == "1"
                                     else args.temperature)
        bar = tqdm(range(first, n_steps), desc="cold-start SFT" if phase == "sft" else f"stage {phase}",
                   initial=first, total=n_steps, disable=not lead)
        failed = 0  # steps in a row skipped for a non-finite loss or gradient
        for step in bar:
            torch.manual_seed(args.seed * 1_000_003 + PHASES.index(phase) * 100_003 + step)  # resumable
            if phase == "sft":
                row = sft_phase_step(args, model, tokenizer, traces, optimizer, step, chat)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            else:
                batch = random.Random(f"{args.seed}-{phase}-{step}").sample(
                    questions, min(args.questions_per_step, len(questions)))
                seeds = torch.randint(2**62, (len(batch), cfg.group_size)).tolist()  # one per episode, in any process
                row = grpo_step(model, tokenizer, retriever, share(batch), optimizer, int(phase), rollout_cfg, cfg,
                                chat, reference, [seed for group in share(seeds) for seed in group])
                bar.set_postfix(reward=f"{row['reward_mean']:.2f}", searches=f"{row['searches_mean']:.2f}")
            row = {"stage": phase if phase == "sft" else int(phase), "step": step, **row}
            if lead:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if report:
                report(row)
            failed = failed + 1 if row["skipped"] else 0
            if failed == 3:
                kept = f"the last good checkpoint is {checkpoint}" if os.path.isdir(checkpoint) else "no checkpoint"
                raise RuntimeError(f"{bar.desc} steps {step - 2}-{step}: the loss or the gradient was not finite 3 "
                                   f"steps in a row (each update was skipped); {kept}")
            if lead and (step + 1) % args.save_every == 0 and step + 1 < n_steps:
                save_checkpoint(args, model, optimizer, phase, step + 1)
        following = phases[phases.index(phase) + 1:]
        if lead:
            save_atomically(model.save_pretrained, os.path.join(args.out, ADAPTERS[phase]))
            if following:
                save_checkpoint(args, model, optimizer, following[0], 0)
    if lead:
        shutil.rmtree(checkpoint, ignore_errors=True)


def init_distributed():
    """Under torchrun (WORLD_SIZE > 1), join the process group: each process rolls out its share of every step's
    questions and the gradients are summed (grpo.optimizer_step), so N processes make one process's update."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def main(argv=None):
    args = parse_args(argv)
    init_distributed()
    try:  # every input is checked before the model is loaded and any training time is spent
        exclude = {q["question"] for source in args.exclude for q in load_questions(source)}
        questions = [q for source in args.train_data for q in load_questions(source) if q["question"] not in exclude]
        retriever = open_retriever(args)
        traces, skipped = [], Counter()
        if args.sft_steps:
            tokenizer, cfg = load_tokenizer(args.model), rollout_config(args, args.temperature)
            for path in args.sft_data:
                kept, left_out = load_traces(path, tokenizer, retriever, cfg, exclude)
                traces, skipped = traces + kept, skipped + left_out
            print(f"{len(traces)} cold-start traces; left out: " +
                  (", ".join(f"{n} {reason}" for reason, n in skipped.most_common()) or "none"))
            if not traces:
                raise ValueError(f"--sft-data {' '.join(args.sft_data)}: no trace to learn from")
        if dist.is_initialized() and min(args.questions_per_step, args.sft_batch) < dist.get_world_size():
            raise ValueError(f"--questions-per-step and --sft-batch must be at least the {dist.get_world_size()} "
                             "processes: each process takes its share")
        check_out_dir(args, run_phases(args))
        if dist.is_initialized():
            dist.barrier()  # every process has checked the folder before the first one starts the run in it
        if not args.resume and (not dist.is_initialized() or dist.get_rank() == 0):
            start_run(args)
        set_seed(args.seed)  # LoRA's initial weights are drawn from it
        model, tokenizer = load_policy(args.model, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
                                       lora_r=args.lora_r, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(questions)} questions ({len(exclude)} excluded), {retriever}, model {args.model}")
    train(args, model, tokenizer, retriever, questions, traces)
    print(f"done: {args.out}")


if __name__ == "__main__":
    main()
