"""Evaluation accumulators for trained models: restoration scores and degradation classification.

Pure bookkeeping: no Prefect, no DVC and no paths except the explicit writers at the end, so a
flow, a script and the tests share one definition of every number.

* Scores are kept per sample (key, labels, values), not as running sums: per-type tables, CSV
  rows and merges then come from the same records. Under DDP every rank fills its own
  accumulator; ``state()`` is plain lists and dicts for ``all_gather_object`` and ``merge`` on
  rank 0 gives the summary of one accumulator that saw every sample. Keys must be unique: the
  evaluation loaders read each sample once across ranks, so a repeated key means something was
  counted twice.
* Means are over finite values only (the quality report's convention): identical images have
  an infinite PSNR, which would otherwise swamp the mean. Sums use ``math.fsum``, so a mean
  does not depend on the order in which ranks saw or merged the samples. Summaries round to 4
  decimals.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from uir.dataset.atomic import write_text_atomic
from uir_models.metrics import against_chance, psnr_torch, ssim_torch

DECIMALS = 4
IDENTITY = "_identity"
"""Suffix of the scores of the LQ input itself: the baseline a restorer has to beat."""
BASE_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y")
LPIPS = "lpips"

LpipsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Distance per image (shape [B]) of two [0, 1] NCHW batches: ``metrics.LpipsMetric``."""
State = dict[str, Any]


def _mean(values: Iterable[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return round(math.fsum(finite) / len(finite), DECIMALS) if finite else None


def _check_batch(size: int, **lists: Sequence[Any]) -> None:
    for name, values in lists.items():
        if len(values) != size:
            raise ValueError(f"batch of {size} samples but {len(values)} {name}")


def _claim(seen: set[str], key: str) -> None:
    """Record ``key``, refusing one already counted (a merged state twice, a repeated sample)."""
    if key in seen:
        raise ValueError(f"sample {key} is already counted")
    seen.add(key)


def _unique(labels: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(labels))


def _copy_restoration(sample: State) -> State:
    """A copy sharing no lists with ``sample``: states and accumulators stay independent."""
    return {"key": sample["key"], "types": list(sample["types"]), "scores": dict(sample["scores"])}


def _copy_classification(sample: State) -> State:
    return {
        "key": sample["key"],
        "labels": list(sample["labels"]),
        "predicted": sample["predicted"],
    }


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border else x


class RestorationScores:
    """PSNR/SSIM (RGB and Y) and optionally LPIPS of restored images and of their LQ inputs.

    ``crop_border`` applies to every metric, LPIPS included, so all of them judge the same
    pixels. ``lpips`` is ``metrics.load_lpips()``'s module, or ``None`` where it is unavailable
    (the caller reports ``MetricUnavailableError``'s message); LPIPS columns appear only with it.
    """

    def __init__(self, crop_border: int = 0, lpips: LpipsFn | None = None) -> None:
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        self.crop_border = crop_border
        self.lpips = lpips
        base = [*BASE_METRICS, LPIPS] if lpips is not None else list(BASE_METRICS)
        self.metrics: tuple[str, ...] = (*base, *(name + IDENTITY for name in base), "gain")
        self._samples: list[State] = []
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._samples)

    def _score(self, x: torch.Tensor, hq: torch.Tensor) -> dict[str, list[float]]:
        border = self.crop_border
        scores = {
            "psnr": psnr_torch(x, hq, border),
            "ssim": ssim_torch(x, hq, border),
            "psnr_y": psnr_torch(x, hq, border, y_channel=True),
            "ssim_y": ssim_torch(x, hq, border, y_channel=True),
        }
        if self.lpips is not None:
            scores[LPIPS] = self.lpips(_crop(x, border).float(), _crop(hq, border).float())
        return {name: value.flatten().tolist() for name, value in scores.items()}

    @torch.no_grad()
    def add(
        self,
        pred: torch.Tensor,
        lq: torch.Tensor,
        hq: torch.Tensor,
        types: Sequence[Sequence[str]],
        keys: Sequence[str],
    ) -> None:
        """Score one batch of [0, 1] NCHW RGB tensors of one size (LQ upsampled to HQ's size).

        ``pred`` is scored as given: clamp it (and round to 1/255 to match saved PNGs) first.
        """
        if not pred.shape == lq.shape == hq.shape:
            raise ValueError(
                f"pred {tuple(pred.shape)}, lq {tuple(lq.shape)} and hq {tuple(hq.shape)} "
                "must have one shape"
            )
        _check_batch(len(pred), types=types, keys=keys)
        restored, identity = self._score(pred, hq), self._score(lq, hq)
        for i, key in enumerate(keys):
            _claim(self._keys, key)
            scores = {name: values[i] for name, values in restored.items()}
            scores.update({name + IDENTITY: values[i] for name, values in identity.items()})
            scores["gain"] = scores["psnr"] - scores["psnr" + IDENTITY]
            self._samples.append({"key": key, "types": _unique(types[i]), "scores": scores})

    def state(self) -> State:
        """Everything a summary needs, picklable, for ``all_gather_object``."""
        return {
            "crop_border": self.crop_border,
            "metrics": list(self.metrics),
            "samples": [_copy_restoration(s) for s in self._samples],
        }

    def merge(self, states: Iterable[State]) -> None:
        """Add other accumulators' samples (e.g. every rank's, into a fresh one on rank 0)."""
        for state in states:
            if state["crop_border"] != self.crop_border or state["metrics"] != list(self.metrics):
                raise ValueError(
                    f"cannot merge scores of crop_border {state['crop_border']} and metrics "
                    f"{state['metrics']} into crop_border {self.crop_border} and metrics "
                    f"{list(self.metrics)}"
                )
            for sample in state["samples"]:
                _claim(self._keys, sample["key"])
                self._samples.append(_copy_restoration(sample))

    def _means(self, samples: Sequence[State]) -> dict[str, Any]:
        means: dict[str, Any] = {"count": len(samples)}
        for name in self.metrics:
            if name != "gain":
                means[name] = _mean(s["scores"][name] for s in samples)
        psnr, identity = means["psnr"], means["psnr" + IDENTITY]
        # the difference of the means, so the table reads psnr - psnr_identity = gain
        means["gain"] = (
            None if psnr is None or identity is None else round(psnr - identity, DECIMALS)
        )
        return means

    def summary(self) -> dict[str, Any]:
        """Overall means and a ``per_type`` table: a sample counts for each of its types."""
        types = sorted({t for s in self._samples for t in s["types"]})
        return {
            **self._means(self._samples),
            "crop_border": self.crop_border,
            "per_type": {
                name: self._means([s for s in self._samples if name in s["types"]])
                for name in types
            },
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per sample, sorted by key (the same file whatever the world size)."""
        return [
            {
                "key": s["key"],
                "types": "+".join(s["types"]),
                **{name: round(s["scores"][name], DECIMALS) for name in self.metrics},
            }
            for s in sorted(self._samples, key=lambda s: s["key"])
        ]


class ClassificationScores:
    """Top-1 degradation classification (the DA-CLIP controller) against multi-label truth.

    A prediction is correct when its class is among the sample's labels. A sample with several
    labels counts in the row of each of them, in the per-class top-1 (recall) and in the
    confusion matrix alike; hence per-class top-1 can exceed the confusion matrix's diagonal
    share for such samples (predicting ``rain`` for rain+haze is right for the ``haze`` row
    too). Labels outside ``classes`` are ignored; a sample with none of ``classes`` is counted
    as ``unknown`` and left out of every figure.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct and non-empty, got {list(classes)}")
        self.classes = tuple(classes)
        self._index = {name: i for i, name in enumerate(self.classes)}
        self._samples: list[State] = []
        self._unknown: list[str] = []
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._samples)

    def add(
        self, probs: torch.Tensor, labels: Sequence[Sequence[str]], keys: Sequence[str]
    ) -> None:
        """``probs``: (B, K) scores in ``classes`` order (probabilities or logits: the argmax
        is the prediction)."""
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ValueError(
                f"expected probabilities of shape (B, {len(self.classes)}), got "
                f"{tuple(probs.shape)}"
            )
        _check_batch(len(probs), labels=labels, keys=keys)
        predicted = probs.detach().argmax(dim=1).tolist()
        for key, names, guess in zip(keys, labels, predicted, strict=True):
            _claim(self._keys, key)
            truth = sorted({self._index[n] for n in names if n in self._index})
            if truth:
                self._samples.append({"key": key, "labels": truth, "predicted": guess})
            else:
                self._unknown.append(key)

    def state(self) -> State:
        """Everything a summary needs, picklable, for ``all_gather_object``."""
        return {
            "classes": list(self.classes),
            "samples": [_copy_classification(s) for s in self._samples],
            "unknown": list(self._unknown),
        }

    def merge(self, states: Iterable[State]) -> None:
        """Add other accumulators' samples (e.g. every rank's, into a fresh one on rank 0)."""
        for state in states:
            if state["classes"] != list(self.classes):
                raise ValueError(
                    f"cannot merge scores over classes {state['classes']} into {list(self.classes)}"
                )
            for sample in state["samples"]:
                _claim(self._keys, sample["key"])
                self._samples.append(_copy_classification(sample))
            for key in state["unknown"]:
                _claim(self._keys, key)
                self._unknown.append(key)

    def confusion(self) -> list[list[int]]:
        """K x K counts: row = true class, column = predicted; one count per true label."""
        matrix = [[0] * len(self.classes) for _ in self.classes]
        for s in self._samples:
            for truth in s["labels"]:
                matrix[truth][s["predicted"]] += 1
        return matrix

    def confusion_rows(self) -> list[tuple[str, str]]:
        """(actual, predicted) per counted sample-label, sorted by key: DVC's confusion input."""
        return [
            (self.classes[truth], self.classes[s["predicted"]])
            for s in sorted(self._samples, key=lambda s: s["key"])
            for truth in s["labels"]
        ]

    def summary(self) -> dict[str, Any]:
        """Overall and per-class top-1 with their Wilson 95% intervals and p-values against
        chance (1/K), the confusion matrix, the unknown count."""
        chance = 1 / len(self.classes)

        def top1(samples: list[State]) -> dict[str, Any]:
            correct = sum(s["predicted"] in s["labels"] for s in samples)
            return {
                "top1": round(correct / len(samples), DECIMALS) if samples else None,
                **against_chance(correct, len(samples), chance),
            }

        per_class = {}
        for i, name in enumerate(self.classes):
            group = [s for s in self._samples if i in s["labels"]]
            per_class[name] = {"support": len(group), **top1(group)}
        return {
            "count": len(self._samples),
            "unknown": len(self._unknown),
            **top1(self._samples),
            "chance": round(chance, DECIMALS),
            "classes": list(self.classes),
            "per_class": per_class,
            "confusion": self.confusion(),
        }


def keyed_rows(table: Mapping[str, Mapping[str, Any]], key: str) -> list[dict[str, Any]]:
    """A summary's ``per_type``/``per_class`` mapping as rows, its keys in column ``key``."""
    return [{key: name, **values} for name, values in table.items()]


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of ``rows`` in first-seen order: the first row's order, then additions."""
    return list(dict.fromkeys(name for row in rows for name in row))


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def write_confusion_csv(path: Path, scores: ClassificationScores) -> None:
    """``actual,predicted`` per counted sample-label: DVC's ``confusion`` plot template input
    (as the quality report's ``confusion.csv``)."""
    _write(path, _csv_text(["actual", "predicted"], scores.confusion_rows()))


def write_table_csv(
    path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> None:
    """``rows`` under a header (``columns``, else every key in first-seen order); a missing
    value or ``None`` is an empty cell. Written atomically: DVC never reads half a file."""
    names = list(columns) if columns is not None else _columns(rows)
    values = ([("" if row.get(n) is None else row[n]) for n in names] for row in rows)
    _write(path, _csv_text(names, values) if names else "")


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        # p-values far below the 4th decimal keep their magnitude
        tiny = 0 < abs(value) < 10**-DECIMALS
        return f"{value:.1e}" if tiny else f"{value:.{DECIMALS}f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table (for a Prefect artifact); floats to 4 decimals, missing as ``n/a``."""
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
        *("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"
