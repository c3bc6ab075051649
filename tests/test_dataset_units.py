"""Unit tests of the build library's pieces: config, pairing, splits, plan, tar shards, export."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from uir.dataset import schema
from uir.dataset.atomic import remove_temporaries, temporary_path, write_json_atomic
from uir.dataset.captions import Caption
from uir.dataset.config import ConfigError, PairSource, SplitConfig, parse_dataset_config
from uir.dataset.export import daclip_caption
from uir.dataset.ingest import Item, deduplicate, pair_scale, pixel_hash
from uir.dataset.plan import make_chunks, plan_samples
from uir.dataset.rejects import Rejection, read_rejects, write_rejects
from uir.dataset.sources import Candidate, pair_id
from uir.dataset.splits import assign_splits, find_leaks, hash_split
from uir.dataset.tarwriter import TarShardWriter


def _config(tmp_path: Path, **fields):
    entry = {"name": "unit", "output": str(tmp_path / "out"), "sources": [{"kind": "demo"}],
             "root": str(tmp_path)}
    entry.update(fields)
    return parse_dataset_config(entry)


def _item(name: str, split: str | None = None, lq: str | None = None) -> Item:
    hq_hash = hashlib.sha256(name.encode()).hexdigest()
    candidate = Candidate("src", Path(f"/x/{name}.png"), f"{name}.png",
                          Path(f"/x/{lq}.png") if lq else None, f"{lq}.png" if lq else None,
                          "rainy" if lq else None, split)
    lq_hash = hashlib.sha256(lq.encode()).hexdigest() if lq else None
    return Item(candidate, hq_hash, (512, 640), lq_hash, (512, 640) if lq else None)


# --- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"splits": {"train": 0.5, "val": 0.1, "test": 0.1}}, "must be 1"),
        ({"synthesis": {"recipes": [{"preset": "tip", "type": "hazy"}]}}, "exactly one"),
        ({"synthesis": {"variantz": 3}}, "variantz"),
        ({"synthesis": {"recipes": [{"preset": "nosuch"}]}}, "nosuch"),
        ({"synthesis": {"recipes": [{"type": "foggy"}]}}, "foggy"),
        ({"synthesis": {"recipes": [{"preset": "tip", "overrides": {"bogus": 1}}]}}, "bogus"),
        ({"name": "bad.name"}, "letters"),
        ({"sources": [{"kind": "pairs", "name": "p", "lq": "a", "gt": "b", "label": "nope"}]},
         "nope"),
        ({"sources": [{"kind": "demo"}, {"kind": "demo"}]}, "unique"),
    ],
)
def test_config_errors_name_the_key(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **fields)


def test_params_hash_ignores_runner_and_paths(tmp_path):
    base = _config(tmp_path)
    assert base.params_hash() == _config(
        tmp_path, runner={"workers": 7}, output="elsewhere").params_hash()
    assert base.params_hash() != _config(tmp_path, seed=1).params_hash()


def test_type_recipe_is_the_daclip_preset_for_one_type(tmp_path):
    config = _config(tmp_path, synthesis={"recipes": [{"type": "hazy"}]})
    assert config.synthesis.recipes[0].resolved() == ("daclip", {"types": ["hazy"]})


# --- pairing --------------------------------------------------------------------------------

def test_pair_id_rules():
    stem = PairSource(name="s", lq="a", gt="b", label="rainy")
    assert pair_id("img_001", stem, "lq") == "img_001"
    prefix = PairSource(name="s", lq="a", gt="b", label="hazy", pairing="prefix")
    assert pair_id("0001_0.8_0.2", prefix, "lq") == "0001"
    assert pair_id("0001", prefix, "gt") == "0001"
    rename = PairSource(name="s", lq="a", gt="b", label="rainy", pairing="rename",
                        lq_pattern="rain-{id}", gt_pattern="norain-{id}")
    assert pair_id("rain-12", rename, "lq") == "12"
    assert pair_id("norain-12", rename, "gt") == "12"
    assert pair_id("norain-12", rename, "lq") is None  # 'rain-' must start the stem
    assert pair_id("snow-12", rename, "lq") is None


def test_rename_pattern_needs_one_id():
    with pytest.raises(ValueError, match="exactly one"):
        PairSource(name="s", lq="a", gt="b", label="rainy", pairing="rename", lq_pattern="rain")


def test_pair_scale():
    assert pair_scale((512, 512), (512, 512)) == 1
    assert pair_scale((512, 512), (128, 128)) == 4
    assert pair_scale((512, 512), (128, 256)) is None
    assert pair_scale((500, 500), (128, 128)) is None


# --- ingest helpers ---------------------------------------------------------------------------

def test_pixel_hash_depends_on_pixels_and_shape():
    image = np.zeros((4, 6, 3), np.uint8)
    assert pixel_hash(image) == pixel_hash(image.copy())
    assert pixel_hash(image) != pixel_hash(image.reshape(6, 4, 3))
    changed = image.copy()
    changed[0, 0, 0] = 1
    assert pixel_hash(image) != pixel_hash(changed)


def test_deduplicate_keeps_the_first_and_names_it():
    first, copy, other = _item("a"), _item("a"), _item("b")
    kept, rejects = deduplicate([first, copy, other])
    assert kept == [first, other]
    assert rejects[0].stage == "dedupe" and "duplicate of src:a.png" in rejects[0].reason


def test_pairs_with_one_gt_are_not_duplicates():
    kept, rejects = deduplicate([_item("gt", lq="lq1"), _item("gt", lq="lq2")])
    assert len(kept) == 2 and not rejects


# --- splits ---------------------------------------------------------------------------------

def test_hash_split_is_stable_and_follows_fractions():
    config = SplitConfig(train=0.7, val=0.2, test=0.1)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6000)]
    splits = [hash_split(h, config) for h in hashes]
    assert splits == [hash_split(h, config) for h in hashes]
    counts = Counter(splits)
    for name, fraction in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        expected = fraction * len(hashes)
        assert abs(counts[name] - expected) < 4.5 * np.sqrt(expected * (1 - fraction))
    salted = [hash_split(h, SplitConfig(train=0.7, val=0.2, test=0.1, salt="x")) for h in hashes]
    assert salted != splits


def test_all_variants_of_one_gt_share_a_split_and_official_splits_win():
    config = SplitConfig()
    items = [_item("g", lq="1"), _item("g", lq="2"), _item("h")]
    assigned, rejects = assign_splits(items, config)
    splits = {item.candidate.lq_rel: split for item, split in assigned}
    assert splits["1.png"] == splits["2.png"] and not rejects
    # The same GT in an official train and an official test set: the test copy stays.
    leaky = [_item("g", "train", lq="1"), _item("g", "test", lq="2")]
    assigned, rejects = assign_splits(leaky, config)
    assert [split for _, split in assigned] == ["test"]
    assert rejects[0].stage == "split" and "leakage" in rejects[0].reason
    assert not find_leaks((item.hq_hash, split) for item, split in assigned)
    assert find_leaks([("a", "train"), ("a", "test"), ("b", "val")]) == {"a": ["train", "test"]}


# --- plan -----------------------------------------------------------------------------------

def _captions(items):
    return {item.hq_hash: Caption(f"caption {item.candidate.rel}", "sidecar") for item in items}


def test_plan_keys_and_seeds_do_not_depend_on_other_images(tmp_path):
    config = _config(tmp_path, synthesis={"variants": 3, "crop": {"mode": "random", "size": 64},
                                          "recipes": [{"preset": "tip"}, {"type": "hazy"}]})
    items = [_item(n) for n in "abc"]
    full = plan_samples([(i, "train") for i in items], _captions(items), config)
    part = plan_samples([(items[1], "train")], _captions(items), config)
    by_key = {s.key: s for s in full}
    assert len(full) == 9 and all(s.key in by_key and by_key[s.key] == s for s in part)
    assert [s.key for s in full] == sorted(s.key for s in full)
    assert all(schema.KEY_PATTERN.match(s.key) for s in full)
    for spec in full:
        top, left, height, width = spec.crop
        assert (height, width) == (64, 64) and 0 <= top <= 512 - 64 and 0 <= left <= 640 - 64
    assert len({s.seed for s in full}) == 9
    assert all("scene_side" not in s.overrides for s in full)  # weather sized for the crop
    other_seed = plan_samples([(items[1], "train")], _captions(items),
                              _config(tmp_path, seed=1, synthesis=config.synthesis.model_dump()))
    assert {s.key for s in other_seed} == {s.key for s in part}
    assert {s.seed for s in other_seed}.isdisjoint({s.seed for s in part})


def test_photo_sized_weather_tells_the_typed_presets_the_photo_side(tmp_path):
    """``crop.weather_size: photo``: tip and DA-CLIP recipes get the 512 x 640 photo's short
    side; Real-ESRGAN (no weather) and uncropped samples get nothing."""
    crop = {"mode": "random", "size": 64, "weather_size": "photo"}
    items = [_item(n) for n in "ab"]
    for recipes, side in (([{"preset": "tip"}, {"type": "rainy"}], 512),
                          ([{"preset": "realesrgan"}], None)):
        config = _config(tmp_path, synthesis={"variants": 3, "crop": crop, "recipes": recipes})
        for spec in plan_samples([(i, "train") for i in items], _captions(items), config):
            assert spec.overrides.get("scene_side") == side, spec.recipe
    whole = _config(tmp_path, synthesis={"variants": 2, "recipes": [{"preset": "tip"}],
                                         "crop": {"weather_size": "photo"}})
    assert all("scene_side" not in s.overrides
               for s in plan_samples([(items[0], "train")], _captions(items), whole))


def test_recipe_weights_are_followed(tmp_path):
    config = _config(tmp_path, synthesis={"variants": 40, "recipes": [
        {"preset": "tip", "weight": 3}, {"preset": "realesrgan", "weight": 1}]})
    items = [_item(str(i)) for i in range(50)]
    samples = plan_samples([(i, "train") for i in items], _captions(items), config)
    share = sum(s.recipe == "tip" for s in samples) / len(samples)
    assert abs(share - 0.75) < 4.5 * np.sqrt(0.75 * 0.25 / len(samples))


def test_real_pairs_get_one_sample_with_their_label(tmp_path):
    config = _config(tmp_path, synthesis={"variants": 5})
    item = _item("gt", lq="lq")
    [spec] = plan_samples([(item, "val")], _captions([item]), config)
    assert spec.is_real and spec.label == "rainy" and spec.preset is None
    assert spec.key.endswith("-r" + item.lq_hash[:8])


def test_chunks_split_by_count_and_digest_changes_with_content(tmp_path):
    config = _config(tmp_path, synthesis={"variants": 5}, shards={"max_count": 4})
    items = [_item(n) for n in "ab"]
    samples = plan_samples([(items[0], "train"), (items[1], "test")], _captions(items), config)
    chunks = make_chunks(samples, config, "code-1")
    assert [(c.split, c.index, len(c.samples)) for c in chunks] == [
        ("train", 0, 4), ("train", 1, 1), ("test", 0, 4), ("test", 1, 1)]
    again = make_chunks(samples, config, "code-1")
    assert [c.digest for c in chunks] == [c.digest for c in again]
    assert chunks[0].digest != make_chunks(samples, config, "code-2")[0].digest
    moved = parse_dataset_config({**config.model_dump(mode="json"), "output": "/elsewhere"})
    assert chunks[0].digest == make_chunks(samples, moved, "code-1")[0].digest


# --- tar shards -----------------------------------------------------------------------------

def _write(path: Path, samples: dict[str, dict[str, bytes]], md5: bool = False):
    writer = TarShardWriter(path, md5=md5)
    for key, members in samples.items():
        writer.write(key, members)
    return writer.close()


def test_tar_shards_are_byte_deterministic_and_hashed(tmp_path):
    samples = {"k1": {"txt": b"a", "json": b"{}", "hq.png": b"x" * 700},
               "k2": {"json": b"{}", "txt": b"b", "hq.png": b"y"}}
    first = _write(tmp_path / "a.tar", samples, md5=True)
    reordered = {k: dict(reversed(list(v.items()))) for k, v in samples.items()}
    second = _write(tmp_path / "b.tar", reordered)
    data = (tmp_path / "a.tar").read_bytes()
    assert data == (tmp_path / "b.tar").read_bytes()
    assert first.sha256 == hashlib.sha256(data).hexdigest() == second.sha256
    assert first.md5 == hashlib.md5(data).hexdigest() and first.bytes == len(data)
    assert second.md5 is None
    assert first.samples == 2
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["k1.hq.png", "k1.json", "k1.txt",
                                       "k2.hq.png", "k2.json", "k2.txt"]
    assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o644)}
    assert not list(tmp_path.glob(".*.tmp"))


def test_projected_size_is_the_real_size(tmp_path):
    writer = TarShardWriter(tmp_path / "s.tar")
    members = {"hq.png": bytes(5000), "txt": b"cap"}
    projected = writer.projected_size(members)
    writer.write("key", members)
    assert writer.close().bytes == projected


def test_dotted_keys_are_refused(tmp_path):
    writer = TarShardWriter(tmp_path / "s.tar")
    with pytest.raises(ValueError, match="no dots"):
        writer.write("a.b", {"txt": b""})
    writer.abort()
    assert not list(tmp_path.iterdir())


# --- small files ----------------------------------------------------------------------------

def test_atomic_json_is_canonical_and_temporaries_are_cleaned(tmp_path):
    write_json_atomic(tmp_path / "m.json", {"b": 1, "a": [1, 2]})
    write_json_atomic(tmp_path / "n.json", {"a": [1, 2], "b": 1})
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "n.json").read_bytes()
    temporary_path(tmp_path / "x.tar").write_bytes(b"partial")
    assert remove_temporaries(tmp_path) == 1 and not list(tmp_path.glob(".*"))


def test_rejects_round_trip_sorted(tmp_path):
    rejects = [Rejection("s", "b.png", "ingest", "truncated image data"),
               Rejection("s", "a.png", "dedupe", "duplicate of s:c.png")]
    write_rejects(tmp_path / "r.jsonl", rejects)
    assert read_rejects(tmp_path / "r.jsonl") == sorted(rejects)
    assert all(json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines())


@pytest.mark.parametrize(
    ("caption", "expected"),
    [("a dog: running", "a dog - running"), ("time:  12:30 pm", "time - 12:30 pm"),
     ("tab\there\nnew line", "tab here new line"), ("ends with colon:", "ends with colon")],
)
def test_daclip_caption_survives_their_title_split(caption, expected):
    cleaned = daclip_caption(caption)
    assert cleaned == expected
    title = f"{cleaned}: noisy"
    assert len(title.split(": ")) == 2
    rows = io.StringIO()
    csv.writer(rows, delimiter="\t", lineterminator="\n").writerow(["p.png", title])
    assert next(csv.reader(io.StringIO(rows.getvalue()), delimiter="\t")) == ["p.png", title]


@pytest.mark.parametrize("compression", [0, 1, 6])
@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53), (1, 1, 3), (300, 2, 3)])
def test_shard_png_encoder_round_trips(compression, shape):
    from uir.imageio import encode_png, load_rgb

    rng = np.random.default_rng(sum(shape) + compression)
    image = rng.integers(0, 256, shape, dtype=np.uint8)
    image[: shape[0] // 2] //= 7  # some smooth rows so filtering matters
    decoded = load_rgb(encode_png(image, compression))
    expected = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    assert np.array_equal(decoded, expected)
