"""bf16 oracles: tiny T5 checkpoints stored in bfloat16, peft adapters in float32, and what transformers +
peft compute with the base in bfloat16 (as the paper's 3B runs) and, for comparison, in float32.

Usage: python make_bf16_fixtures.py OUT_DIR    (the repo keeps OUT_DIR = crates/mhr-models/tests/data/bf16-oracle)

The models follow `shared/tools/make_fixtures.py` (same dimensions, layouts and batch) but live here, so the
tests do not depend on which fixture variant `../shared` holds:
- `t5-v1_1/`, `t5-v1_0/`: config.json + model.safetensors with bf16 tensors;
- `t5-v1_1-lora/`, `t5-v1_1-mhr/`: peft folders (f32 weights) for `t5-v1_1`;
- `<folder>/reference.safetensors`: the inputs, then `bf16.*` (base loaded with `dtype=torch.bfloat16`, adapters
  kept in f32 by peft's `autocast_adapter_dtype`) and `f32.*` (the same bf16-valued weights computed in f32):
  logits, loss (in f32 from the logits), label_loglik_sum, encoder_last_hidden_state and greedy tokens for the base models, gradients of
  the adapter weights for the adapters. Every tensor is saved as f32 (bf16 values are exact in f32).
"""
import json, os, sys

import torch
from safetensors.torch import save_file
from transformers import T5Config, T5ForConditionalGeneration
from peft import LoraConfig, PeftModel, PolyConfig, get_peft_model

out = sys.argv[1]
torch.manual_seed(0)
torch.use_deterministic_algorithms(True)
os.makedirs(out, exist_ok=True)

dims = dict(vocab_size=200, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0,
            layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
archs = {
    "t5-v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5-v1_0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
}
targets = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]
task_ids = torch.tensor([0, 2, 1])


def batch(vocab):
    g = torch.Generator().manual_seed(7)
    src = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(src)
    for i, n in enumerate([11, 8, 5]):
        src[i, n - 1] = 1; src[i, n:] = 0; mask[i, n:] = 0
    labels = torch.randint(3, vocab, (3, 6), generator=g)
    for i, n in enumerate([6, 4, 2]):
        labels[i, n - 1] = 1; labels[i, n:] = -100
    return {"input_ids": src, "attention_mask": mask, "labels": labels}


def label_loglik_sum(logits, labels):
    lp = torch.log_softmax(logits.float(), -1)
    lab = labels.clone()
    valid = lab != -100
    lab[~valid] = 0
    return (lp.gather(-1, lab.unsqueeze(-1)).squeeze(-1) * valid).sum(-1)


def outputs(model, x, prefix, generate):
    o = model(**x)
    # The loss in f32 from the logits, as ours (transformers' own is rounded to the logits' dtype).
    loss = torch.nn.functional.cross_entropy(o.logits.float().flatten(0, 1), x["labels"].flatten(), ignore_index=-100)
    ref = {f"{prefix}.logits": o.logits, f"{prefix}.loss": loss.reshape(1),
           f"{prefix}.label_loglik_sum": label_loglik_sum(o.logits, x["labels"])}
    if generate:
        ref[f"{prefix}.encoder_last_hidden_state"] = o.encoder_last_hidden_state
        ref[f"{prefix}.greedy_tokens"] = model.generate(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                                                        max_new_tokens=8, do_sample=False, num_beams=1)
    else:
        model.zero_grad()
        loss.backward()
        for n, p in model.named_parameters():
            if p.requires_grad and p.grad is not None:
                key = n.replace("base_model.model.", "").replace(".default", "")
                ref[f"{prefix}.grad.{key}"] = p.grad
    return {k: (v.detach().float() if v.is_floating_point() else v).contiguous() for k, v in ref.items()}, loss.item()


def load(name, dtype):
    return T5ForConditionalGeneration.from_pretrained(os.path.join(out, name), dtype=dtype).eval()


manifest = {}
for name, arch in archs.items():
    model = T5ForConditionalGeneration(T5Config(**dims, **arch)).eval()
    with torch.no_grad():  # non-trivial layer norms, logits in a realistic range (as make_fixtures.py)
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            if n == "lm_head.weight":
                p.mul_(0.05)
    model.to(torch.bfloat16).save_pretrained(os.path.join(out, name), safe_serialization=True)
    x = batch(dims["vocab_size"])
    ref = dict(x)
    with torch.no_grad():
        for dtype, prefix in [(torch.bfloat16, "bf16"), (torch.float32, "f32")]:
            values, loss = outputs(load(name, dtype), x, prefix, generate=True)
            ref.update(values)
            manifest[f"{name} {prefix}"] = loss
    save_file(ref, os.path.join(out, name, "reference.safetensors"))

adapters = {
    "t5-v1_1-lora": LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=4, target_modules=targets,
                               init_lora_weights=False, lora_dropout=0.0),
    "t5-v1_1-mhr": PolyConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=targets, n_tasks=3, n_skills=4,
                              n_splits=4, poly_type="poly", init_weights=False),
}
for name, config in adapters.items():
    adapter_dir = os.path.join(out, name)
    peft_model = get_peft_model(load("t5-v1_1", torch.float32), config)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "module_logits" in n:
                p.copy_(torch.randn_like(p))
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    x = batch(dims["vocab_size"])
    if "mhr" in name:
        x["task_ids"] = task_ids
    ref = dict(x)
    for dtype, prefix in [(torch.bfloat16, "bf16"), (torch.float32, "f32")]:
        model = PeftModel.from_pretrained(load("t5-v1_1", dtype), adapter_dir, is_trainable=True).eval()
        assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {torch.float32}
        values, loss = outputs(model, x, prefix, generate=False)
        ref.update(values)
        manifest[f"{name} {prefix}"] = loss
    save_file(ref, os.path.join(adapter_dir, "reference.safetensors"))

for d in os.listdir(out):
    folder = os.path.join(out, d)
    card = os.path.join(folder, "README.md")
    if os.path.exists(card):
        os.remove(card)
    config_path = os.path.join(folder, "adapter_config.json")
    if os.path.exists(config_path):
        c = json.load(open(config_path))
        c["base_model_name_or_path"] = "../t5-v1_1"
        json.dump(c, open(config_path, "w"), indent=2, sort_keys=True)

import transformers, peft
manifest["generated_with"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                              "peft": peft.__version__}
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"), indent=2)
print(json.dumps(manifest, indent=2))
