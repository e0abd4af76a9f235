"""Peer benchmark: greedy generation throughput of HF transformers T5 + peft (Poly/MHR/LoRA/(IA)^3) on CPU.

The counterpart of `cargo xtask bench --what generate`: the model, adapter and batch come from
../shared/peer/bench_train_step.py's presets (same dims, batch, source length, task ids); every row generates
exactly the preset's target length (eos suppressed until then), with the key/value cache, in eval mode.
Prints one JSON line with the keys of our bench: generate_batch, generate_new_tokens, generate_ms_median,
generate_tokens_per_s, peak_rss_mb.

Usage: python peer_generate.py [--method mhr|poly|lora|ia3] [--preset tiny|small] [--steps N] [--threads T]
"""
import argparse, json, resource, statistics, time

import torch

from peer_common import PRESETS, adapted_model, batch


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
    p = PRESETS[a.preset]
    model = adapted_model(a.method, a.preset).eval()
    src, _, kw = batch(a.method, a.preset)
    n = a.new_tokens or p["tgt_len"]
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
