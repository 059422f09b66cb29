"""Reference outputs of Hugging Face transformers layers for the Rust parity tests.

Usage: python tests/python/hf_fixtures.py OUT_DIR

Writes OUT_DIR/{switch, mixtral, gemma3n_altup_active0, gemma3n_altup_active2}.safetensors, and
OUT_DIR/tokenizer.json with OUT_DIR/tokenizer_ids.json (a BPE made by the Python `tokenizers`),
and OUT_DIR/hub/ (a SentencePiece-style tokenizer as Hub models ship it: Metaspace with a "▁"
prefix, a BOS template, truncation and padding switched on, its tokenizer_config.json) with
hub/expected.json (Python's ids of a multi-paragraph document encoded whole, with truncation and
padding off, its prompt ids with the template, and the decoded text).
Weights are stored in altup-moe's layout (router [E, D], experts w_in/w_gate [E, D, F], w_out
[E, F, D]; AltUp router [K, D], prediction_coefs [K², K], correction_coefs [K, K]) next to the
inputs and the Hugging Face outputs; tests/hf_parity.rs loads them into our layers and compares.
"""

import os
import sys

import torch
from safetensors.torch import save_file
from transformers import Gemma3nTextConfig, MixtralConfig, SwitchTransformersConfig
from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextAltUp
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.switch_transformers.modeling_switch_transformers import (
    SwitchTransformersSparseMLP,
    load_balancing_loss_func,
    router_z_loss_func,
)

D, F, E = 16, 32, 4


def switch_fixture():
    # Capacity 64 per sequence never binds for 12 tokens: outputs are comparable with dropless.
    config = SwitchTransformersConfig(
        d_model=D, d_ff=F, num_experts=E, expert_capacity=64, router_jitter_noise=0.0,
        dense_act_fn="gelu", router_bias=False, router_dtype="float32", dropout_rate=0.0,
    )
    mlp = SwitchTransformersSparseMLP(config).eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 12, D)
    with torch.no_grad():
        _, _, logits = mlp.router(x)
        probs = torch.softmax(logits, dim=-1)
        y = mlp(x)
        z_loss = router_z_loss_func(logits)
        # Hugging Face balances per group (sequence): compare on a single sequence.
        balance = load_balancing_loss_func(probs[:1], probs[:1].argmax(-1))
    experts = [mlp.experts[f"expert_{e}"] for e in range(E)]
    return {
        "x": x,
        "router.weight": mlp.router.classifier.weight.detach(),
        "experts.w_in": torch.stack([ex.wi.weight.detach().t() for ex in experts]),
        "experts.w_out": torch.stack([ex.wo.weight.detach().t() for ex in experts]),
        "logits": logits,
        "probs": probs,
        "expert_index": probs.argmax(-1),
        "y": y,
        "z_loss": z_loss.reshape(1),
        "balance_loss_first_sequence": balance.reshape(1),
    }


def mixtral_fixture():
    config = MixtralConfig(
        hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=2,
        router_jitter_noise=0.0, hidden_act="silu",
    )
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    x = torch.randn(2, 5, D)
    with torch.no_grad():
        y = block(x)
    gate_up = block.experts.gate_up_proj.detach()  # [E, 2F, D]: gate rows first, then up rows
    return {
        "x": x,
        "router.weight": block.gate.weight.detach(),
        "experts.w_gate": gate_up[:, :F, :].transpose(1, 2),
        "experts.w_in": gate_up[:, F:, :].transpose(1, 2),
        "experts.w_out": block.experts.down_proj.detach().transpose(1, 2),
        "y": y,
    }


def gemma3n_fixture(active):
    """Gemma3nTextAltUp, K = 4, predict and correct in evaluation and training (clip binds)."""
    k, d, clip = 4, 16, 0.4
    config = Gemma3nTextConfig(
        hidden_size=d, altup_num_inputs=k, altup_active_idx=active, altup_coef_clip=clip, rms_norm_eps=1e-6,
    )
    altup = Gemma3nTextAltUp(config)
    with torch.no_grad():
        for name, p in altup.named_parameters():
            p.normal_(1.0 if name == "router_norm.weight" else 0.0, 0.5)
    weights = {name: p.detach().clone() for name, p in altup.named_parameters()}
    x = torch.randn(k, 2, 3, d)
    activated = torch.randn(2, 3, d)
    out = {
        "x": x,
        "activated": activated,
        "router_norm.weight": weights["router_norm.weight"],
        "router.weight": weights["modality_router.weight"],
        "prediction_coefs.weight": weights["prediction_coefs.weight"],
        "correction_coefs.weight": weights["correction_coefs.weight"],
        "clip": torch.tensor([clip]),
        "active": torch.tensor([active]),
    }
    with torch.no_grad():
        altup.eval()
        pred = altup.predict(x)
        out["predict_eval"] = pred
        out["correct_eval"] = altup.correct(pred, activated)
        # In training Hugging Face clamps prediction_coefs in place and correction_coefs
        # functionally; we clamp both functionally, which gives the same numbers.
        altup.train()
        pred = altup.predict(x)
        out["predict_train"] = pred
        out["correct_train"] = altup.correct(pred, activated)
    return out


TOKENIZER_SAMPLE = "ROMEO: But, soft! what light through yonder window breaks?\nJuliet — naïve café, ½ ∑ 東京 🙂  spaces\n\n"


def tokenizer_fixture(out):
    """A byte-level BPE trained by the Python `tokenizers` package (as a user would make one),
    saved as tokenizer.json, with the ids it gives TOKENIZER_SAMPLE (tokenizer_ids.json)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    text = ("But, soft! what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
            "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.\n") * 50
    tokenizer.train_from_iterator([text], trainer=trainer)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    ids = tokenizer.encode(TOKENIZER_SAMPLE).ids
    with open(os.path.join(out, "tokenizer_ids.json"), "w") as f:
        json.dump({"text": TOKENIZER_SAMPLE, "ids": ids, "decoded": tokenizer.decode(ids)}, f)


HUB_DOCUMENT = ("First paragraph: naïve café, ½ ∑ 東京 🙂.\n\nSecond paragraph follows a blank line.\n\n"
                "Third one, déjà vu — the end.\n") * 3


def hub_tokenizer_fixture(out):
    """A SentencePiece-style (Metaspace) BPE with byte fallback off, a template that puts <s>
    first, and the truncation/padding settings some Hub tokenizer.json files carry."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    hub = os.path.join(out, "hub")
    os.makedirs(hub, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tokenizer.train_from_iterator([HUB_DOCUMENT * 20], trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tokenizer.enable_truncation(max_length=16)
    tokenizer.enable_padding(length=16, pad_id=0, pad_token="<unk>")
    tokenizer.save(os.path.join(hub, "tokenizer.json"))
    with open(os.path.join(hub, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": None}, f)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    ids = tokenizer.encode(HUB_DOCUMENT, add_special_tokens=False).ids
    expected = {
        "document": HUB_DOCUMENT,
        "ids": ids,
        "prompt": "Second paragraph",
        "prompt_ids": tokenizer.encode("Second paragraph").ids,
        "decoded": tokenizer.decode(ids),
        "bos": bos,
        "eos": tokenizer.token_to_id("</s>"),
        "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True),
    }
    with open(os.path.join(hub, "expected.json"), "w") as f:
        json.dump(expected, f, ensure_ascii=False)


ROPE_POSITIONS = [0, 1, 2, 100, 4095, 32767, 131071]


def rope_fixture():
    """cos / sin of transformers' LlamaRotaryEmbedding (head_dim 64, rope_theta 500000, f32) at
    long positions: rope.safetensors holds `positions` [P] and `cos`, `sin` [P, 64]."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=512, num_attention_heads=8, rope_theta=500000.0, max_position_embeddings=131072)
    rotary = LlamaRotaryEmbedding(config)
    positions = torch.tensor([ROPE_POSITIONS])
    x = torch.zeros(1, 1, len(ROPE_POSITIONS), 64)
    cos, sin = rotary(x, positions)
    return {"positions": positions[0], "cos": cos[0].float(), "sin": sin[0].float()}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "target/hf-fixtures"
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    makers = [
        ("switch", switch_fixture),
        ("mixtral", mixtral_fixture),
        ("gemma3n_altup_active0", lambda: gemma3n_fixture(0)),
        ("gemma3n_altup_active2", lambda: gemma3n_fixture(2)),
        ("rope", rope_fixture),
    ]
    for name, make in makers:
        tensors = {k: v.contiguous() for k, v in make().items()}
        save_file(tensors, os.path.join(out, f"{name}.safetensors"))
    tokenizer_fixture(out)
    hub_tokenizer_fixture(out)
    print(f"wrote Hugging Face fixtures to {out}")


if __name__ == "__main__":
    main()
