"""Writes the `pytorch_model.bin` test checkpoints from the tiny t5-v1_1 fixture (run once; outputs committed).

    python make_bin.py /path/to/shared/fixtures/t5/t5-v1_1/model.safetensors

- single/pytorch_model.bin: f32, with `encoder.embed_tokens` / `decoder.embed_tokens` saved as views of
  `shared.weight` (one storage, three keys), as transformers' `save_pretrained` wrote T0-3B.
- bf16/pytorch_model.bin: every tensor in bf16.
- sharded/pytorch_model-0000{1,2}-of-00002.bin + pytorch_model.bin.index.json: the f32 tensors in two shards.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

out = Path(__file__).resolve().parent
state = load_file(sys.argv[1])

single = dict(state)
single["encoder.embed_tokens.weight"] = single["shared.weight"]
single["decoder.embed_tokens.weight"] = single["shared.weight"]
(out / "single").mkdir(exist_ok=True)
torch.save(single, out / "single" / "pytorch_model.bin")

(out / "bf16").mkdir(exist_ok=True)
torch.save({k: v.to(torch.bfloat16) for k, v in state.items()}, out / "bf16" / "pytorch_model.bin")

keys = sorted(state)
half = len(keys) // 2
weight_map = {}
(out / "sharded").mkdir(exist_ok=True)
for i, part in enumerate([keys[:half], keys[half:]]):
    shard = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save({k: state[k] for k in part}, out / "sharded" / shard)
    weight_map.update({k: shard for k in part})
total = sum(v.numel() * v.element_size() for v in state.values())
index = {"metadata": {"total_size": total}, "weight_map": weight_map}
(out / "sharded" / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
