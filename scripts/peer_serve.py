"""Load-test peer: the requests of `cargo xtask loadtest` through HF transformers T5 + peft, batched by the server's
--max-batch, greedy, on CPU, without HTTP (what a Python service would run per batch; its latency is not counted).

Reads the requests file the load test writes (JSON lines `{"task_id", "input"}`, in order), tokenizes each input with
the same tokenizer.json, pads each batch of `--batch` requests, and generates at most `--max-new-tokens` tokens per
row with the key/value cache. Prints one JSON line: requests, seconds, requests_per_s, generated_tokens_per_s.

Usage: python peer_serve.py --model DIR --adapter DIR --tokenizer tokenizer.json --requests FILE.jsonl
       --batch 32 --max-new-tokens 16 [--threads T]
"""
import argparse, json, time

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import T5ForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--max-new-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, default=0, help="0 = torch default")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = T5ForConditionalGeneration.from_pretrained(a.model)
    routed = False
    if a.adapter:
        model = PeftModel.from_pretrained(model, a.adapter)
        routed = model.peft_config["default"].peft_type == "POLY"
    model.eval()
    tokenizer = Tokenizer.from_file(a.tokenizer)
    with open(a.requests) as f:
        requests = [json.loads(line) for line in f if line.strip()]
    encoded = [(r["task_id"], tokenizer.encode(r["input"]).ids) for r in requests]
    generated = 0
    with torch.inference_mode():
        # One untimed batch: first-call costs (allocations) as the load test's warm-up.
        warm = encoded[: a.batch]
        for timed in (False, True):
            t0 = time.perf_counter()
            for start in range(0, len(encoded) if timed else len(warm), a.batch):
                chunk = encoded[start : start + a.batch]
                width = max(len(ids) for _, ids in chunk)
                ids = torch.tensor([ids + [0] * (width - len(ids)) for _, ids in chunk])
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for _, ids in chunk])
                kw = dict(task_ids=torch.tensor([t for t, _ in chunk])) if routed else {}
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.max_new_tokens,
                                     do_sample=False, num_beams=1, use_cache=True, **kw)
                if timed:
                    # Tokens up to and with eos, as the server counts them.
                    for row in out[:, 1:].tolist():
                        generated += row.index(1) + 1 if 1 in row else len(row)
            seconds = time.perf_counter() - t0
    print(json.dumps({"impl": "pytorch-peft", "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "requests": len(encoded), "seconds": seconds, "requests_per_s": len(encoded) / seconds,
                      "generated_tokens_per_s": generated / seconds}))


if __name__ == "__main__":
    main()
