"""End-to-end dataset builds on tiny configs: DVC, kill-and-resume, bad inputs, real pairs,
verification, loading and export (issue 4, "Must show").

Builds use the local engine through the Python API where that is enough and the installed `uir`
and `dvc` commands where the command line itself is what is being shown.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import tarfile
import time
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from degradations.names import DACLIP_TYPES
from uir.cli import main as uir_main
from uir.dataset.atomic import temporary_path
from uir.dataset.build import run_build
from uir.dataset.config import load_dataset_config
from uir.dataset.verify import verify
from uir.demo import demo_images

REQUIRED = {"hq.png", "lq.png", "txt", "json"}
SIGN_CAPTION = "a road sign reading: STOP\tin red"


# ---------------------------------------------------------------------------------------------
# helpers


def build(params: Path, name: str, *, workers: int = 1, **overrides: Any):
    config = load_dataset_config(name, params, overrides or None)
    return run_build(config, workers=workers)


def read_manifest(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "manifest.json").read_text())


def read_rejects(folder: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


def shard_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of one shard, read with plain tarfile."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            key, _, extension = info.name.partition(".")
            samples.setdefault(key, {})[extension] = tar.extractfile(info).read()
    return list(samples.items())


def all_samples(folder: Path) -> list[tuple[str, str, dict[str, bytes]]]:
    """(shard name, key, members) of every shard the manifest lists."""
    return [
        (entry["name"], key, members)
        for entry in read_manifest(folder)["shards"]
        for key, members in shard_samples(folder / entry["name"])
    ]


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def run_verify_in_process(folder: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`uir verify` through the CLI entry point in this process: (exit code, stdout+stderr)."""
    try:
        code = uir_main(["verify", str(folder)])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out = capsys.readouterr()
    return code, out.out + out.err


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height, with a token IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")
    )


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------
# a small demo dataset shared by the read-only tests (verify, loading, export, workers)


@pytest.fixture(scope="module")
def demo_build(tmp_path_factory, make_photo, write_params) -> dict[str, Any]:
    """The demo photographs plus one HQ image whose caption holds ": " and a tab, two
    single-label variants each (one type makes masks), 4 samples per shard."""
    root = tmp_path_factory.mktemp("demo-build")
    make_photo(root / "extra" / "sign.png", (128, 128), seed=5, caption=SIGN_CAPTION)
    params = write_params(root, {
        "small": {
            "seed": 7,
            "output": "out",
            "sources": [{"kind": "demo"}, {"kind": "hq", "name": "extra", "paths": ["extra"]}],
            "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
            "captions": {"source": "sidecar"},
            "synthesis": {
                "variants": 2,
                "crop": {"mode": "random", "size": 96},
                "recipes": [{"type": "noisy"}, {"type": "blurry"}, {"type": "uncompleted"}],
            },
            "shards": {"max_count": 4},
        }
    })
    report = build(params, "small", workers=1)
    return {"params": params, "name": "small", "out": report.output, "report": report}


# ---------------------------------------------------------------------------------------------
# 1. dvc repro in a fresh clone


@pytest.mark.slow
def test_dvc_repro_in_a_fresh_clone(tmp_path, repo_root, run_cli, file_identity, make_clone):
    """`dvc repro` builds and labels the demo dataset (`uir build demo --steps <step>`) in a
    fresh git clone, records every stage in dvc.lock, is a no-op the second time, pushes to the
    default local remote and leaves `dvc status` clean; a curation change re-runs only the
    label stage."""
    # 2 variants per demo photo instead of 8
    clone = make_clone(repo_root, tmp_path / "clone", {"synthesis.variants": 2})

    run_cli("dvc", "repro", cwd=clone, timeout=400)
    out = clone / "data" / "shards" / "demo"
    shards = sorted(out.glob("*.tar"))
    assert shards, "dvc repro made no shards"
    assert (out / "manifest.json").is_file()
    assert read_manifest(out)["counts"]["samples"] == len(demo_images()) * 2
    verified = run_cli("uir", "verify", out, cwd=clone)
    assert verified.stdout.startswith("OK")

    labelled = clone / "data" / "shards" / "demo-quality"
    assert run_cli("uir", "verify", labelled, cwd=clone).stdout.startswith("OK")
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == {
        "build_demo", "proxy_demo", "render_demo", "perceiver_demo", "label_demo",
        "build_demo_daclip", "train_controller", "train_restorer", "evaluate"}
    # The training chain: controller and restorer checkpoints, embeddings, evaluation.
    models = clone / "models" / "train"
    for path in ("controller/checkpoint.pt", "restorers/embeddings.pt",
                 "restorers/nafnet/checkpoint.pt", "restorers/nafnet/log.csv"):
        assert (models / path).is_file(), path
    metrics = json.loads((clone / "reports" / "train" / "metrics.json").read_text())
    assert metrics["profile"] == "demo" and metrics["controller"]["step"] == 6
    assert set(metrics["controller"]["per_class"]) <= set(DACLIP_TYPES)
    assert metrics["restorers"]["nafnet"]["step"] == 6
    assert metrics["restorers"]["nafnet"]["count"] > 0
    assert (clone / "reports" / "train" / "controller_confusion.csv").read_text().startswith(
        "actual,predicted")
    assert sorted(o["path"] for o in lock["stages"]["label_demo"]["outs"]) == [
        "data/quality/demo/scores", "data/shards/demo-quality",
        "reports/quality/demo/confusion.csv", "reports/quality/demo/histograms",
        "reports/quality/demo/metrics.json"]
    outs = [entry["path"] for entry in lock["stages"]["build_demo"]["outs"]]
    assert outs == ["data/shards/demo"]
    assert lock["stages"]["build_demo"]["params"]["params.yaml"]["datasets.demo"]["synthesis"][
        "variants"] == 2

    before = file_identity(sorted(out.iterdir()))
    again = run_cli("dvc", "repro", cwd=clone)
    assert "didn't change, skipping" in again.stdout + again.stderr
    assert "Running stage" not in again.stdout + again.stderr
    assert file_identity(sorted(out.iterdir())) == before  # nothing rewritten

    pushed = run_cli("dvc", "push", cwd=clone)
    assert "pushed" in pushed.stdout + pushed.stderr
    storage = clone / ".dvc-storage"  # `../.dvc-storage` relative to .dvc/config
    assert storage.is_dir() and any(p.is_file() for p in storage.rglob("*"))
    status = run_cli("dvc", "status", cwd=clone)
    assert "Data and pipelines are up to date" in status.stdout
    cloud = run_cli("dvc", "status", "--cloud", cwd=clone)
    assert "in sync" in cloud.stdout

    # A curation threshold re-runs the label stage only: checkpoints and medium images stay.
    kept = sorted((clone / "models" / "quality" / "demo").rglob("*.pt"))
    kept += sorted((clone / "data" / "quality" / "demo" / "mq").glob("*.tar"))
    kept_before = file_identity(kept)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["quality"]["demo"]["curation"]["rules"][0].update(above=0.0, action="flag")
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run_cli("dvc", "status", cwd=clone).stdout
    assert "label_demo" in changed
    assert not any(f"{s}_demo" in changed for s in ("build", "proxy", "render", "perceiver"))
    relabel = run_cli("dvc", "repro", cwd=clone, timeout=400)
    ran = [line for line in relabel.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'label_demo':"]
    assert file_identity(kept) == kept_before
    assert read_manifest(labelled)["quality"]["flagged"] == read_manifest(labelled)["counts"][
        "samples"]

    # An evaluation setting re-runs only the evaluation; the trained models stay.
    trained = sorted((clone / "models" / "train").rglob("*.pt"))
    trained_before = file_identity(trained)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["training"]["profiles"]["demo"]["evaluate"]["crop_border"] = 2
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run_cli("dvc", "repro", cwd=clone, timeout=400)
    ran = [line for line in rerun.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'evaluate':"]
    assert file_identity(trained) == trained_before
    metrics = json.loads((clone / "reports" / "train" / "metrics.json").read_text())
    assert metrics["restorers"]["nafnet"]["crop_border"] == 2

    # The DVC route (local engine, process pool) and an inline local build make the same bytes.
    local = build(clone / "params.yaml", "demo", workers=1, output=str(tmp_path / "local"))
    assert {s["name"]: s["sha256"] for s in local.manifest["shards"]} == {
        s["name"]: s["sha256"] for s in read_manifest(out)["shards"]
    }


# ---------------------------------------------------------------------------------------------
# 2. kill -9 at many moments, then resume


def _start_build(params: Path, log: Path, env: dict[str, str], venv_bin: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [str(venv_bin / "uir"), "build", "resume", "--params", str(params),
             "--engine", "local", "--workers", "1"],
            cwd=params.parent, env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _finished_files(folder: Path) -> list[Path]:
    """Stats files present and the shards they name: the chunks a rerun must not touch."""
    paths = []
    for stats in folder.glob("*_stats.json"):
        paths.append(stats)
        paths.extend(folder / shard["name"] for shard in json.loads(stats.read_text())["shards"])
    return sorted(paths)


def _count(folder: Path, suffix: str) -> int:
    if not folder.is_dir():
        return 0
    return sum(
        1 for p in folder.iterdir() if p.name.endswith(suffix) and not p.name.startswith(".")
    )


def _wait_until(proc: subprocess.Popen, condition, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    raise AssertionError("timed out waiting for the build")


@pytest.mark.slow
def test_kill_and_resume_gives_identical_shards(
    tmp_path, write_params, cli_env, venv_bin, run_cli, folder_digests, file_identity
):
    """SIGKILL the build at many moments (mid-shard, right after a chunk finishes, at random
    points from a fixed seed), restarting each time: the final folder equals an uninterrupted
    build byte for byte, finished chunks are never rewritten, no partial shard is ever visible
    under its final name, and no temporary file is left."""
    entry = {
        "seed": 11,
        "output": "out",
        "sources": [{"kind": "demo"}],
        "splits": {"train": 0.6, "val": 0.2, "test": 0.2},
        "captions": {"source": "sidecar"},
        "synthesis": {"variants": 3, "crop": {"mode": "random", "size": 256},
                      "recipes": [{"preset": "realesrgan"}]},
        "shards": {"max_count": 2},
    }
    reference_params = write_params(tmp_path / "reference", {"resume": entry})
    run_cli("uir", "build", "resume", "--params", reference_params, "--engine", "local",
            "--workers", "1", cwd=reference_params.parent)
    reference_dir = tmp_path / "reference" / "out"
    reference = folder_digests(reference_dir)
    reference_shards = {n: h for n, h in reference.items() if n.endswith(".tar")}
    chunks = _count(reference_dir, "_stats.json")
    assert chunks >= 8 and len(reference_shards) == chunks

    params = write_params(tmp_path / "resumed", {"resume": entry})
    out = tmp_path / "resumed" / "out"
    log = tmp_path / "resumed" / "build.log"
    rng = random.Random(20240611)

    def after_seconds(seconds: float):
        start = time.monotonic()
        return lambda: time.monotonic() - start >= seconds

    def stats_at_least(count: int):
        return lambda: _count(out, "_stats.json") >= count

    def temporary_shard():  # a shard being written under its temporary name
        return out.is_dir() and any(
            p.name.startswith(".") and p.name.endswith(".tmp") and ".tar." in p.name
            for p in out.iterdir()
        )

    moments = [
        ("early", lambda done: after_seconds(rng.uniform(0.05, 0.8)), 0.0, False),
        ("mid-shard", lambda done: temporary_shard, 0.0, True),
        ("chunk done", lambda done: stats_at_least(done + 1), 0.0, True),
        ("random 1", lambda done: stats_at_least(done + rng.randint(1, 2)), 0.15, True),
        ("random 2", lambda done: stats_at_least(done + rng.randint(1, 2)), 0.15, True),
        ("random 3", lambda done: stats_at_least(done + 1), 0.15, True),
    ]
    left_temporaries = 0
    for label, make_condition, max_delay, must_kill in moments:
        done = _count(out, "_stats.json")
        assert done <= chunks - 3, f"{label}: too few chunks left to interrupt"
        protected = _finished_files(out) if out.is_dir() else []
        before = file_identity(protected)
        condition = make_condition(done)
        delay = rng.uniform(0, max_delay)
        proc = _start_build(params, log, cli_env, venv_bin)
        try:
            if _wait_until(proc, condition):
                time.sleep(delay)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        if must_kill:
            assert proc.returncode == -signal.SIGKILL, f"{label}: build ended before the kill"
        assert file_identity(protected) == before, f"{label}: a finished chunk was rewritten"
        assert not (out / "manifest.json").exists(), f"{label}: manifest of an unfinished build"
        if not out.is_dir():
            continue
        left_temporaries += bool(temporaries(out))
        visible = {n: h for n, h in folder_digests(out).items() if n.endswith(".tar")}
        for name, digest in visible.items():  # a shard under its final name is complete
            assert reference_shards.get(name) == digest, f"{label}: partial or wrong {name}"

    assert left_temporaries, "no kill interrupted a write: the resume cleaned up nothing"
    finished = _count(out, "_stats.json")
    assert 0 < finished < chunks  # the resume has both chunks to reuse and chunks to write
    protected = _finished_files(out)
    before = file_identity(protected)
    resumed = run_cli("uir", "build", "resume", "--params", params, "--engine", "local",
                      "--workers", "1", cwd=params.parent)
    assert "built resume" in resumed.stdout
    assert file_identity(protected) == before, "the resumed build rewrote finished chunks"
    assert temporaries(out) == []
    assert folder_digests(out) == reference  # shards, stats, manifest, sizes, index, card
    assert verify(out).ok


def test_temporaries_of_a_build_killed_while_finalising_are_removed(demo_build, tmp_path):
    """A kill during `finalize` leaves `.manifest.json.<hex>.tmp` and the like; the next build
    must remove them, as it does for shard temporaries."""
    out = tmp_path / "out"
    shutil.copytree(demo_build["out"], out)
    for name in ("manifest.json", "sizes.json", "rejects.jsonl", "README.md", "train.wids.json"):
        temporary = temporary_path(out / name)
        temporary.write_bytes(b"half written")
    build(demo_build["params"], demo_build["name"], output=str(out))
    assert temporaries(out) == []


# ---------------------------------------------------------------------------------------------
# 3. a folder of bad and awkward files


@pytest.fixture
def awkward_folder(tmp_path, make_photo) -> dict[str, Any]:
    """Good images, convertible ones (16-bit, RGBA, CMYK, EXIF, grey, palette) and bad ones
    (truncated, empty, text named .jpg, huge header, duplicate, too small)."""
    folder = tmp_path / "inputs"
    good = make_photo(folder / "a_good.png", (64, 80), seed=1, caption="a good photo")
    make_photo(folder / "b_good.jpg", (72, 64), seed=2, caption="another good photo", quality=95)

    pixels16 = np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3) % 256
    pixels16 = pixels16.astype(np.uint8)
    cv2.imwrite(str(folder / "c_sixteen.png"),
                (pixels16[..., ::-1].astype(np.uint16) * 257))  # 16-bit RGB PNG
    (folder / "c_sixteen.txt").write_text("a sixteen bit image\n")

    rgba = np.dstack([np.full((64, 64, 3), 40, np.uint8), np.full((64, 64), 255, np.uint8)])
    rgba[:16, :16, 3] = 0  # a transparent corner
    make_photo(folder / "d_rgba.png", pixels=rgba, caption="a cut-out with a transparent corner")
    cmyk = Image.fromarray(np.full((64, 64, 4), (10, 200, 30, 0), np.uint8), mode="CMYK")
    cmyk.save(folder / "e_cmyk.jpg", quality=95)
    (folder / "e_cmyk.txt").write_text("a print-ready cmyk picture\n")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    make_photo(folder / "f_exif.jpg", (40, 64), seed=6, caption="a phone photo on its side",
               exif=exif.tobytes(), quality=95)
    make_photo(folder / "g_grey.png", pixels=np.full((64, 64), 90, np.uint8), caption="grey")
    palette = make_photo(folder / "h_palette.png", seed=8, caption="a palette picture")
    with Image.open(palette) as image:
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(palette)

    data = good.read_bytes()
    bad = {
        "t_truncated.png": ("truncated", data[: len(data) // 2]),
        "t_empty.png": ("empty", b""),
        "t_text.jpg": ("not an image", b"this is a text file, not a JPEG\n" * 20),
        "t_huge.png": ("exceeds", png_with_header(100_000, 100_000)),
        "z_copy.png": ("duplicate of", data),
    }
    for name, (_, content) in bad.items():
        (folder / name).write_bytes(content)
    make_photo(folder / "t_small.png", (20, 20), seed=9, caption="too small")
    # A real image over the configured ingest.max_pixels (the huge header trips Pillow's own
    # bomb guard first, so this one shows the configured limit is applied too).
    make_photo(folder / "t_big.png", (200, 300), seed=10, caption="too many pixels")
    expected = {name: reason for name, (reason, _) in bad.items()}
    expected["t_small.png"] = "below the minimum"
    expected["t_big.png"] = "60,000 pixels exceeds the 50,000-pixel limit"
    convertible = ["c_sixteen.png", "d_rgba.png", "e_cmyk.jpg", "f_exif.jpg", "g_grey.png",
                   "h_palette.png"]
    return {"folder": folder, "bad": expected, "convertible": convertible,
            "good": ["a_good.png", "b_good.jpg"], "pixels16": pixels16}


def _awkward_entry(source: str = "sidecar-or-blip") -> dict[str, Any]:
    return {
        "output": "out",
        "sources": [{"kind": "hq", "name": "inputs", "paths": ["inputs"]}],
        "ingest": {"min_size": 32, "max_pixels": 50_000},
        "captions": {"source": source},
        "synthesis": {"variants": 1, "crop": {"mode": "full"}, "recipes": [{"type": "noisy"}]},
        "shards": {"max_count": 4},
    }


def test_bad_files_are_rejected_with_reasons_and_convertible_ones_accepted(
    awkward_folder, tmp_path, write_params, run_cli
):
    params = write_params(tmp_path, {"awkward": _awkward_entry()})
    result = run_cli("uir", "build", "awkward", "--params", params, "--engine", "local",
                     "--workers", "1", cwd=tmp_path)
    out = tmp_path / "out"
    files = sorted(p.name for p in awkward_folder["folder"].iterdir() if p.suffix != ".txt")
    assert len(files) == 15

    rejects = read_rejects(out)
    by_name = {Path(r["path"]).name: r for r in rejects}
    assert len(by_name) == len(rejects) == len(awkward_folder["bad"])
    for name, reason in awkward_folder["bad"].items():
        assert name in by_name, f"{name} has no line in rejects.jsonl"
        assert reason in by_name[name]["reason"], by_name[name]
        assert by_name[name]["source"] == "inputs"
    assert "pixel limit" in by_name["t_huge.png"]["reason"]
    assert by_name["z_copy.png"]["stage"] == "dedupe"
    assert "a_good.png" in by_name["z_copy.png"]["reason"]

    counts = read_manifest(out)["counts"]
    assert counts["seen"] == len(files)
    assert counts["accepted"] == len(awkward_folder["good"]) + len(awkward_folder["convertible"])
    assert counts["accepted"] + counts["rejected"] == counts["seen"]
    assert counts["samples"] == counts["accepted"]
    assert f"seen {len(files)}, accepted {counts['accepted']}" in result.stdout

    samples = {json.loads(m["json"])["source"]["hq"].split("/")[-1]: m
               for _, _, m in all_samples(out)}
    assert sorted(samples) == sorted(awkward_folder["good"] + awkward_folder["convertible"])
    hq = {name: decode_png(members["hq.png"]) for name, members in samples.items()}
    assert np.array_equal(hq["c_sixteen.png"], awkward_folder["pixels16"])  # 16 -> 8 bits
    assert hq["d_rgba.png"][:16, :16].min() == 255  # transparent corner flattened on white
    assert np.array_equal(hq["d_rgba.png"][32:, 32:], np.full((32, 32, 3), 40, np.uint8))
    assert hq["f_exif.jpg"].shape == (64, 40, 3)  # EXIF orientation applied (was 40 x 64)
    assert np.array_equal(hq["g_grey.png"], np.full((64, 64, 3), 90, np.uint8))
    assert hq["e_cmyk.jpg"].shape == (64, 64, 3) and hq["h_palette.png"].shape == (64, 64, 3)
    assert run_cli("uir", "verify", out).returncode == 0


def test_missing_sidecar_with_sidecar_captions_is_a_caption_rejection(
    tmp_path, write_params, make_photo
):
    make_photo(tmp_path / "inputs" / "with.png", seed=1, caption="a captioned photo")
    make_photo(tmp_path / "inputs" / "without.png", seed=2)
    params = write_params(tmp_path, {"captioned": _awkward_entry(source="sidecar")})
    report = build(params, "captioned")
    rejects = read_rejects(report.output)
    assert [(Path(r["path"]).name, r["stage"]) for r in rejects] == [("without.png", "caption")]
    assert "without.txt" in rejects[0]["reason"]
    counts = report.manifest["counts"]
    assert (counts["seen"], counts["accepted"], counts["rejected"]) == (2, 1, 1)
    assert counts["samples"] == 1
    assert verify(report.output).ok


# ---------------------------------------------------------------------------------------------
# 4. real LQ/GT pairs


def test_real_pairs_match_by_name_never_by_sorted_order(tmp_path, write_params, make_photo):
    rng = np.random.default_rng(0)
    originals: dict[str, np.ndarray] = {}

    def pair(lq: Path, gt: Path, seed: int, scale: int = 1) -> None:
        if gt.name not in originals:
            make_photo(gt, (64, 64), seed=seed, caption=f"ground truth {gt.stem}")
            originals[gt.name] = np.asarray(Image.open(gt).convert("RGB"))
        base = originals[gt.name][::scale, ::scale].astype(np.int16)
        noisy = (base + rng.integers(-40, 40, base.shape)).clip(0, 255).astype(np.uint8)
        make_photo(lq, pixels=noisy)
        originals[lq.name] = noisy

    rain = tmp_path / "rain"
    for index in (1, 2):
        pair(rain / "input" / f"rain-{index}.png", rain / "target" / f"norain-{index}.png", index)
    make_photo(rain / "input" / "rain-3.png", seed=30)  # an LQ without GT
    make_photo(rain / "target" / "norain-0.png", seed=40, caption="an orphan GT")  # GT without LQ
    lq_sorted = sorted(p.name for p in (rain / "input").glob("*.png"))
    gt_sorted = sorted(p.name for p in (rain / "target").glob("*.png"))
    assert (lq_sorted[0], gt_sorted[0]) == ("rain-1.png", "norain-0.png")  # sorted order lies

    haze = tmp_path / "haze"
    pair(haze / "lq" / "0001_0.8_0.2.png", haze / "gt" / "0001.png", 11)
    pair(haze / "lq" / "0001_0.9_0.1.png", haze / "gt" / "0001.png", 11)
    pair(haze / "lq" / "0002_0.85_0.1.png", haze / "gt" / "0002.png", 12, scale=2)

    params = write_params(tmp_path, {"real": {
        "output": "out",
        "sources": [
            {"kind": "pairs", "name": "rain", "lq": "rain/input", "gt": "rain/target",
             "label": "rainy", "pairing": "rename", "lq_pattern": "rain-{id}",
             "gt_pattern": "norain-{id}"},
            {"kind": "pairs", "name": "haze", "lq": "haze/lq", "gt": "haze/gt", "label": "hazy",
             "pairing": "prefix"},
        ],
        "ingest": {"min_size": 32},
        "splits": {"train": 0.34, "val": 0.33, "test": 0.33},
        "captions": {"source": "sidecar"},
        "synthesis": {"variants": 0},
    }})
    report = build(params, "real")
    out = report.output

    rejects = {Path(r["path"]).name: r for r in read_rejects(out)}
    assert sorted(rejects) == ["norain-0.png", "rain-3.png"]
    assert "unmatched LQ" in rejects["rain-3.png"]["reason"]
    assert "unmatched GT" in rejects["norain-0.png"]["reason"]
    assert {r["stage"] for r in rejects.values()} == {"pairing"}

    samples = all_samples(out)
    assert len(samples) == 5
    splits_by_gt: dict[str, set[str]] = {}
    labels = {"rain": "rainy", "haze": "hazy"}
    for _, key, members in samples:
        meta = json.loads(members["json"])
        assert "." not in key and meta["key"] == key
        assert meta["kind"] == "real"
        assert meta["labels"] == [labels[meta["source"]["name"]]]
        gt_name, lq_name = Path(meta["source"]["hq"]).name, Path(meta["source"]["lq"]).name
        if meta["source"]["name"] == "rain":
            assert lq_name.removeprefix("rain-") == gt_name.removeprefix("norain-")
        else:
            assert lq_name.split("_")[0] == Path(gt_name).stem
        assert np.array_equal(decode_png(members["lq.png"]), originals[lq_name])
        assert np.array_equal(decode_png(members["hq.png"]), originals[gt_name])
        assert members["txt"].decode() == f"ground truth {Path(gt_name).stem}"
        splits_by_gt.setdefault(gt_name, set()).add(meta["split"])
    assert sorted(splits_by_gt) == ["0001.png", "0002.png", "norain-1.png", "norain-2.png"]
    assert all(len(splits) == 1 for splits in splits_by_gt.values()), splits_by_gt
    counts = report.manifest["counts"]
    assert (counts["seen"], counts["accepted"], counts["rejected"]) == (7, 5, 2)
    assert counts["kinds"] == {"real": 5}
    assert verify(out).ok


# ---------------------------------------------------------------------------------------------
# 5. verify catches corruption


def _flip_image_byte(folder: Path) -> str:
    shard = sorted(folder.glob("*.tar"))[0]
    with tarfile.open(shard, "r:") as tar:
        member = next(m for m in tar if m.name.endswith("lq.png"))
    offset = member.offset_data + member.size // 2
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0xFF
    shard.write_bytes(bytes(data))
    return shard.name


def _truncate_shard(folder: Path) -> str:
    shard = sorted(folder.glob("*.tar"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard.name


def _delete_shard(folder: Path) -> str:
    shard = sorted(folder.glob("*.tar"))[1]
    shard.unlink()
    return shard.name


def _edit_sizes(folder: Path) -> str:
    sizes = json.loads((folder / "sizes.json").read_text())
    name = sorted(sizes)[0]
    sizes[name] += 1
    (folder / "sizes.json").write_text(json.dumps(sizes))
    return "sizes.json"


def test_verify_cli_fails_on_a_flipped_byte_and_names_the_shard(demo_build, tmp_path, run_cli):
    out = tmp_path / "copy"
    shutil.copytree(demo_build["out"], out)
    assert run_cli("uir", "verify", out).returncode == 0
    shard = _flip_image_byte(out)
    result = run_cli("uir", "verify", out, check=False)
    assert result.returncode != 0
    assert f"{shard}: sha256 mismatch" in result.stdout


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_flip_image_byte, "sha256 mismatch"),
        (_truncate_shard, "bytes, manifest says"),
        (_delete_shard, "missing"),
        (_edit_sizes, "does not match the manifest"),
    ],
    ids=["flipped-byte", "truncated", "deleted", "sizes-json"],
)
def test_verify_detects_corruption(demo_build, tmp_path, capsys, corrupt, expected):
    out = tmp_path / "copy"
    shutil.copytree(demo_build["out"], out)
    assert run_verify_in_process(out, capsys)[0] == 0
    named = corrupt(out)
    code, text = run_verify_in_process(out, capsys)
    assert code != 0
    problems = [line for line in text.splitlines() if line.startswith("FAIL")]
    assert any(named in line and expected in line for line in problems), text


# ---------------------------------------------------------------------------------------------
# 6. loading with plain webdataset and tarfile


def test_shards_load_with_plain_webdataset(demo_build):
    wds = pytest.importorskip("webdataset")
    out = demo_build["out"]
    manifest = read_manifest(out)
    urls = [str(out / entry["name"]) for entry in manifest["shards"]]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("rgb8")
    keys = []
    masks = 0
    for sample in dataset:
        assert set(sample) >= REQUIRED, sorted(sample)
        key = sample["__key__"]
        assert "." not in key
        keys.append(key)
        assert sample["json"]["key"] == key
        assert sample["txt"] == sample["json"]["caption"]
        for member in ("hq.png", "lq.png"):
            image = sample[member]
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert sample["hq.png"].shape[:2] == (96, 96)
        masks += "mask.png" in sample
    photos = len(demo_images()) + 1  # the demo ones and the sign
    assert len(keys) == len(set(keys)) == manifest["counts"]["samples"] == photos * 2
    assert masks == manifest["counts"]["recipes"].get("uncompleted", 0) > 0


def test_shards_are_plain_deterministic_tars(demo_build):
    out = demo_build["out"]
    manifest = read_manifest(out)
    total = 0
    for entry in manifest["shards"]:
        with tarfile.open(out / entry["name"], "r:") as tar:
            members = tar.getmembers()
        assert members
        for info in members:
            assert info.isreg()
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
            assert info.mode == 0o644
        keys: dict[str, list[str]] = {}
        for info in members:
            key, _, extension = info.name.partition(".")
            keys.setdefault(key, []).append(extension)
        for key, extensions in keys.items():
            assert key and "." not in key
            assert REQUIRED <= set(extensions) <= REQUIRED | {"mask.png"}
            assert extensions == sorted(extensions)
        names = [info.name for info in members]
        assert [n.partition(".")[0] for n in names] == sorted(n.partition(".")[0] for n in names)
        assert len(keys) == entry["samples"]
        total += len(keys)
    assert total == manifest["counts"]["samples"]


# ---------------------------------------------------------------------------------------------
# 7. DA-CLIP export


def test_export_daclip_csv(demo_build, tmp_path, run_cli):
    out, export = demo_build["out"], tmp_path / "daclip"
    run_cli("uir", "export", "daclip-csv", out, export)
    lq_by_key = {key: members for _, key, members in all_samples(out)}
    rows = []
    for split in ("train", "val", "test"):
        path = export / f"daclip_{split}.csv"
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        assert lines[0] == "filepath\ttitle"
        for line in lines[1:]:
            fields = line.split("\t")
            assert len(fields) == 2, line
            rows.append(fields)
        with open(path, newline="") as file:  # the csv module agrees with the plain split
            parsed = list(csv.DictReader(file, delimiter="\t"))
        assert [[r["filepath"], r["title"]] for r in parsed] == [f.split("\t") for f in lines[1:]]
    assert len(rows) == read_manifest(out)["counts"]["samples"]
    sign_rows = 0
    for filepath, title in rows:
        parts = title.split(": ")
        assert len(parts) == 2, title
        caption, label = parts
        path = Path(filepath)
        assert path.is_file()
        members = lq_by_key[path.stem]
        meta = json.loads(members["json"])
        assert meta["labels"] == [label]
        assert np.array_equal(decode_png(path.read_bytes()), decode_png(members["lq.png"]))
        if meta["source"]["name"] == "extra":
            sign_rows += 1
            assert meta["caption"] == " ".join(SIGN_CAPTION.split())  # tab collapsed, ": " kept
            assert "STOP in red" in caption and "\t" not in caption
    assert sign_rows == 2


# ---------------------------------------------------------------------------------------------
# 8. worker count does not change the bytes


def test_two_workers_make_the_same_bytes_as_one(demo_build, tmp_path, folder_digests):
    other = tmp_path / "two-workers"
    report = build(demo_build["params"], demo_build["name"], workers=2, output=str(other))
    assert report.reused == 0 and report.written == len(list(other.glob("*_stats.json")))
    assert folder_digests(other) == folder_digests(demo_build["out"])
