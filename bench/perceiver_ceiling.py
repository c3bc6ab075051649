"""How much bad / medium / good information a frozen CLIP's image features hold on a dataset.

Run after `uir build demo` (it needs the medium images; well under a minute on 2 cores):
    python bench/perceiver_ceiling.py [--dataset demo] [--clip NAME] [--pretrained TAG|PATH]

Why: the perceiver scores ``logit_scale * cos(image feature, prompt feature)``, a linear readout
of CLIP's unit image features, so the best linear classifier on those same features, fitted
with the labels, bounds the val accuracy any learned prompt can reach. When that ceiling is at
chance, the CLIP (not prompt learning) is what to change. Hand-crafted quality statistics
(colour mean and spread, gradient and Laplacian energy at two scales) under the same
classifier are a reference that owes nothing to CLIP.

What is measured: ``--crops`` synchronised random crops of every training-split triplet (the
perceiver's own training views) and the centre crop of every val triplet (its scoring view), at
CLIP's input size unless ``--size``; features standardised on the training crops; multinomial
logistic regression (L-BFGS, L2 ``--l2``). Printed: train and val accuracy, the val accuracy's
Wilson 95% interval and one-sided binomial p against chance (1/3), and its ratio to chance.
Without ``--clip`` / ``--pretrained`` it is the dataset's own perceiver CLIP (random weights
from the quality seed, as the build draws them); the crops, and the weights of a random
``--clip``, come from ``--seed``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from uir.quality.folds import open_base
from uir.quality.job import load_job
from uir.quality.perceive import Triplets, load_bundle
from uir_models.metrics import against_chance
from uir_models.quality import QUALITY_CLASSES
from uir_models.quality.perceiver import QualityPerceiver, clip_input_size, load_clip
from uir_models.quality.prompt_training import center_crop, to_tensor, triplet_crop

CHANCE = 1 / len(QUALITY_CLASSES)
Views = tuple[list[np.ndarray], np.ndarray]


def quality_statistics(image: np.ndarray) -> np.ndarray:
    """Colour mean and spread, log gradient / Laplacian energy at full and half scale."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    pixels = image.reshape(-1, 3).astype(np.float32) / 255.0
    features = [pixels.mean(0), pixels.std(0), [np.log(grey.var() + 1e-6)]]
    for scale in (grey, cv2.resize(grey, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)):
        laplacian = cv2.Laplacian(scale, cv2.CV_32F)
        gx, gy = cv2.Sobel(scale, cv2.CV_32F, 1, 0), cv2.Sobel(scale, cv2.CV_32F, 0, 1)
        features.append(
            [
                np.log(laplacian.var() + 1e-6),
                np.log(np.abs(laplacian).mean() + 1e-6),
                np.log((gx**2 + gy**2).mean() + 1e-6),
            ]
        )
    return np.concatenate([np.ravel(f) for f in features])


def views(
    triplets: Triplets, indices: Sequence[int], size: int, crops: int, rng: np.random.Generator
) -> Views:
    """Images of every tier and their labels (bad 0, medium 1, good 2); ``crops=0``: centre."""
    images: list[np.ndarray] = []
    for index in indices:
        triplet = triplets[index]
        for _ in range(max(crops, 1)):
            if crops:
                images.extend(triplet_crop(triplet, size, rng))
            else:
                images.extend(center_crop(image, size) for image in triplet)
    labels = np.tile(np.arange(len(QUALITY_CLASSES)), len(images) // len(QUALITY_CLASSES))
    return images, labels


def linear_ceiling(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], l2: float
) -> dict[str, float | None]:
    """Fit the best linear three-way classifier on the training features; score both sets."""
    x_train, y_train = (torch.as_tensor(a) for a in train)
    x_val, y_val = (torch.as_tensor(a) for a in val)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    weight = torch.zeros(x_train.shape[1], len(QUALITY_CLASSES), requires_grad=True)
    bias = torch.zeros(len(QUALITY_CLASSES), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=500)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x_train @ weight + bias
        loss = F.cross_entropy(logits, y_train) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_right = int(((x_train @ weight + bias).argmax(1) == y_train).sum())
        val_right = int(((x_val @ weight + bias).argmax(1) == y_val).sum())
    return {
        "train_accuracy": round(train_right / len(y_train), 4),
        "val_accuracy": round(val_right / len(y_val), 4),
        "val_vs_chance": round(val_right / len(y_val) / CHANCE, 3),
        **against_chance(val_right, len(y_val), CHANCE),
    }


def featurise(
    images: list[np.ndarray], encode: Callable[[list[np.ndarray]], np.ndarray], batch: int = 96
) -> np.ndarray:
    return np.concatenate([encode(images[i : i + batch]) for i in range(0, len(images), batch)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="demo", help="a quality-labelled dataset of params")
    parser.add_argument("--clip", help="open_clip model name (default: the params' perceiver)")
    parser.add_argument("--pretrained", help="open_clip tag or checkpoint file (default: params)")
    parser.add_argument("--size", type=int, help="crop size (default: CLIP's input size)")
    parser.add_argument("--crops", type=int, default=4, help="random crops per train triplet")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    job = load_job(args.dataset)
    if args.clip or args.pretrained:
        torch.manual_seed(args.seed)
        bundle = load_clip(args.clip or job.quality.perceiver.clip_model, args.pretrained)
    else:
        bundle = load_bundle(job)  # the very CLIP the dataset's perceiver was trained over
    clip_name, pretrained = bundle.model_name, bundle.pretrained
    perceiver = QualityPerceiver(bundle).eval()
    size = args.size or clip_input_size(perceiver.clip)[0]

    reader = open_base(job)
    refs = reader.refs(job.quality.folds.salt)
    triplets = Triplets(job, reader, refs)
    train_ids = [i for i, ref in enumerate(refs) if ref.split == "train"]
    val_ids = [i for i, ref in enumerate(refs) if ref.split == "val"]
    if not train_ids or not val_ids:
        raise SystemExit(f"{args.dataset} needs train and val samples, has {len(refs)} in all")
    rng = np.random.default_rng(args.seed)
    train_images, train_labels = views(triplets, train_ids, size, args.crops, rng)
    val_images, val_labels = views(triplets, val_ids, size, 0, rng)

    @torch.inference_mode()
    def clip_features(images: list[np.ndarray]) -> np.ndarray:
        return perceiver.image_features(to_tensor(images, torch.device("cpu"))).numpy()

    def statistics(images: list[np.ndarray]) -> np.ndarray:
        return np.stack([quality_statistics(image) for image in images]).astype(np.float32)

    figures = {
        "dataset": args.dataset,
        "clip": {"model": clip_name, "pretrained": pretrained},
        "crop": size,
        "train_views": len(train_images),
        "val_views": len(val_images),
        "chance": round(CHANCE, 4),
    }
    for name, encode in (("clip_features", clip_features), ("quality_statistics", statistics)):
        figures[name] = linear_ceiling(
            (featurise(train_images, encode), train_labels),
            (featurise(val_images, encode), val_labels),
            args.l2,
        )
    print(
        f"{args.dataset}: {len(train_ids)} train / {len(val_ids)} val triplets, {size} px crops, "
        f"CLIP {clip_name} ({pretrained or 'random weights'}); chance {CHANCE:.3f}"
    )
    print("| linear readout of | train acc | val acc | val 95% interval | p vs chance | x chance |")
    print("|---|---|---|---|---|---|")
    for name in ("clip_features", "quality_statistics"):
        f = figures[name]
        print(
            f"| {name} | {f['train_accuracy']} | {f['val_accuracy']} | "
            f"{f['ci95_low']}-{f['ci95_high']} | {f['p_above_chance']} | {f['val_vs_chance']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
