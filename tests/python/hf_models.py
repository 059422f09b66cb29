"""Tiny Hugging Face Llama and Mixtral checkpoints and their outputs, for tests/hf_interop.rs.

Usage:
  python tests/python/hf_models.py make OUT_DIR
      Writes OUT_DIR/llama (LlamaForCausalLM, saved in shards with model.safetensors.index.json)
      and OUT_DIR/mixtral (MixtralForCausalLM, one model.safetensors), each with
      OUT_DIR/<name>_reference.safetensors: `tokens` [2, 24], transformers' `logits` [2, 24, V],
      a `prompt` [1, 8] and `generated` [1, 40] (the prompt and 32 greedy tokens).
  python tests/python/hf_models.py check MODEL_DIR INPUTS OUTPUTS
      Loads MODEL_DIR with AutoModelForCausalLM.from_pretrained (an export of ours), runs it on
      the `tokens` and `prompt` of INPUTS and writes `logits` and `generated` to OUTPUTS.

The test models are built to show the known failure classes of a port: head_dim 8 with 8 query
heads and 2 key/value heads (rotary row pairing, the order key/value heads are repeated in),
rope_theta 500 and rms_norm_eps 1e-5 (neither our default), an untied head, Mixtral's top-2
softmax-then-renormalise router. Weights are redrawn so that every sublayer matters: matrices
N(0, 1/fan_in), norms N(1, 0.2²), embeddings N(0, 0.02²) (small, so that the norm's epsilon
matters at the first block).
"""

import math
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

COMMON = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=500.0, max_position_embeddings=64,
    tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
)
NEW_TOKENS = 32


def redraw(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2)
            elif "embed_tokens" in name:
                p.normal_(0.0, 0.02)
            else:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1]))


def outputs(model, tokens, prompt):
    model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    with torch.no_grad():
        logits = model(tokens).logits.float()
        generated = model.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + NEW_TOKENS, generated.shape
    return {"logits": logits.contiguous(), "generated": generated.contiguous()}


def make(out):
    torch.manual_seed(0)
    models = {
        "llama": LlamaForCausalLM(LlamaConfig(**COMMON)),
        "mixtral": MixtralForCausalLM(MixtralConfig(
            **COMMON, num_local_experts=4, num_experts_per_tok=2, router_jitter_noise=0.0, sliding_window=None,
        )),
    }
    for name, model in models.items():
        redraw(model)
        # The Llama checkpoint is sharded (model.safetensors.index.json), Mixtral's is one file.
        shard = "60KB" if name == "llama" else "50MB"
        model.save_pretrained(f"{out}/{name}", max_shard_size=shard)
        tokens = torch.randint(0, 256, (2, 24))
        prompt = torch.randint(0, 256, (1, 8))
        ref = {"tokens": tokens, "prompt": prompt, **outputs(model, tokens, prompt)}
        save_file(ref, f"{out}/{name}_reference.safetensors")


def check(model_dir, inputs, out):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    print(type(model).__name__)
    x = load_file(inputs)
    save_file(outputs(model, x["tokens"], x["prompt"]), out)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
