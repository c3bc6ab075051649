"""Evaluation accumulators: hand-computed restoration scores, per-type tables, classification
top-1 and confusion, DDP-style merges, and the CSV/Markdown writers."""

from __future__ import annotations

import csv
import math
import pickle
from collections import Counter

import pytest
import torch

from uir_models.evaluation import (
    ClassificationScores,
    RestorationScores,
    keyed_rows,
    markdown_table,
    write_confusion_csv,
    write_table_csv,
)
from uir_models.metrics import against_chance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

Y_SUM = 65.481 + 128.553 + 24.966  # a grey offset d moves Y (0-255 scale) by d * Y_SUM


def _psnr_of_offset(d: float, scale: float = 255.0) -> float:
    return 20 * math.log10(255.0 / (d * scale))


def _flat(*values: float, size: int = 16) -> torch.Tensor:
    """One constant grey image per value, float64 so offsets are exact enough for 1e-4 dB."""
    return torch.stack([torch.full((3, size, size), v, dtype=torch.float64) for v in values])


def _ssim_of_constants(a: float, b: float) -> float:
    """SSIM of two constant images: variances and covariance are zero."""
    x, y, c1 = a * 255, b * 255, (0.01 * 255) ** 2
    return (2 * x * y + c1) / (x * x + y * y + c1)


def _y(grey: float) -> float:
    """BT.601 Y (16-235) of a grey, back on the [0, 1] scale."""
    return (grey * Y_SUM + 16) / 255


def _random_batch(n: int, seed: int, size: int = 16) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hq = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    lq = (hq + 0.2 * torch.randn(hq.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    pred = (hq + 0.05 * torch.randn(hq.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred, lq, hq


# --- restoration --------------------------------------------------------------------------


def test_constant_offsets_give_hand_computed_scores_and_gain():
    scores = RestorationScores()
    hq = _flat(0.5)
    scores.add(hq + 0.1, hq + 0.2, hq, [["noise"]], ["a"])
    s = scores.summary()
    assert s["count"] == 1
    assert s["psnr"] == pytest.approx(20.0, abs=1e-4)  # mse = 25.5^2: 20 log10(255 / 25.5)
    assert s["psnr_identity"] == pytest.approx(_psnr_of_offset(0.2), abs=1e-4)  # 13.9794 dB
    assert s["gain"] == pytest.approx(20 * math.log10(2), abs=2e-4)  # halving the error: 6.02 dB
    assert s["psnr_y"] == pytest.approx(_psnr_of_offset(0.1, Y_SUM), abs=1e-4)
    assert s["psnr_y_identity"] == pytest.approx(_psnr_of_offset(0.2, Y_SUM), abs=1e-4)
    assert s["ssim"] == pytest.approx(_ssim_of_constants(0.6, 0.5), abs=1e-4)
    assert s["ssim_identity"] == pytest.approx(_ssim_of_constants(0.7, 0.5), abs=1e-4)
    assert s["ssim_y"] == pytest.approx(_ssim_of_constants(_y(0.6), _y(0.5)), abs=1e-4)
    assert "lpips" not in s and "lpips_identity" not in s
    assert s["per_type"]["noise"] == {
        k: v for k, v in s.items() if k not in ("per_type", "crop_border")
    }


def test_restorer_equal_to_its_input_gains_nothing():
    scores = RestorationScores()
    _, lq, hq = _random_batch(2, seed=3)
    scores.add(lq, lq, hq, [["rain"], ["rain"]], ["a", "b"])
    s = scores.summary()
    assert s["gain"] == 0.0
    assert s["psnr"] == s["psnr_identity"] and s["ssim_y"] == s["ssim_y_identity"]
    assert all(row["gain"] == 0.0 for row in scores.rows())


def test_multi_label_samples_count_in_each_of_their_types():
    scores = RestorationScores()
    hq = _flat(0.4, 0.4, 0.4)
    offsets = torch.tensor([0.1, 0.01, 0.001], dtype=torch.float64).view(3, 1, 1, 1)
    scores.add(hq + offsets, hq + 0.2, hq, [["rain"], ["rain", "haze"], ["haze"]], ["a", "b", "c"])
    s = scores.summary()
    assert s["count"] == 3
    assert s["psnr"] == pytest.approx(40.0, abs=1e-4)  # 20, 40 and 60 dB
    assert sorted(s["per_type"]) == ["haze", "rain"]
    assert s["per_type"]["rain"]["count"] == 2
    assert s["per_type"]["rain"]["psnr"] == pytest.approx(30.0, abs=1e-4)
    assert s["per_type"]["haze"]["count"] == 2
    assert s["per_type"]["haze"]["psnr"] == pytest.approx(50.0, abs=1e-4)
    assert s["per_type"]["haze"]["gain"] == pytest.approx(50.0 - _psnr_of_offset(0.2), abs=2e-4)
    assert [r["types"] for r in scores.rows()] == ["rain", "rain+haze", "haze"]


def test_crop_border_ignores_the_border_and_infinite_psnr_is_left_out_of_means():
    hq = _flat(0.5, 0.5)
    pred = hq + 0.1
    pred[:, :, :2, :] = 0.0  # a ruined 2-pixel border
    pred[:, :, -2:, :] = 0.0
    pred[:, :, :, :2] = 0.0
    pred[:, :, :, -2:] = 0.0
    pred[1] = hq[1]  # the second image restored perfectly: PSNR inf
    cropped, full = RestorationScores(crop_border=2), RestorationScores()
    for scores in (cropped, full):
        scores.add(pred, hq + 0.2, hq, [["a"], ["a"]], ["k0", "k1"])
    assert cropped.summary()["psnr"] == pytest.approx(20.0, abs=1e-4)  # the finite one only
    assert full.summary()["psnr"] < 15
    assert cropped.summary()["count"] == 2
    assert [r["psnr"] for r in cropped.rows()][1] == math.inf
    with pytest.raises(ValueError, match="crop_border"):
        RestorationScores(crop_border=-1)


def test_lpips_uses_the_given_module_on_cropped_images():
    calls: list[tuple[tuple[int, ...], torch.dtype]] = []

    def fake_lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append((tuple(pred.shape), pred.dtype))
        return (pred - target).abs().mean(dim=(1, 2, 3))  # the offset itself, for a flat image

    scores = RestorationScores(crop_border=1, lpips=fake_lpips)
    hq = _flat(0.3, 0.3)
    scores.add(
        hq + torch.tensor([0.1, 0.3]).double().view(2, 1, 1, 1),
        hq + 0.4,
        hq,
        [["x"], ["y"]],
        ["a", "b"],
    )
    s = scores.summary()
    assert s["lpips"] == pytest.approx(0.2, abs=1e-4)
    assert s["lpips_identity"] == pytest.approx(0.4, abs=1e-4)
    assert s["per_type"]["x"]["lpips"] == pytest.approx(0.1, abs=1e-4)
    assert calls == [((2, 3, 14, 14), torch.float32)] * 2  # restored, then identity
    assert list(scores.rows()[0])[2:] == [
        "psnr",
        "ssim",
        "psnr_y",
        "ssim_y",
        "lpips",
        "psnr_identity",
        "ssim_identity",
        "psnr_y_identity",
        "ssim_y_identity",
        "lpips_identity",
        "gain",
    ]


def test_merged_rank_states_equal_one_accumulator_that_saw_everything():
    batches = [
        (*_random_batch(2, seed=i), [["rain"], ["rain", "haze"][: 1 + i % 2]], [f"s{i}a", f"s{i}b"])
        for i in range(5)
    ]
    single = RestorationScores(crop_border=1)
    ranks = [RestorationScores(crop_border=1) for _ in range(3)]  # rank 2 gets no batch
    for i, batch in enumerate(batches):
        single.add(*batch)
        ranks[i % 2].add(*batch)
    states = [pickle.loads(pickle.dumps(rank.state())) for rank in reversed(ranks)]
    merged = RestorationScores(crop_border=1)
    merged.merge(states)
    assert merged.summary() == single.summary()
    assert merged.rows() == single.rows()
    assert merged.summary()["count"] == 10
    with pytest.raises(ValueError, match="already counted"):
        merged.merge([ranks[0].state()])
    with pytest.raises(ValueError, match="cannot merge"):
        RestorationScores(crop_border=0).merge([ranks[0].state()])
    with pytest.raises(ValueError, match="cannot merge"):  # LPIPS on one side only
        RestorationScores(crop_border=1, lpips=lambda a, b: a.mean((1, 2, 3))).merge(states)


def test_state_is_a_copy():
    scores = RestorationScores()
    scores.add(*_random_batch(1, seed=0), [["rain"]], ["a"])
    state = scores.state()
    state["samples"][0]["types"].append("haze")
    state["samples"][0]["scores"]["psnr"] = 0.0
    assert scores.rows()[0]["types"] == "rain" and scores.rows()[0]["psnr"] > 0


def test_restoration_rejects_inconsistent_batches():
    scores = RestorationScores()
    pred, lq, hq = _random_batch(2, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        scores.add(pred[:1], lq, hq, [["a"], ["a"]], ["a", "b"])
    with pytest.raises(ValueError, match="1 keys"):
        scores.add(pred, lq, hq, [["a"], ["a"]], ["a"])
    with pytest.raises(ValueError, match="already counted"):
        scores.add(pred, lq, hq, [["a"], ["a"]], ["a", "a"])


def test_empty_restoration_summary():
    s = RestorationScores().summary()
    assert s["count"] == 0 and s["psnr"] is None and s["gain"] is None and s["per_type"] == {}
    assert RestorationScores().rows() == []


# --- classification -----------------------------------------------------------------------

CLASSES = ("rain", "haze", "noise")


def _one_hot(*indices: int) -> torch.Tensor:
    probs = torch.full((len(indices), len(CLASSES)), 0.1)
    probs[torch.arange(len(indices)), torch.tensor(indices)] = 0.8
    return probs


def _hand_built() -> ClassificationScores:
    scores = ClassificationScores(CLASSES)
    scores.add(
        _one_hot(0, 0, 1),
        [["rain"], ["haze"], ["rain", "haze"]],  # right, wrong, right for both rows
        ["k1", "k2", "k3"],
    )
    scores.add(
        _one_hot(2, 0, 1),
        [["noise"], ["snow"], ["haze", "snow"]],  # right, unknown, right (snow ignored)
        ["k4", "k5", "k6"],
    )
    return scores


def test_top1_per_class_confusion_and_unknown_labels():
    s = _hand_built().summary()
    assert s["count"] == 5 and s["unknown"] == 1
    assert s["top1"] == 0.8
    assert s["chance"] == 0.3333
    assert s["classes"] == list(CLASSES)
    # each accuracy carries its interval and p-value against chance (1/3 here)
    assert s["per_class"] == {
        "rain": {"support": 2, "top1": 1.0, **against_chance(2, 2, 1 / 3)},
        "haze": {"support": 3, "top1": 0.6667, **against_chance(2, 3, 1 / 3)},
        "noise": {"support": 1, "top1": 1.0, **against_chance(1, 1, 1 / 3)},
    }
    assert {k: s[k] for k in ("ci95_low", "ci95_high", "p_above_chance")} == against_chance(
        4, 5, 1 / 3
    )
    assert s["confusion"] == [
        [1, 1, 0],  # rain: k1 -> rain, k3 -> haze
        [1, 2, 0],  # haze: k2 -> rain, k3 -> haze, k6 -> haze
        [0, 0, 1],
    ]


def test_confusion_rows_one_per_sample_label_sorted_by_key():
    assert _hand_built().confusion_rows() == [
        ("rain", "rain"),  # k1
        ("haze", "rain"),  # k2
        ("rain", "haze"),  # k3
        ("haze", "haze"),
        ("noise", "noise"),  # k4
        ("haze", "haze"),  # k6
    ]


def test_classification_merge_equals_single_and_checks_classes():
    whole = _hand_built()
    first, second = ClassificationScores(CLASSES), ClassificationScores(CLASSES)
    first.add(_one_hot(2, 0, 1), [["noise"], ["snow"], ["haze", "snow"]], ["k4", "k5", "k6"])
    second.add(_one_hot(0, 0, 1), [["rain"], ["haze"], ["rain", "haze"]], ["k1", "k2", "k3"])
    merged = ClassificationScores(CLASSES)
    merged.merge(pickle.loads(pickle.dumps([first.state(), second.state()])))
    assert merged.summary() == whole.summary()
    assert merged.confusion_rows() == whole.confusion_rows()
    with pytest.raises(ValueError, match="already counted"):  # the unknown key too
        merged.merge([ClassificationScores(CLASSES).state() | {"unknown": ["k5"]}])
    with pytest.raises(ValueError, match="cannot merge"):
        ClassificationScores(("haze", "rain", "noise")).merge([first.state()])


def test_classification_rejects_bad_input_and_empty_summary():
    scores = ClassificationScores(CLASSES)
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        scores.add(torch.zeros(2, 4), [["rain"], ["rain"]], ["a", "b"])
    with pytest.raises(ValueError, match="1 labels"):
        scores.add(torch.zeros(2, 3), [["rain"]], ["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        ClassificationScores(("rain", "rain"))
    s = scores.summary()
    assert s["top1"] is None and s["count"] == 0
    assert s["per_class"]["rain"] == {
        "support": 0, "top1": None, "ci95_low": None, "ci95_high": None, "p_above_chance": None
    }
    assert s["confusion"] == [[0] * 3] * 3


# --- writers ------------------------------------------------------------------------------


def test_confusion_csv_round_trip_matches_the_matrix(tmp_path):
    scores = _hand_built()
    path = tmp_path / "reports" / "confusion.csv"
    write_confusion_csv(path, scores)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["actual", "predicted"]  # as uir/quality/report.py writes
        pairs = Counter((row["actual"], row["predicted"]) for row in reader)
    matrix = scores.summary()["confusion"]
    assert pairs == Counter(
        {
            (a, p): matrix[i][j]
            for i, a in enumerate(CLASSES)
            for j, p in enumerate(CLASSES)
            if matrix[i][j]
        }
    )


def test_table_csv_round_trip(tmp_path):
    scores = RestorationScores()
    scores.add(*_random_batch(3, seed=5), [["rain"], ["rain", "haze"], []], ["c", "a", "b"])
    path = tmp_path / "samples.csv"
    write_table_csv(path, scores.rows())
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(scores.rows()[0])
        back = list(reader)
    assert [row["key"] for row in back] == ["a", "b", "c"]
    assert [row["types"] for row in back] == ["rain+haze", "", "rain"]
    for row, original in zip(back, scores.rows(), strict=True):
        assert float(row["psnr"]) == original["psnr"]
        assert float(row["gain"]) == original["gain"]


def test_table_csv_columns_in_first_seen_order_and_empty_cells(tmp_path):
    path = tmp_path / "t.csv"
    write_table_csv(path, [{"b": 1, "a": None}, {"a": 2.5, "c": "x"}])
    assert path.read_text() == "b,a,c\n1,,\n,2.5,x\n"
    write_table_csv(path, [], columns=["type", "count"])
    assert path.read_text() == "type,count\n"


def test_keyed_rows_and_markdown_table():
    summary = _hand_built().summary()
    rows = keyed_rows(summary["per_class"], "class")
    assert rows[1] == {"class": "haze", **summary["per_class"]["haze"]}
    assert list(rows[1])[:3] == ["class", "support", "top1"]
    rows[2]["top1"] = None
    rows[0]["class"] = "rain|snow"
    assert markdown_table(rows, ["class", "support", "top1"]) == (
        "| class | support | top1 |\n"
        "| --- | --- | --- |\n"
        "| rain\\|snow | 2 | 1.0000 |\n"
        "| haze | 3 | 0.6667 |\n"
        "| noise | 1 | n/a |\n"
    )
    rows[1]["p_above_chance"] = 3.2e-12
    assert markdown_table(rows[1:2], ["class", "p_above_chance"]).endswith("| haze | 3.2e-12 |\n")
