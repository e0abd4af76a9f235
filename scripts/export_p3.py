#!/usr/bin/env python3
"""Writes the T0 training mixture in the folder layout that `cargo xtask reproduce --preset paper-t0 --p3 DIR`
reads (mhr_data::P3Dir): DIR/mixture.json lists every (dataset, promptsource template) subset, and
DIR/<subset>/train.jsonl holds its prompted rows with P3's field names (inputs_pretokenized, targets_pretokenized).

The subsets are P3's (bigscience/P3 on the Hugging Face Hub) for the T0 training datasets (the "BASE" rows of
T0's datasets.csv, PAPER.md §2.2), train split, without the `_score_eval` variants (rank-classification copies made
for evaluation). Needs `pip install datasets` and network access; run once, then the Rust side is offline.

Usage: scripts/export_p3.py DIR [--max-rows N]
"""
import argparse
import json
import os
import sys

# The T0 training datasets as HF `name[/config]`; P3 names a subset `<name>_<config>_<template>` with "/" → "_".
T0_TRAIN_DATASETS = [
    "commonsense_qa", "dream", "quail", "quartz", "social_i_qa", "wiqa", "cosmos_qa", "qasc", "quarel", "sciq",
    "wiki_hop/original",
    "adversarial_qa/dbidaf", "adversarial_qa/dbert", "adversarial_qa/droberta", "quoref", "ropes",
    "duorc/SelfRC", "duorc/ParaphraseRC",
    "kilt_tasks/hotpotqa", "wiki_qa",
    "common_gen", "wiki_bio",
    "amazon_polarity", "app_reviews", "imdb", "rotten_tomatoes", "yelp_review_full",
    "cnn_dailymail/3.0.0", "gigaword", "multi_news", "samsum", "xsum",
    "ag_news", "dbpedia_14", "trec",
    "glue/mrpc", "glue/qqp", "paws/labeled_final",
]


def dataset_of(subset):
    """The T0 training dataset a P3 subset renders (the longest matching prefix), or None."""
    matches = [d for d in T0_TRAIN_DATASETS if subset.startswith(d.replace("/", "_") + "_")]
    return max(matches, key=len) if matches else None


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--max-rows", type=int, default=None, help="keep at most N rows per subset (a quick sample)")
    args = ap.parse_args()
    from datasets import get_dataset_config_names, load_dataset

    os.makedirs(args.out, exist_ok=True)
    manifest = []
    for subset in sorted(get_dataset_config_names("bigscience/P3")):
        dataset = dataset_of(subset)
        if dataset is None or subset.endswith("_score_eval"):
            continue
        try:
            rows = load_dataset("bigscience/P3", subset, split="train")
        except ValueError:  # a subset without a train split
            continue
        if args.max_rows is not None:
            rows = rows.select(range(min(args.max_rows, len(rows))))
        folder = os.path.join(args.out, subset)
        os.makedirs(folder, exist_ok=True)
        lines = (
            json.dumps({"inputs_pretokenized": r["inputs_pretokenized"],
                        "targets_pretokenized": r["targets_pretokenized"]}, ensure_ascii=False)
            for r in rows
        )
        write_atomic(os.path.join(folder, "train.jsonl"), "\n".join(lines) + "\n")
        template = subset[len(dataset.replace("/", "_")) + 1:]
        manifest.append({"subset": subset, "dataset": dataset, "template": template})
        print(f"{subset}: {len(rows)} rows", file=sys.stderr)
    write_atomic(os.path.join(args.out, "mixture.json"), json.dumps(manifest, indent=1) + "\n")
    print(f"{len(manifest)} subsets of {len({m['dataset'] for m in manifest})} datasets in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
