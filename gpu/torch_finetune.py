#!/usr/bin/env python3
"""A copy of ../shared/anchors/torch_finetune.py (the project's PyTorch reference), unchanged,
for gpu/check.sh: the GPU machine has no ../shared.

Reference for fine-tuning the large model itself on small data: all-MiniLM-L6-v2 (every
weight trainable) under a classification head, the way a user of Hugging Face transformers
would do it with 500 labelled sentences.

Heads: `mean` (mean-pooled token vectors -> Linear, the usual sentence classifier) or `bilstm`
(the seed's BiLSTM(200) -> Linear on the token vectors, as torch_encoder_bilstm.py but with
the encoder trained too). AdamW with weight decay 0.01 on every parameter; two groups, encoder
lr 5e-5 and head lr 1e-3, both on one schedule: linear warm-up over the first 10% of the planned
steps (max-epochs x batches), then linear decay to 0. Batch 16, at most 64 WordPiece tokens,
dropout as config.json says (on in training); 10% of the rows are held out and the epoch with
the best validation accuracy (ties: lower loss) is tested once, at most --max-epochs (10).

usage: torch_finetune.py --model DIR --train T --test E [--n-train 500] [--head mean|bilstm]
       [--layers-trained K: only the top K encoder layers (and the head) train; 0 = frozen]
       [--device cuda] [--random-init: config.json and tokenizer.json suffice; for speed only]
"""
import argparse, json, random, time
import torch, torch.nn as nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, get_linear_schedule_with_warmup


def read(path):
    with open(path, encoding="utf-8") as f:
        return [tuple(l.rstrip("\n").split("\t", 1)) for l in f if l.strip()]


class Model(nn.Module):
    def __init__(s, enc, classes, head, hidden=200):
        super().__init__(); s.enc, s.head = enc, head
        d = enc.config.hidden_size
        if head == "bilstm":
            s.lstm = nn.LSTM(d, hidden, batch_first=True, bidirectional=True); s.fc = nn.Linear(2 * hidden, classes)
        else:
            s.fc = nn.Linear(d, classes)

    def forward(s, b):
        h = s.enc(**b).last_hidden_state; m = b["attention_mask"]
        if s.head == "bilstm":
            L = m.sum(1).cpu()
            p = nn.utils.rnn.pack_padded_sequence(h, L, batch_first=True, enforce_sorted=False)
            _, (hn, _) = s.lstm(p); return s.fc(torch.cat((hn[-2], hn[-1]), 1))
        mf = m.unsqueeze(-1).float()
        return s.fc((h * mf).sum(1) / mf.sum(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True); ap.add_argument("--train", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--n-train", type=int, default=500); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="mean", choices=["mean", "bilstm"]); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=10); ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--layers-trained", type=int, default=-1); ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--random-init", action="store_true", help="weights drawn from config.json alone (for speed checks)")
    a = ap.parse_args(); torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
    rows = read(a.train); rng = random.Random(a.seed); rng.shuffle(rows)
    rows = rows[:a.n_train] if a.n_train else rows
    cut = max(1, len(rows) // 10); val, train = rows[:cut], rows[cut:]
    labels = {l: i for i, l in enumerate(sorted({l for l, _ in train}))}
    test = [r for r in read(a.test) if r[0] in labels]
    tok = AutoTokenizer.from_pretrained(a.model)
    enc = AutoModel.from_config(AutoConfig.from_pretrained(a.model)) if a.random_init else AutoModel.from_pretrained(a.model)
    dev = torch.device(a.device); model = Model(enc, len(labels), a.head).to(dev)
    layers = enc.encoder.layer
    if a.layers_trained >= 0:
        for p in enc.parameters(): p.requires_grad = False
        for l in layers[len(layers) - a.layers_trained:]:
            for p in l.parameters(): p.requires_grad = True
    enc_params = [p for p in enc.parameters() if p.requires_grad]
    head_params = [p for n, p in model.named_parameters() if not n.startswith("enc.")]
    groups = [{"params": head_params, "lr": 1e-3}] + ([{"params": enc_params, "lr": a.lr}] if enc_params else [])
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    steps = a.max_epochs * ((len(train) + a.batch_size - 1) // a.batch_size)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
    lossf = nn.CrossEntropyLoss()

    def batch(rs):
        b = tok([t for _, t in rs], padding=True, truncation=True, max_length=64, return_tensors="pt")
        return b.to(dev), torch.tensor([labels[l] for l, _ in rs], device=dev)

    def predict(rs):
        model.eval(); out, loss = [], 0.0
        with torch.no_grad():
            for i in range(0, len(rs), 128):
                b, y = batch(rs[i:i + 128]); z = model(b)
                loss += lossf(z, y).item() * len(y); out += z.argmax(1).tolist()
        return out, loss / max(1, len(rs))

    best, state, best_ep, t0, seen = None, None, 0, time.time(), 0
    for ep in range(a.max_epochs):
        model.train(); idx = list(range(len(train))); random.Random(a.seed * 1000 + ep).shuffle(idx)
        for i in range(0, len(idx), a.batch_size):
            b, y = batch([train[k] for k in idx[i:i + a.batch_size]])
            opt.zero_grad(); lossf(model(b), y).backward(); opt.step(); sched.step(); seen += len(y)
        p, vl = predict(val)
        va = sum(int(q == labels[l]) for q, (l, _) in zip(p, val)) / len(val)
        if best is None or (va, -vl) > best:
            best, best_ep = (va, -vl), ep + 1
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_s = time.time() - t0
    model.load_state_dict(state)
    pred, _ = predict(test); ys = [labels[l] for l, _ in test]
    acc = sum(p == y for p, y in zip(pred, ys)) / len(ys); f1s = []
    for c in range(len(labels)):
        tp = sum(p == c == y for p, y in zip(pred, ys)); fp = sum(p == c != y for p, y in zip(pred, ys))
        fn = sum(y == c != p for p, y in zip(pred, ys)); f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    print(json.dumps({"head": a.head, "layers_trained": a.layers_trained, "n_train": a.n_train, "seed": a.seed,
                      "best_epoch": best_ep, "accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / len(f1s), 4),
                      "train_seconds": round(train_s, 1), "train_samples_per_s": round(seen / train_s, 1)}))


if __name__ == "__main__":
    main()
