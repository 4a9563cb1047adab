#!/usr/bin/env python3
"""A copy of ../shared/anchors/torch_bilstm.py (the project's PyTorch reference) with one
addition for gpu/check.sh: --device (e.g. cuda, where nn.LSTM runs cuDNN's fused kernels), and
the mean training loss of each epoch in the output. Everything else is the reference unchanged.

Reference: the seed's BiLSTM text classifier in PyTorch, written correctly
(batch_first, packed sequences so padding is ignored), used as the anchor the
project is measured against on the same data and the same machine.

Model (as in the seed): Embedding(V,100) -> BiLSTM(200) -> concat(h_fwd,h_bwd) -> Linear(400,C)
Training (as in the seed): Adam lr 1e-3, cross-entropy, batch 32.

single process : torch_bilstm.py --train T --test E [--n-train N] [--epochs 10] [--threads 2]
data parallel  : torchrun --nproc-per-node 2 torch_bilstm.py ... --threads 1   (gloo all-reduce)
Prints one JSON line: accuracy, macro-F1, train samples/s (median epoch), seconds.
"""
import argparse, collections, json, os, random, statistics, time
import torch, torch.nn as nn
import torch.distributed as dist

def read(path):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            lab, text = line.rstrip("\n").split("\t", 1)
            rows.append((lab, text.lower().split()))
    return rows

def subsample(rows, n, seed):
    if n is None or n >= len(rows):
        return rows
    rng = random.Random(seed); rows = rows[:]; rng.shuffle(rows)
    return rows[:n]

class BiLSTM(nn.Module):
    def __init__(s, vocab, classes, emb=100, hidden=200):
        super().__init__()
        s.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        s.lstm = nn.LSTM(emb, hidden, batch_first=True, bidirectional=True)
        s.fc = nn.Linear(2 * hidden, classes)
    def forward(s, x, lengths):
        e = s.embedding(x)
        packed = nn.utils.rnn.pack_padded_sequence(e, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = s.lstm(packed)
        return s.fc(torch.cat((h[-2], h[-1]), dim=1))

def encode(rows, vocab, labels, max_len):
    xs = [[vocab.get(w, 1) for w in toks[:max_len]] or [1] for _, toks in rows]
    ys = [labels[l] for l, _ in rows]
    return xs, ys

def batches(xs, ys, bs, order):
    for i in range(0, len(order), bs):
        idx = order[i:i + bs]
        L = torch.tensor([len(xs[j]) for j in idx])
        X = torch.zeros(len(idx), int(L.max()), dtype=torch.long)
        for r, j in enumerate(idx):
            X[r, :len(xs[j])] = torch.tensor(xs[j])
        yield X, L, torch.tensor([ys[j] for j in idx])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True); ap.add_argument("--test", required=True)
    ap.add_argument("--aug", help="extra training rows (label<TAB>text), e.g. EDA output")
    ap.add_argument("--n-train", type=int); ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0); ap.add_argument("--max-vocab", type=int, default=10000)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--early-stop", action="store_true",
                    help="hold out 10%% of the (subsampled) train rows, stop when val loss fails to improve 3 epochs")
    ap.add_argument("--max-epochs", type=int, default=50)
    ap.add_argument("--eda", type=int, default=0, help="EDA augmentations per train row (reference eda.py on EDA_PATH)")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    a = ap.parse_args()
    ddp = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    rank, world = 0, 1
    if ddp:
        dist.init_process_group("gloo"); rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
    train = subsample(read(a.train), a.n_train, a.seed)
    val = []
    if a.early_stop:
        cut = max(1, len(train) // 10); val, train = train[:cut], train[cut:]
    if a.aug:
        train = train + read(a.aug)
    if a.eda:
        import sys; sys.path.insert(0, os.environ["EDA_PATH"]); import eda; random.seed(a.seed)
        extra = []
        for lab, toks in train:
            for s2 in eda.eda(" ".join(toks), alpha_sr=a.alpha, alpha_ri=a.alpha, alpha_rs=a.alpha,
                              p_rd=a.alpha, num_aug=a.eda)[:-1]:
                extra.append((lab, s2.split()))
        train = train + extra
    test = read(a.test)
    counts = collections.Counter(w for _, t in train for w in t)
    vocab = {w: i + 2 for i, (w, _) in enumerate(counts.most_common(a.max_vocab - 2))}
    labels = {l: i for i, l in enumerate(sorted({l for l, _ in train}))}
    xs, ys = encode(train, vocab, labels, a.max_len)
    txs, tys = encode([r for r in test if r[0] in labels], vocab, labels, a.max_len)
    dev = torch.device(a.device)
    model = BiLSTM(a.max_vocab, len(labels)).to(dev)
    if ddp:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3); lossf = nn.CrossEntropyLoss()
    vxs, vys = encode([r for r in val if r[0] in labels], vocab, labels, a.max_len)
    best, bad, best_state = float("inf"), 0, None
    rates, t0, losses = [], time.time(), []
    for ep in range(a.max_epochs if a.early_stop else a.epochs):
        order = list(range(len(xs))); random.Random(a.seed * 1000 + ep).shuffle(order)
        order = order[rank::world]; model.train(); ts = time.time(); n = 0; total = 0.0
        for X, L, Y in batches(xs, ys, a.batch // world, order):
            X, Y = X.to(dev, non_blocking=True), Y.to(dev, non_blocking=True)
            opt.zero_grad(); loss = lossf(model(X, L), Y); loss.backward(); opt.step(); n += len(Y)
            total += loss.detach() * len(Y)
        losses.append(round(float(total) / n, 4))
        rates.append(n * world / (time.time() - ts))
        if a.early_stop:
            model.eval(); vl = 0.0
            with torch.no_grad():
                for X, L, Y in batches(vxs, vys, 256, list(range(len(vxs)))):
                    vl += lossf(model(X.to(dev), L), Y.to(dev)).item() * len(Y)
            if vl < best - 1e-6:
                best, bad = vl, 0; best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= 3:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    train_s = time.time() - t0
    model.eval(); pred = []
    with torch.no_grad():
        for X, L, _ in batches(txs, tys, 256, list(range(len(txs)))):
            pred += model(X.to(dev), L).argmax(1).tolist()
    acc = sum(p == y for p, y in zip(pred, tys)) / len(tys)
    f1s = []
    for c in range(len(labels)):
        tp = sum(p == c and y == c for p, y in zip(pred, tys))
        fp = sum(p == c and y != c for p, y in zip(pred, tys)); fn = sum(p != c and y == c for p, y in zip(pred, tys))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    if rank == 0:
        print(json.dumps({"train_rows": len(xs), "world": world, "threads": a.threads, "epochs": len(rates), "n_train": a.n_train, "eda": a.eda, "seed": a.seed,
                          "accuracy": round(acc, 4), "macro_f1": round(sum(f1s) / len(f1s), 4),
                          "samples_per_s_median": round(statistics.median(rates), 1),
                          "train_seconds": round(train_s, 1), "device": a.device, "epoch_losses": losses}))
    if ddp:
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
