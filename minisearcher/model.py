"""Load a policy: a hub id, a local folder or a .gguf file; LoRA on every linear layer; 4-bit NF4 on CUDA."""
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig


def load_tokenizer(name: str):
    folder, gguf = split_gguf(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {name!r}: cannot load it ({type(e).__name__}: {str(e).splitlines()[0]}). Without "
                         "network access pass a local folder written by save_pretrained, or a .gguf file.") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def split_gguf(name: str) -> tuple[str, str | None]:
    if name.endswith(".gguf"):
        if not os.path.isfile(name):
            raise ValueError(f"--model {name!r}: no such .gguf file")
        return os.path.dirname(os.path.abspath(name)), os.path.basename(name)
    return name, None


def load_policy(name: str, *, load_in_4bit: bool | None = None, dtype: str = "auto", lora_r: int = 16,
                lora_alpha: int = 32, adapter: str | None = None, trainable: bool = True):
    """(model, tokenizer). The model is a peft model: the reference policy is the same model with its adapter
    disabled, so no second copy of the weights is ever held (DESIGN GRPO 4)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    tokenizer = load_tokenizer(name)
    folder, gguf = split_gguf(name)
    if load_in_4bit is None:
        load_in_4bit = torch.cuda.is_available()
    torch_dtype = torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch_dtype) if load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch_dtype, quantization_config=quant,
                                                 device_map="auto" if torch.cuda.is_available() else None)
    if load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=trainable)
        disable_cpu_bf16_kernel(model)
    elif trainable and torch.cuda.is_available():
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if adapter:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    else:
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def disable_cpu_bf16_kernel(model):
    """bitsandbytes' AVX512-BF16 CPU kernel breaks the LoRA backward after a no-grad forward; the generic one works."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
