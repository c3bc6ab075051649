"""The ``uir`` command line: contracts other tools rely on, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uir.cli import main
from uir.imageio import load_rgb


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    base = np.linspace(0, 255, 96, dtype=np.float32)
    image = (base[None, :, None] * 0.5 + base[:, None, None] * 0.5
             + rng.normal(0, 10, (96, 96, 3))).clip(0, 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    return path


def test_degrade_writes_image_and_record_then_replay_matches(photo: Path, tmp_path: Path):
    out, record = tmp_path / "lq.png", tmp_path / "lq.json"
    assert main(["degrade", str(photo), str(out), "--seed", "7", "--scale", "2",
                 "--record", str(record)]) == 0
    data = json.loads(record.read_text())
    assert data["pipeline"] == "realesrgan" and data["seed"] == 7
    assert data["overrides"] == {"scale": 2}
    assert load_rgb(out).shape == (48, 48, 3)
    replayed = tmp_path / "replayed.png"
    assert main(["replay", str(record), str(photo), str(replayed)]) == 0
    assert np.array_equal(load_rgb(out), load_rgb(replayed))


def test_degrade_default_record_path_and_tip_scale(photo: Path, tmp_path: Path):
    out = tmp_path / "tip.png"
    assert main(["degrade", str(photo), str(out), "--pipeline", "tip", "--seed", "2"]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["pipeline"] == "tip"
    assert load_rgb(out).shape == (96, 96, 3)  # TIP keeps the HQ size by default


def test_degrade_from_prompt(photo: Path, tmp_path: Path):
    out = tmp_path / "p.png"
    text = "Dejpeg with quality 20; Deblur with sigma 1.5"
    assert main(["degrade", str(photo), str(out), "--pipeline", "prompt", "--prompt", text]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert [op["op"] for op in data["ops"]][:2] == ["blurry", "jpeg-compressed"]
    assert data["prompt"] == "Dejpeg with quality 20; Deblur with sigma 1.5;"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"this is plain text, not a picture", "not an image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "truncat"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys, content: bytes, expected: str):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(content)
    assert main(["degrade", str(bad), str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.jpg" in err
    assert expected in err.lower() or "cannot" in err.lower()
    assert not (tmp_path / "o.png").exists()


def test_missing_input_and_bad_override(photo: Path, tmp_path: Path, capsys):
    assert main(["degrade", str(tmp_path / "nope.png"), str(tmp_path / "o.png")]) == 2
    assert main(["degrade", str(photo), str(tmp_path / "o.png"), "--set", "secnd.blur_prob=1"]) == 2
    assert main(["degrade", str(photo), str(tmp_path / "o.png"), "--pipeline", "nope"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("uir: error:") for line in lines)
    assert "secnd" in lines[1] and "nope" in lines[2]


def test_replay_refuses_wrong_image(photo: Path, tmp_path: Path, capsys):
    out = tmp_path / "lq.png"
    assert main(["degrade", str(photo), str(out)]) == 0
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(other)
    assert main(["replay", str(out.with_suffix(".json")), str(other), str(tmp_path / "r.png")]) == 2
    assert "96x96" in capsys.readouterr().err


def test_prompt_parse_and_render(capsys):
    assert main(["prompt", "parse", "upsample to 2x;deblur with sigma 3"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed == {"blind": False, "clauses": [
        {"type": "low-resolution", "params": {"factor": 2.0}},
        {"type": "blurry", "params": {"sigma": 3.0}},
    ]}
    assert main(["prompt", "render", json.dumps(parsed)]) == 0
    assert capsys.readouterr().out.strip() == "Upsample to 2.0x; Deblur with sigma 3.0;"


def test_prompt_parse_error_names_the_text(capsys):
    assert main(["prompt", "parse", "Deblur with sigma 2; Sharpen a lot"]) == 2
    err = capsys.readouterr().err
    assert "'Sharpen a lot'" in err and len(err.strip().splitlines()) == 1


def test_list_shows_pipelines_types_and_ops(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("realesrgan", "tip", "prompt", "blurry", "low-resolution", "noisy",
                 "jpeg-compressed", "Dejpeg with quality {quality}", "usm_sharpen"):
        assert name in out


def test_console_script_never_prints_a_traceback(tmp_path: Path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    result = subprocess.run(
        [sys.executable, "-m", "uir.cli", "degrade", str(bad), str(tmp_path / "o.png")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.startswith("uir: error:")


def test_demo_job_writes_pairs_records_and_sheet(tmp_path: Path):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--pipeline", "tip"]) == 0
    records = sorted((tmp_path / "demo").glob("*-tip.json"))
    assert len(records) >= 6
    sheet = load_rgb(tmp_path / "demo" / "contact_sheet.png")
    assert sheet.shape[0] > 6 * 100
    record = json.loads(records[0].read_text())
    hq = load_rgb(Path(__file__).parents[1] / "data" / "demo" / record["source"])
    from degradations import replay
    assert np.array_equal(replay(hq, record), load_rgb(records[0].with_suffix(".png")))


def test_preview_pipeline_and_all_types(tmp_path: Path, capsys):
    import degradations

    sheet = tmp_path / "daclip.png"
    assert main(["preview", "--pipeline", "daclip", "--seed", "1", "--out", str(sheet)]) == 0
    assert load_rgb(sheet).shape[0] > 6 * 100
    every = tmp_path / "all.png"
    assert main(["preview", "--all", "--out", str(every)]) == 0
    rows = len(degradations.DEGRADATIONS)
    assert load_rgb(every).shape[0] > rows * 150
    assert main(["preview", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["preview", "--pipeline", "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "nope" in capsys.readouterr().err


def test_set_overrides_nested_ranges(photo: Path, tmp_path: Path):
    out = tmp_path / "haze.png"
    assert main(["degrade", str(photo), str(out), "--pipeline", "prompt", "--prompt", "Dehaze",
                 "--set", "ranges.hazy.density=[2.0, 2.0]"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["ops"][0]["params"]["density"] == 2.0
    assert record["prompt"] == "Dehaze;"
