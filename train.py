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

import torch
from tqdm import tqdm
from transformers import set_seed

from minisearcher.data import load_questions
from minisearcher.grpo import GRPOConfig, grpo_step
from minisearcher.model import load_policy
from minisearcher.options import (add_model_options, add_rollout_options, at_least_0, open_retriever, positive,
                                  rollout_config)
from minisearcher.prompts import build_prompt, use_chat
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
    p.add_argument("--stage2-reference", choices=["base", "stage1"], default="base",
                   help="pi_ref of stage 2's KL: the base model (adapter off), or the model stage 2 starts from")
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
    if not args.train_data:
        p.error("--train-data is required")
    return args


def grpo_config(args) -> GRPOConfig:
    return GRPOConfig(group_size=args.group_size, clip_eps=args.clip_eps, beta=args.beta,
                      scale_by_std=not args.dr_grpo, updates=args.updates, micro_batch=args.micro_batch)


# ---- the run folder: refuse to mix runs, save atomically, resume -------------------------------------------------

PHASES = ["sft", "1", "2"]
ADAPTERS = {"sft": "sft", "1": "stage1", "2": "stage2"}  # the folder each phase's adapter is saved in
HARMLESS = {"resume", "save_every"}  # options that may change on --resume: they do not change what is trained


def check_out_dir(args, phases: list[str]):
    """Before any work: a new run needs a folder without a run; --resume needs an unfinished run there whose options
    (OUT/config.json) are this command's, but for HARMLESS ones."""
    saved_path = os.path.join(args.out, "config.json")
    options = {key: value for key, value in vars(args).items() if key not in HARMLESS}
    if not args.resume:
        if os.path.exists(saved_path) or os.path.exists(os.path.join(args.out, "metrics.jsonl")):
            raise ValueError(f"--out {args.out} already holds a run; pass --resume to continue it or choose another "
                             "--out")
        os.makedirs(args.out, exist_ok=True)
        with open(saved_path, "w") as f:
            json.dump(options, f, indent=2)
        return
    if not os.path.exists(saved_path):
        raise ValueError(f"--resume: {saved_path} does not exist, so {args.out} holds no run; start without --resume")
    with open(saved_path) as f:
        saved = json.load(f)
    for key, value in options.items():
        if saved.get(key) != value:
            raise ValueError(f"--resume: --{key.replace('_', '-')} was {saved.get(key)!r} in {saved_path}, now "
                             f"{value!r}; resuming with it would mix two runs (start a new --out to change it)")
    if os.path.isdir(os.path.join(args.out, ADAPTERS[phases[-1]])):
        raise ValueError(f"--resume: the run in {args.out} has finished ({ADAPTERS[phases[-1]]}/ is saved)")


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
    """The adapter, and the optimizer's state inside a phase: a phase starts with a fresh optimizer, resumed or not."""
    def write(tmp):
        model.save_pretrained(tmp)
        if step > 0:
            torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump({"phase": phase, "step": step}, f)
    save_atomically(write, os.path.join(args.out, "checkpoint"))


def load_adapter_weights(model, folder: str):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    set_peft_model_state_dict(model, load_file(os.path.join(folder, "adapter_model.safetensors")))


def load_checkpoint(args, model) -> tuple[str, int, dict | None]:
    folder = os.path.join(args.out, "checkpoint")
    load_adapter_weights(model, folder)
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    optimizer = os.path.join(folder, "optimizer.pt")
    return state["phase"], state["step"], torch.load(optimizer) if os.path.exists(optimizer) else None


def keep_metrics_before(path: str, phase: str, step: int):
    """On resume, drop the lines of steps from the checkpoint's on: they are run again."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(path, "w") as f:
        for row in rows:
            if (PHASES.index(str(row["stage"])), row["step"]) < (PHASES.index(phase), step):
                f.write(json.dumps(row) + "\n")


def trainable_weights(model) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def adapter_weights(model, folder: str) -> dict:
    """The trainable weights of the adapter saved in `folder`, read through the model, which is left as it was."""
    now = trainable_weights(model)
    load_adapter_weights(model, folder)
    saved = trainable_weights(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in now:
                p.copy_(now[name])
    return saved


# ---- the phases --------------------------------------------------------------------------------------------------

def sft_phase_step(args, model, tokenizer, traces, optimizer, step: int, chat: bool) -> dict:
    start = time.time()
    batch = random.Random(f"{args.seed}-sft-{step}").sample(traces, min(args.questions_per_step * 2, len(traces)))
    episodes = [trace_episode(tokenizer, build_prompt(tokenizer, t["question"], chat), t["segments"]) for t in batch]
    model.train()
    loss = sft_step(model, optimizer, episodes, tokenizer.pad_token_id, args.micro_batch)
    return {"loss": loss, "skipped": int(math.isnan(loss)), "tokens": sum(len(e.ids) for e in episodes),
            "seconds": time.time() - start}


def train(args, model, tokenizer, retriever, questions, traces):
    """Run the phases in order, from the checkpoint if resuming; save each phase's adapter when it ends."""
    chat = use_chat(tokenizer, args.prompt)
    rollout_cfg, cfg = rollout_config(args, args.temperature), grpo_config(args)
    phases = run_phases(args)
    metrics_path, checkpoint = os.path.join(args.out, "metrics.jsonl"), os.path.join(args.out, "checkpoint")
    start_phase, start_step, optimizer_state = phases[0], 0, None
    if args.resume and os.path.isdir(checkpoint):  # else it was interrupted before its first checkpoint
        start_phase, start_step, optimizer_state = load_checkpoint(args, model)
    if args.resume:
        keep_metrics_before(metrics_path, start_phase, start_step)
    # pi_ref: the adapter disabled (None), or with --stage2-reference stage1 in stage 2 the weights it started from
    reference = None
    stage1 = os.path.join(args.out, "stage1") if "1" in phases else args.adapter  # None: a zero adapter, the base
    if args.stage2_reference == "stage1" and start_phase == "2" and start_step > 0 and stage1:
        reference = adapter_weights(model, stage1)
    for phase in phases[phases.index(start_phase):]:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        first = start_step if phase == start_phase else 0
        if first and optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        if phase == "2" and args.stage2_reference == "stage1" and reference is None:
            reference = trainable_weights(model)
        n_steps = {"sft": args.sft_steps, "1": args.stage1_steps or args.steps}.get(phase, args.steps)
        bar = tqdm(range(first, n_steps), desc="cold-start SFT" if phase == "sft" else f"stage {phase}",
                   initial=first, total=n_steps)
        failed = 0  # steps in a row skipped for a non-finite loss or gradient
        for step in bar:
            torch.manual_seed(args.seed * 1_000_003 + PHASES.index(phase) * 100_003 + step)  # resumable
            if phase == "sft":
                row = sft_phase_step(args, model, tokenizer, traces, optimizer, step, chat)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            else:
                batch = random.Random(f"{args.seed}-{phase}-{step}").sample(
                    questions, min(args.questions_per_step, len(questions)))
                row = grpo_step(model, tokenizer, retriever, batch, optimizer, int(phase), rollout_cfg, cfg, chat,
                                reference if phase == "2" else None)
                bar.set_postfix(reward=f"{row['reward_mean']:.2f}", searches=f"{row['searches_mean']:.2f}")
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"stage": phase if phase == "sft" else int(phase), "step": step, **row}) + "\n")
            failed = failed + 1 if row["skipped"] else 0
            if failed == 3:
                kept = f"the last good checkpoint is {checkpoint}" if os.path.isdir(checkpoint) else "no checkpoint"
                raise RuntimeError(f"{bar.desc} steps {step - 2}-{step}: the loss or the gradient was not finite 3 "
                                   f"steps in a row (each update was skipped); {kept}")
            if (step + 1) % args.save_every == 0 and step + 1 < n_steps:
                save_checkpoint(args, model, optimizer, phase, step + 1)
        save_atomically(model.save_pretrained, os.path.join(args.out, ADAPTERS[phase]))
        following = phases[phases.index(phase) + 1:]
        if following:
            save_checkpoint(args, model, optimizer, following[0], 0)
    shutil.rmtree(checkpoint, ignore_errors=True)


def run_phases(args) -> list[str]:
    return (["sft"] if args.sft_steps else []) + (["1", "2"] if args.stage == "both" else [args.stage])


def main(argv=None):
    args = parse_args(argv)
    try:  # every input is checked before the model is loaded and any training time is spent
        questions = load_questions(args.train_data)
        traces = load_traces(args.sft_data) if args.sft_data else []
        retriever = open_retriever(args)
        check_out_dir(args, run_phases(args))
        set_seed(args.seed)  # LoRA's initial weights are drawn from it
        model, tokenizer = load_policy(args.model, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
                                       lora_r=args.lora_r, adapter=args.adapter)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(questions)} questions, {retriever}, model {args.model}")
    train(args, model, tokenizer, retriever, questions, traces)
    print(f"done: {args.out}")


if __name__ == "__main__":
    main()
