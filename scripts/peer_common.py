"""The peer benchmark's model, adapter and batch (../shared/peer/bench_train_step.py), for the scripts that time other
things with it: greedy generation (peer_generate.py) and training steps on a GPU (peer_train_step_gpu.py).

Besides the peer's `tiny` and `small`, the presets of `cargo xtask bench` at the paper's T0 shapes (xtask/src/bench.rs):
T5 v1.1 `base`, `large` and `xl` (T0-3B's shapes), batch 8 of 256 + 32 tokens, rank 1 on every linear layer of the
blocks, 8 skills, 64 heads for MHR, one routing row per template of the T0 mixture (about 300).

MHR_PEER_DIR names the folder holding bench_train_step.py where ../shared is not beside the checkout (a device machine).
"""
import os, sys

import torch

sys.path.insert(0, os.environ.get("MHR_PEER_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer"))
from bench_train_step import PRESETS as PEER_PRESETS, TARGETS  # noqa: E402
from peft import IA3Config, LoraConfig, PolyConfig, get_peft_model  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

ROUTED = ("mhr", "poly")


def _t0(d_model, d_ff, layers, heads):
    model = dict(vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers,
                 num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    return dict(model=model, batch=8, src_len=256, tgt_len=32, n_tasks=300, rank=1, skills=8, heads=64)


PRESETS = {
    **{name: dict(p, rank=8, skills=8, heads=8) for name, p in PEER_PRESETS.items()},
    "base": _t0(768, 2048, 12, 12),
    "large": _t0(1024, 2816, 24, 16),
    "xl": _t0(2048, 5120, 24, 32),
}


def adapted_model(method, preset, dtype=torch.float32):
    """The preset's random T5 (torch.manual_seed(0)) in `dtype` with the method's peft adapter on TARGETS at the preset's
    sizes; peft keeps the adapter in float32 on a bfloat16 base (`autocast_adapter_dtype`)."""
    torch.manual_seed(0)
    p = PRESETS[preset]
    model = T5ForConditionalGeneration(T5Config(**p["model"], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    model = model.to(dtype)
    r = p["rank"]
    if method in ROUTED:
        cfg = PolyConfig(task_type="SEQ_2_SEQ_LM", r=r, target_modules=TARGETS, n_tasks=p["n_tasks"],
                         n_skills=p["skills"], n_splits=p["heads"] if method == "mhr" else 1)
    elif method == "lora":
        cfg = LoraConfig(task_type="SEQ_2_SEQ_LM", r=r, lora_alpha=r, target_modules=TARGETS, lora_dropout=0.0)
    else:
        cfg = IA3Config(task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wo"], feedforward_modules=["wo"])
    return get_peft_model(model, cfg, autocast_adapter_dtype=True)


def batch(method, preset, batch_size=None):
    """Source, target and the forward's task-id keywords, drawn as the peer draws them (generator seed 1)."""
    p = PRESETS[preset]
    V = p["model"]["vocab_size"]
    b = batch_size or p["batch"]
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, V, (b, p["src_len"]), generator=g)
    tgt = torch.randint(2, V, (b, p["tgt_len"]), generator=g)
    task_ids = torch.randint(0, p["n_tasks"], (b,), generator=g)
    return src, tgt, (dict(task_ids=task_ids) if method in ROUTED else {})
