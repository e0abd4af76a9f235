"""Peer benchmark on a GPU: the training step of `cargo xtask bench` (same model, adapter, batch, AdamW(lr 1e-3)) run
by PyTorch eager + transformers + peft on a CUDA device (or the CPU), timed between synchronisations.

The counterpart of `cargo xtask bench --device cuda|wgpu`: the peer's `tiny` and `small`, and the paper's T0 shapes
`base`, `large`, `xl` (scripts/peer_common.py). `--dtypes bf16` loads the base in bfloat16 with float32 adapters, as
the paper's 3B runs; `--gradient-checkpointing` is transformers' per-block recomputation (ours:
`--checkpoint-activations`). Loops over presets, methods, dtypes and TF32 settings in one process (one PyTorch
import) and prints one JSON line per run with the peer's keys plus `precision`, `tf32` (float32 matmuls on TF32
tensor cores; PyTorch's default is no), `peak_gpu_mb` (allocated) and `peak_gpu_reserved_mb` (the caching
allocator's, comparable to our `device_mem_reserved_mb`).

Usage: python peer_train_step_gpu.py [--presets tiny,small] [--methods mhr,lora] [--dtypes f32] [--tf32 off,on]
       [--batch N] [--gradient-checkpointing] [--device cuda] [--steps N] [--warmup N]
"""
import argparse, json, resource, statistics, time

import torch

from peer_common import PRESETS, adapted_model, batch

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}


def bench(method, preset, dtype, a, device):
    p = PRESETS[preset]
    model = adapted_model(method, preset, DTYPES[dtype])
    if a.gradient_checkpointing:
        model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = model.to(device)
    model.train()
    params = [x for x in model.parameters() if x.requires_grad]
    assert all(x.dtype == torch.float32 for x in params), "an adapter outside float32"
    opt = torch.optim.AdamW(params, lr=1e-3)
    src, tgt, kw = batch(method, preset, a.batch)
    src, tgt = src.to(device), tgt.to(device)
    kw = {k: v.to(device) for k, v in kw.items()}
    mask = torch.ones_like(src)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=src, attention_mask=mask, labels=tgt, **kw)
        out.loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    toks = src.shape[0] * (p["src_len"] + p["tgt_len"])
    mib = lambda b: round(b / 2**20, 1)
    return {"impl": "pytorch-peft", "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if cuda else "cpu", "threads": torch.get_num_threads(),
            "tf32": torch.backends.cuda.matmul.allow_tf32, "method": method, "preset": preset, "precision": dtype,
            "gradient_checkpointing": a.gradient_checkpointing, "batch": src.shape[0],
            "trainable_params": sum(x.numel() for x in params), "tokens_per_step": toks,
            "step_ms_median": round(med * 1e3, 2), "tokens_per_s": round(toks / med, 1), "loss": out.loss.item(),
            "peak_gpu_mb": mib(torch.cuda.max_memory_allocated(device)) if cuda else None,
            "peak_gpu_reserved_mb": mib(torch.cuda.max_memory_reserved(device)) if cuda else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--methods", default="mhr,lora")
    ap.add_argument("--dtypes", default="f32", help="f32 and/or bf16 (the base's; adapters stay float32)")
    ap.add_argument("--tf32", default="off,on", help="off: exact float32 matmuls (PyTorch's default); on: TF32 tensor cores")
    ap.add_argument("--batch", type=int, default=None, help="examples per step (default: the preset's)")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args()
    device = torch.device(a.device)
    for tf32 in a.tf32.split(","):
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
        for dtype in a.dtypes.split(","):
            for preset in a.presets.split(","):
                for method in a.methods.split(","):
                    try:
                        line = bench(method, preset, dtype, a, device)
                    except (ValueError, RuntimeError) as e:  # peft's Poly loses task_ids under checkpointing
                        line = {"impl": "pytorch-peft", "method": method, "preset": preset, "precision": dtype,
                                "gradient_checkpointing": a.gradient_checkpointing, "error": f"{type(e).__name__}: {e}"}
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
