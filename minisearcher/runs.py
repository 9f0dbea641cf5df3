"""A training run's folder: its options, metrics and adapters, and the checkpoint that --resume continues from.

    OUT/config.json     the resolved options: --resume refuses another value of one that changes training
    OUT/metrics.jsonl   one line per step (with --report-to, also TensorBoard's or Weights & Biases' record)
    OUT/sft/, OUT/stage1/, OUT/stage2/   each phase's LoRA adapter, saved when the phase ends
    OUT/checkpoint/     the adapter and the optimizer's state, every --save-every steps and at each phase boundary
"""
import json
import os
import shutil

import torch

PHASES = ["sft", "1", "2"]
ADAPTERS = {"sft": "sft", "1": "stage1", "2": "stage2"}  # the folder each phase's adapter is saved in
HARMLESS = {"resume", "save_every", "config", "report_to"}  # may change on --resume: they change no training


def check_out_dir(args, phases: list[str]):
    """Before any work: a new run needs a folder without a run; --resume needs an unfinished run there whose options
    (OUT/config.json) are this command's, but for HARMLESS ones."""
    saved_path = os.path.join(args.out, "config.json")
    options = {key: value for key, value in vars(args).items() if key not in HARMLESS}
    if not args.resume:
        if os.path.exists(saved_path) or os.path.exists(os.path.join(args.out, "metrics.jsonl")):
            raise ValueError(f"--out {args.out} already holds a run; pass --resume to continue it or choose another "
                             "--out")
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


def start_run(args):
    """A new run's folder, with its resolved options in OUT/config.json (what --resume compares with)."""
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({key: value for key, value in vars(args).items() if key not in HARMLESS}, f, indent=2)


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


def reporter(args):
    """With --report-to, a function that sends each metrics row to TensorBoard (OUT/tensorboard/) or to Weights &
    Biases as well; metrics.jsonl stays the record."""
    if args.report_to is None:
        return None
    if args.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(args.out, "tensorboard"))
    else:
        import wandb
        wandb.init(project="minisearcher", name=os.path.basename(os.path.abspath(args.out)), dir=args.out,
                   config=vars(args))

    def report(row: dict):
        phase = ADAPTERS[str(row["stage"])]  # "sft", "stage1", "stage2": each phase a curve from its step 0
        numbers = {f"{phase}/{key}": value for key, value in row.items() if key not in ("stage", "step")}
        if args.report_to == "tensorboard":
            for key, value in numbers.items():
                writer.add_scalar(key, value, row["step"])
            writer.flush()
        else:
            wandb.log({**numbers, f"{phase}/step": row["step"]})
    return report


def run_phases(args) -> list[str]:
    """The phases of a run, in PHASES' order: the cold start if it has steps, then the RL stages asked for."""
    return (["sft"] if args.sft_steps else []) + {"both": ["1", "2"], "none": []}.get(args.stage, [args.stage])
