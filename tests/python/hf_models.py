"""Tiny Hugging Face Llama and Mixtral checkpoints and their outputs, for tests/hf_interop.rs and
tests/hf_configs.rs. Runs under the venv's transformers (5.24) or, with PYTHONPATH pointing at
the folder `make transformers4` fills, under transformers 4.57 (both on the venv's PyTorch).

Usage:
  python tests/python/hf_models.py make OUT_DIR
      Writes OUT_DIR/llama (LlamaForCausalLM, saved in shards with model.safetensors.index.json),
      OUT_DIR/mixtral (MixtralForCausalLM, one model.safetensors, experts one tensor each as
      save_pretrained writes them by default: block_sparse_moe.experts.{e}.w1/w2/w3) and
      OUT_DIR/mixtral_fused (the same model saved with save_original_format=False: transformers
      5's fused mlp.experts.gate_up_proj / down_proj), each with
      OUT_DIR/<name>_reference.safetensors: `tokens` [2, 24], transformers' `logits` [2, 24, V],
      a `prompt` [1, 8] and `generated` [1, 40] (the prompt and 32 greedy tokens).
  python tests/python/hf_models.py shrunk CONFIG OVERRIDES OUT_DIR
      A random model of the published config.json CONFIG with the sizes of the JSON object
      OVERRIDES changed (every other key kept as published): OUT_DIR/model (that config.json
      and the weights save_pretrained writes) and OUT_DIR/reference.safetensors as for `make`,
      computed by the model transformers loads back from OUT_DIR/model.
  python tests/python/hf_models.py count CONFIG...
      Prints a JSON object: for each config.json path, the number of parameters of the model
      transformers builds from it (on the meta device: no memory, no weights).
  python tests/python/hf_models.py check MODEL_DIR INPUTS OUTPUTS
      Loads MODEL_DIR with AutoModelForCausalLM.from_pretrained (an export of ours), runs it on
      the `tokens` and `prompt` of INPUTS and writes `logits` and `generated` to OUTPUTS. Prints
      the class, the transformers version and the weights file's safetensors metadata.
  python tests/python/hf_models.py pipeline MODEL_DIR TEXT NEW_TOKENS OUTPUT_JSON
      Loads MODEL_DIR's tokenizer with AutoTokenizer and the folder with
      pipeline("text-generation"), generates NEW_TOKENS greedy tokens after TEXT and writes what
      they did to OUTPUT_JSON: the tokenizer's class, ids of TEXT, its bos/eos ids, the model's
      generation eos id and the pipeline's generated ids and text.

The test models are built to show the known failure classes of a port: head_dim 8 with 8 query
heads and 2 key/value heads (rotary row pairing, the order key/value heads are repeated in),
rope_theta 500 and rms_norm_eps 1e-5 (neither our default), an untied head, Mixtral's top-2
softmax-then-renormalise router. Weights are redrawn so that every sublayer matters: matrices
N(0, 1/fan_in), norms N(1, 0.2²), embeddings N(0, 0.02²) (small, so that the norm's epsilon
matters at the first block).
"""

import json
import math
import os
import sys

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers import MixtralConfig, MixtralForCausalLM, pipeline

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
        if name == "mixtral":
            # The same model in transformers 5's fused layout (what it holds in memory).
            model.save_pretrained(f"{out}/mixtral_fused", max_shard_size=shard, save_original_format=False)
            save_file(ref, f"{out}/mixtral_fused_reference.safetensors")
            for folder, present, absent in [
                ("mixtral", "block_sparse_moe.experts.3.w3.weight", "mlp.experts.gate_up_proj"),
                ("mixtral_fused", "mlp.experts.gate_up_proj", "block_sparse_moe.experts.3.w3.weight"),
            ]:
                names = list(safe_open(f"{out}/{folder}/model.safetensors", "pt").keys())
                assert f"model.layers.1.{present}" in names and not any(absent in n for n in names), (folder, names)
            # transformers reads the fused files back into the same model.
            back = AutoModelForCausalLM.from_pretrained(f"{out}/mixtral_fused", dtype=torch.float32)
            assert torch.equal(outputs(back, tokens, prompt)["logits"], ref["logits"])


def shrunk(config_path, overrides, out):
    """A random model of a published config with some sizes changed, and its outputs."""
    with open(config_path) as f:
        published = json.load(f)
    config = {**published, **json.loads(overrides)}
    os.makedirs(f"{out}/model", exist_ok=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config), dtype=torch.float32)
    redraw(model)
    model.save_pretrained(f"{out}/model")
    # The folder's config.json is the published one (with the overrides), not transformers' rewrite.
    with open(f"{out}/model/config.json", "w") as f:
        json.dump(config, f, indent=2)
    model = AutoModelForCausalLM.from_pretrained(f"{out}/model", dtype=torch.float32)
    vocab = config["vocab_size"]
    tokens = torch.randint(0, vocab, (2, 24))
    prompt = torch.randint(0, vocab, (1, 8))
    save_file({"tokens": tokens, "prompt": prompt, **outputs(model, tokens, prompt)}, f"{out}/reference.safetensors")
    print(type(model).__name__)


def count(paths):
    counts = {}
    for path in paths:
        with open(path) as f:
            config = AutoConfig.for_model(**json.load(f))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        counts[path] = sum(p.numel() for p in model.parameters())
    print(json.dumps(counts))


def check(model_dir, inputs, out):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        metadata = f.metadata()
    print(f"class {type(model).__name__} transformers {transformers.__version__} metadata {json.dumps(metadata)}")
    x = load_file(inputs)
    save_file(outputs(model, x["tokens"], x["prompt"]), out)


def generation_pipeline(model_dir, text, new_tokens, out):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generator = pipeline("text-generation", model=model_dir, tokenizer=tokenizer, dtype=torch.float32)
    result = generator(text, max_new_tokens=int(new_tokens), do_sample=False, return_tensors=True)[0]
    text_result = generator(text, max_new_tokens=int(new_tokens), do_sample=False)[0]
    report = {
        "transformers": transformers.__version__,
        "tokenizer_class": type(tokenizer).__name__,
        "ids": tokenizer(text)["input_ids"],
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "vocab": len(tokenizer),
        "generation_eos_token_id": generator.model.generation_config.eos_token_id,
        "generated_ids": [int(i) for i in result["generated_token_ids"]],
        "generated_text": text_result["generated_text"],
    }
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2])
    elif sys.argv[1] == "shrunk":
        shrunk(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "count":
        count(sys.argv[2:])
    elif sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4])
    elif sys.argv[1] == "pipeline":
        generation_pipeline(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
