"""The peer benchmark's model, adapter and batch (../shared/peer/bench_train_step.py), for the scripts that time other
things with it: greedy generation (peer_generate.py) and training steps on a GPU (peer_train_step_gpu.py).

MHR_PEER_DIR names the folder holding bench_train_step.py where ../shared is not beside the checkout (a device machine).
"""
import os, sys

import torch

sys.path.insert(0, os.environ.get("MHR_PEER_DIR") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer"))
from bench_train_step import PRESETS, TARGETS  # noqa: E402
from peft import IA3Config, LoraConfig, PolyConfig, get_peft_model  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

ROUTED = ("mhr", "poly")


def adapted_model(method, preset):
    """The preset's random T5 (torch.manual_seed(0)) with the method's peft adapter on TARGETS, at the peer's
    defaults: rank 8, 8 skills, 8 heads for MHR."""
    torch.manual_seed(0)
    p = PRESETS[preset]
    model = T5ForConditionalGeneration(T5Config(**p["model"], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    if method in ROUTED:
        cfg = PolyConfig(task_type="SEQ_2_SEQ_LM", r=8, target_modules=TARGETS, n_tasks=p["n_tasks"],
                         n_skills=8, n_splits=8 if method == "mhr" else 1)
    elif method == "lora":
        cfg = LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    else:
        cfg = IA3Config(task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wo"], feedforward_modules=["wo"])
    return get_peft_model(model, cfg)


def batch(method, preset):
    """Source, target and the forward's task-id keywords, drawn as the peer draws them (generator seed 1)."""
    p = PRESETS[preset]
    V = p["model"]["vocab_size"]
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, V, (p["batch"], p["src_len"]), generator=g)
    tgt = torch.randint(2, V, (p["batch"], p["tgt_len"]), generator=g)
    task_ids = torch.randint(0, p["n_tasks"], (p["batch"],), generator=g)
    return src, tgt, (dict(task_ids=task_ids) if method in ROUTED else {})
