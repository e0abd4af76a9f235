"""Peer benchmark: greedy generation throughput of HF transformers T5 + peft (Poly/MHR/LoRA/(IA)^3) on CPU.

The counterpart of `cargo xtask bench --what generate`: the model, adapter and batch come from
../shared/peer/bench_train_step.py's presets (same dims, batch, source length, task ids); every row generates
exactly the preset's target length (eos suppressed until then), with the key/value cache, in eval mode.
Prints one JSON line with the keys of our bench: generate_batch, generate_new_tokens, generate_ms_median,
generate_tokens_per_s, peak_rss_mb.

Usage: python peer_generate.py [--method mhr|poly|lora|ia3] [--preset tiny|small] [--steps N] [--threads T]
"""
import argparse, json, os, resource, statistics, sys, time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "peer"))
from bench_train_step import PRESETS, TARGETS  # noqa: E402
from peft import IA3Config, LoraConfig, PolyConfig, get_peft_model  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="mhr", choices=["mhr", "poly", "lora", "ia3"])
    ap.add_argument("--preset", default="tiny", choices=list(PRESETS))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    ap.add_argument("--new-tokens", type=int, default=0, help="0 = the preset's target length")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    p = PRESETS[a.preset]
    model = T5ForConditionalGeneration(T5Config(**p["model"], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    if a.method in ("mhr", "poly"):
        cfg = PolyConfig(task_type="SEQ_2_SEQ_LM", r=8, target_modules=TARGETS, n_tasks=p["n_tasks"],
                         n_skills=8, n_splits=8 if a.method == "mhr" else 1)
    elif a.method == "lora":
        cfg = LoraConfig(task_type="SEQ_2_SEQ_LM", r=8, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0)
    else:
        cfg = IA3Config(task_type="SEQ_2_SEQ_LM", target_modules=["k", "v", "wo"], feedforward_modules=["wo"])
    model = get_peft_model(model, cfg).eval()
    V, n = p["model"]["vocab_size"], a.new_tokens or p["tgt_len"]
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, V, (p["batch"], p["src_len"]), generator=g)
    task_ids = torch.randint(0, p["n_tasks"], (p["batch"],), generator=g)
    kw = dict(task_ids=task_ids) if a.method in ("mhr", "poly") else {}
    times, generated = [], 0
    with torch.inference_mode():
        for i in range(1 + a.steps):
            t0 = time.perf_counter()
            out = model.generate(input_ids=src, attention_mask=torch.ones_like(src), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, num_beams=1, use_cache=True, **kw)
            dt = time.perf_counter() - t0
            generated = out.shape[0] * (out.shape[1] - 1)
            if i >= 1:
                times.append(dt)
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch-peft", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "method": a.method, "preset": a.preset, "generate_batch": p["batch"],
                      "generate_new_tokens": generated, "generate_ms_median": round(med * 1e3, 2),
                      "generate_tokens_per_s": round(generated / med, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
