"""Train the small Fashion-MNIST classifier behind ``proxy_fid`` (fdistill/metrics/proxy.py) on CPU.

    python scripts/train_proxy_classifier.py [--epochs 3] [--out checkpoints/fmnist_classifier]

Data: the 60k training split from the data loader (images in [-1, 1], 28x28 zero-padded to 32x32 with the
background value -1), augmented with random horizontal flips and random shifts of up to 2 pixels
(background-filled); evaluation on the 10k test split. Adam (lr 2e-3, weight decay 1e-4), batch 128,
one-cycle cosine learning-rate schedule, label smoothing 0.05, fixed seed. Writes ``model.safetensors``
(architecture and results in its metadata) and ``metrics.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fdistill.data.fashion_mnist import load_fashion_mnist
from fdistill.metrics.proxy import FMNISTClassifier, save_proxy_classifier


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()  # one shift per batch keeps it cheap
    return padded[:, :, dy : dy + 32, dx : dx + 32]


@torch.no_grad()
def accuracy(model: FMNISTClassifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    correct = sum(
        int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(batch), labels.split(batch), strict=True)
    )
    return correct / len(labels)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="passes over the 60k training images (default: 3)")
    p.add_argument("--batch-size", type=int, default=128, help="default: 128")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: 2e-3)")
    p.add_argument("--seed", type=int, default=0, help="default: 0")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: 0 = torch's choice)")
    p.add_argument("--out", default="checkpoints/fmnist_classifier", help="default: checkpoints/fmnist_classifier")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    model = FMNISTClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        running = 0.0
        for i, idx in enumerate(perm.split(args.batch_size)):
            x, y = augment(train.images[idx], gen), train.labels[idx]
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item()
            if (i + 1) % 100 == 0:
                print(f"epoch {epoch + 1} step {i + 1}/{steps_per_epoch} loss {running / 100:.4f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
                running = 0.0
        acc = accuracy(model, test.images, test.labels)
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    train_seconds = time.perf_counter() - t0
    test_acc = accuracy(model, test.images, test.labels)
    train_acc = accuracy(model, train.images[:10000], train.labels[:10000])
    results = {
        "test_accuracy": test_acc,
        "train_accuracy_first10k": train_acc,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    save_proxy_classifier(model.eval(), out / "model.safetensors", extra={"results": results})
    (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
