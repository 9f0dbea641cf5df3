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
    disabled, so no second copy of the weights is ever held.

    QLoRA as the common recipes run it: the frozen weights, the activations and the KV cache stay in the compute
    dtype (the linear layers' weights in 4-bit on top), the LoRA weights are float32 (peft keeps them so), and
    grpo.token_logprobs takes the log-sum-exp in float32. Nothing else is upcast: peft's
    prepare_model_for_kbit_training would make every other frozen weight float32 (the embeddings, lm_head, the
    norms), and with it the whole residual stream and the KV cache."""
    from peft import LoraConfig, PeftModel, get_peft_model

    tokenizer = load_tokenizer(name)
    folder, gguf = split_gguf(name)
    cuda = torch.cuda.is_available()
    if load_in_4bit is None:
        load_in_4bit = cuda
    # auto: bf16 on a GPU; float32 on a CPU, where bf16 matmuls without AVX512-BF16 are emulated and slower
    # (docs/PERFORMANCE.md, section 4)
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else torch.bfloat16 if cuda else torch.float32
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch_dtype) if load_in_4bit else None
    # the whole model on this process's GPU (torchrun gives each process its own; "auto" would spread every process's
    # copy over all of them); use_kernels=False: no layer is swapped for a kernel fetched from the hub at load time
    # (transformers' default on a GPU), so the model runs the code one reads, and loads offline
    device_map = {"": torch.cuda.current_device()} if cuda else None
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch_dtype, quantization_config=quant,
                                                 device_map=device_map, use_kernels=False)
    if load_in_4bit:  # bitsandbytes' AVX512-BF16 CPU kernel breaks the LoRA backward after a no-grad forward
        import bitsandbytes as bnb
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    if trainable and cuda:  # keep each layer's input, recompute the rest of the layer in the backward
        model.activation_checkpointing_enable()
    if adapter:
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    else:
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model, tokenizer
