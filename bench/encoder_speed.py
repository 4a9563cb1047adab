#!/usr/bin/env python3
"""Encoding throughput of PyTorch transformers on the frozen encoder: the rows, batches and
padding of common/examples/bench_encoder.rs (64 per batch in file order, each padded to its
longest, at most 64 WordPiece tokens), tokenization before the clock. One JSON line."""
import argparse, json, time
import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True); ap.add_argument("--encoder", default="models/all-MiniLM-L6-v2")
ap.add_argument("--rows", type=int, default=2048); ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args(); torch.set_num_threads(a.threads)
with open(a.data, encoding="utf-8") as f:
    texts = [l.rstrip("\n").split("\t", 1)[-1] for l in f if l.strip()][:a.rows]
tok = AutoTokenizer.from_pretrained(a.encoder); enc = AutoModel.from_pretrained(a.encoder).eval()
batches = [tok(texts[i:i + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
           for i in range(0, len(texts), 64)]
with torch.inference_mode():
    enc(**batches[0])
    t0 = time.time()
    for b in batches:
        enc(**b).last_hidden_state
    secs = time.time() - t0
tokens = sum(int(b["attention_mask"].sum()) for b in batches)
print(json.dumps({"impl": "pytorch", "sentences": len(texts), "tokens": tokens, "threads": a.threads,
                  "seconds": round(secs, 3), "sentences_per_s": round(len(texts) / secs)}))
