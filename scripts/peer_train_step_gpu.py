"""Peer benchmark on a GPU: the training step of ../shared/peer/bench_train_step.py (same model, adapter, batch,
AdamW) run by PyTorch eager on a CUDA device, timed between CUDA synchronisations.

The counterpart of `cargo xtask bench --device cuda|wgpu`. Loops over presets and methods in one process (one
PyTorch import) and prints one JSON line per run with the peer's keys plus `peak_gpu_mb` and `tf32` (whether float32
matmuls may use TF32 tensor cores; PyTorch's default is no).

Usage: python peer_train_step_gpu.py [--presets tiny,small] [--methods mhr,lora] [--tf32 off,on] [--steps N] [--warmup N]
"""
import argparse, json, resource, statistics, time

import torch

from peer_common import PRESETS, adapted_model, batch


def bench(method, preset, steps, warmup, device):
    p = PRESETS[preset]
    model = adapted_model(method, preset).to(device)
    model.train()
    trainable = sum(x.numel() for x in model.parameters() if x.requires_grad)
    opt = torch.optim.AdamW([x for x in model.parameters() if x.requires_grad], lr=1e-3)
    src, tgt, kw = batch(method, preset)
    src, tgt = src.to(device), tgt.to(device)
    kw = {k: v.to(device) for k, v in kw.items()}
    mask = torch.ones_like(src)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = model(input_ids=src, attention_mask=mask, labels=tgt, **kw)
        out.loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    toks = p["batch"] * (p["src_len"] + p["tgt_len"])
    return {"impl": "pytorch-peft", "torch": torch.__version__, "device": torch.cuda.get_device_name(device),
            "tf32": torch.backends.cuda.matmul.allow_tf32, "method": method, "preset": preset,
            "trainable_params": trainable, "tokens_per_step": toks, "step_ms_median": round(med * 1e3, 2),
            "tokens_per_s": round(toks / med, 1), "loss": out.loss.item(),
            "peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--methods", default="mhr,lora")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--tf32", default="off,on", help="off: exact float32 matmuls (PyTorch's default); on: TF32 tensor cores")
    a = ap.parse_args()
    device = torch.device("cuda")
    for tf32 in a.tf32.split(","):
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
        for preset in a.presets.split(","):
            for method in a.methods.split(","):
                print(json.dumps(bench(method, preset, a.steps, a.warmup, device)), flush=True)


if __name__ == "__main__":
    main()
