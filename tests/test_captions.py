"""Captions run through the real BlipCaptioner code path on a tiny random-weight BLIP saved to
tmp_path, so no download is needed; its captions are nonsense but deterministic."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest

from uir.dataset.captions import (
    DEFAULT_BLIP_MODEL,
    SIDECAR_CAPTIONER,
    BlipCaptioner,
    Caption,
    CaptionCache,
    CaptionError,
    CaptionRequest,
    caption_all,
)
from uir.imageio import load_rgb, save_image

WORDS = "a an the cat dog on sits red blue sky over tree with and of in man woman car road"


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A two-layer BLIP with a 26-token vocabulary, built once and saved like a real checkpoint."""
    torch = pytest.importorskip("torch")
    # A 32-wide model gains nothing from threads, and spinning OpenMP workers stall for seconds
    # when other jobs share the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    transformers = pytest.importorskip("transformers")
    # The real checkpoint's layout: BERT specials, then words, then the [DEC] start token.
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split(), "[DEC]"]
    tokenizer = transformers.BertTokenizer(
        vocab={token: index for index, token in enumerate(tokens)}, bos_token="[DEC]"
    )
    sep = tokenizer.sep_token_id
    config = transformers.BlipConfig(
        text_config={
            "vocab_size": len(tokens),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            # generate() starts from bos and stops at sep, so they must be the tokenizer's.
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": sep,
            "eos_token_id": sep,
            "pad_token_id": tokenizer.pad_token_id,
            # Larger than the default 0.02 so the words depend on the image.
            "initializer_range": 0.3,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 16,
            # The default 1e-10 makes every image look the same to the decoder.
            "initializer_range": 0.2,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(0)
    model = transformers.BlipForConditionalGeneration(config)
    with torch.no_grad():
        # Some captions end early, so batches mix finished (padded) and running sequences.
        model.text_decoder.cls.predictions.bias[sep] = 1.0
    processor = transformers.BlipProcessor(
        image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    directory = tmp_path_factory.mktemp("tiny-blip")
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    yield directory
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    """Two-tone images of different sizes; one only 3 pixels high, which is ambiguous about
    whether channels come first."""
    rng = np.random.default_rng(0)
    out = []
    for index in range(7):
        image = np.empty((3 if index == 6 else 40 + 5 * index, 48, 3), np.uint8)
        image[:] = rng.integers(0, 256, 3)
        image[: image.shape[0] // 2] = rng.integers(0, 256, 3)
        out.append(image)
    return out


class RecordingCaptioner(BlipCaptioner):
    """The real captioner, recording batch sizes and, like a crash, failing on one call."""

    def __init__(self, model: Path, *, batch_size: int = 2, fail_on_call: int = 0) -> None:
        super().__init__(str(model), batch_size=batch_size)
        self.batches: list[int] = []
        self.fail_on_call = fail_on_call

    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        self.batches.append(len(images))
        if len(self.batches) == self.fail_on_call:
            raise RuntimeError("simulated crash")
        return super().caption(images)


def _requests(directory: Path, images: list[np.ndarray], first: int = 0) -> list[CaptionRequest]:
    requests = []
    for index, image in enumerate(images, start=first):
        path = directory / f"hq{index}.png"
        save_image(path, image)
        requests.append(CaptionRequest(f"{index:064x}", path))
    return requests


def test_batches_match_one_by_one_and_runs_repeat(tiny_blip, images):
    batched = BlipCaptioner(str(tiny_blip), batch_size=3).caption(images)
    single = BlipCaptioner(str(tiny_blip), batch_size=1)
    assert [single.caption([image])[0] for image in images] == batched
    assert BlipCaptioner(str(tiny_blip), batch_size=7).caption(images) == batched
    assert len(set(batched)) > 1  # the words depend on the image, so the checks above have teeth
    for text in batched:
        assert text == " ".join(text.split())  # one line, no tabs, no doubled or outer spaces
        assert "[" not in text  # special tokens are dropped


def test_load_is_lazy_and_explicit(tiny_blip, images):
    captioner = BlipCaptioner(str(tiny_blip), device="cpu", fp16=False)
    assert captioner.caption([]) == []
    captioner.load()
    assert len(captioner.caption(images[:2])) == 2


def test_caption_rejects_non_rgb(tiny_blip):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        BlipCaptioner(str(tiny_blip)).caption([np.zeros((8, 8), np.uint8)])


def test_id_names_hub_model_and_local_content(tiny_blip, tmp_path):
    assert BlipCaptioner().id == f"blip:{DEFAULT_BLIP_MODEL}:greedy:32"
    local = BlipCaptioner(str(tiny_blip)).id
    assert local.startswith("blip:local:") and local.endswith(":greedy:32")
    copy = shutil.copytree(tiny_blip, tmp_path / "elsewhere" / "blip")
    (copy / "README.md").write_text("notes do not change the captions")
    assert BlipCaptioner(str(copy)).id == local
    assert BlipCaptioner(str(copy), max_new_tokens=20).id != local
    weights = copy / "model.safetensors"
    tuned = bytearray(weights.read_bytes())
    tuned[-1] ^= 1  # like a fine-tuned model: same config, same file sizes, other weights
    weights.write_bytes(tuned)
    assert BlipCaptioner(str(copy)).id != local


def test_cache_serves_second_run_and_new_hash_only(tiny_blip, images, tmp_path):
    requests = _requests(tmp_path, images[:4])
    with CaptionCache(tmp_path / "cache" / "captions.sqlite") as cache:
        first = RecordingCaptioner(tiny_blip)
        captions = caption_all(
            requests, source="blip", cache=cache, captioner_factory=lambda: first
        )
        assert first.batches == [2, 2]
        assert list(captions) == [request.hq_hash for request in requests]
        assert {caption.captioner for caption in captions.values()} == {first.id}
        assert len(cache) == 4

        cached = RecordingCaptioner(tiny_blip, fail_on_call=1)  # any captioning would fail
        again = caption_all(requests, source="blip", cache=cache, captioner_factory=lambda: cached)
        assert again == captions
        assert cached.batches == []

        more = [*requests, *_requests(tmp_path, images[4:5], first=4)]
        new = RecordingCaptioner(tiny_blip)
        grown = caption_all(more, source="blip", cache=cache, captioner_factory=lambda: new)
        assert new.batches == [1]
        assert {key: grown[key] for key in captions} == captions
        assert len(cache) == 5


def test_each_batch_is_committed_before_a_crash(tiny_blip, images, tmp_path):
    requests = _requests(tmp_path, images[:5])
    cache_path = tmp_path / "captions.sqlite"
    crashing = RecordingCaptioner(tiny_blip, fail_on_call=2)
    with CaptionCache(cache_path) as cache, pytest.raises(RuntimeError, match="simulated crash"):
        caption_all(requests, source="blip", cache=cache, captioner_factory=lambda: crashing)
    with CaptionCache(cache_path) as cache:
        assert set(cache.get_many([r.hq_hash for r in requests], crashing.id)) == {
            requests[0].hq_hash,
            requests[1].hq_hash,
        }
        rerun = RecordingCaptioner(tiny_blip)
        done: list[tuple[int, int]] = []
        captions = caption_all(
            requests,
            source="blip",
            cache=cache,
            captioner_factory=lambda: rerun,
            progress=lambda count, total: done.append((count, total)),
        )
    assert rerun.batches == [2, 1]
    assert done == [(2, 5), (4, 5), (5, 5)]
    straight = BlipCaptioner(str(tiny_blip)).caption([load_rgb(r.path) for r in requests])
    assert [caption.text for caption in captions.values()] == straight


def test_duplicate_hashes_are_captioned_once(tiny_blip, images, tmp_path):
    (request,) = _requests(tmp_path, images[:1])
    twin = tmp_path / "copy.png"
    shutil.copy(request.path, twin)
    captioner = RecordingCaptioner(tiny_blip)
    with CaptionCache(tmp_path / "captions.sqlite") as cache:
        captions = caption_all(
            [request, CaptionRequest(request.hq_hash, twin)],
            source="blip",
            cache=cache,
            captioner_factory=lambda: captioner,
        )
    assert list(captions) == [request.hq_hash]
    assert captioner.batches == [1]


def test_sidecar_captions_are_single_lines_and_need_no_model(images, tmp_path):
    requests = _requests(tmp_path, images[:2])
    requests[0].path.with_suffix(".txt").write_text(
        "\ufeff  a red\tcar\r\n on a  road \n", encoding="utf-8"
    )
    requests[1].path.with_suffix(".txt").write_text("a blue sky")

    def no_blip() -> BlipCaptioner:
        raise AssertionError("sidecar captions must not build a captioner")

    done: list[tuple[int, int]] = []
    with CaptionCache(tmp_path / "captions.sqlite") as cache:
        captions = caption_all(
            requests,
            source="sidecar",
            cache=cache,
            captioner_factory=no_blip,
            progress=lambda count, total: done.append((count, total)),
        )
        assert len(cache) == 0
    assert list(captions.values()) == [
        Caption("a red car on a road", SIDECAR_CAPTIONER),
        Caption("a blue sky", SIDECAR_CAPTIONER),
    ]
    assert done == [(2, 2)]


@pytest.mark.parametrize("content", [None, " \n\t"], ids=["missing", "blank"])
def test_sidecar_source_needs_every_sidecar(images, tmp_path, content):
    requests = _requests(tmp_path, images[:2])
    requests[0].path.with_suffix(".txt").write_text("a cat")
    if content is not None:
        requests[1].path.with_suffix(".txt").write_text(content)
    with (
        CaptionCache(tmp_path / "captions.sqlite") as cache,
        pytest.raises(CaptionError, match=r"hq1\.txt: caption sidecar is missing or empty"),
    ):
        caption_all(requests, source="sidecar", cache=cache)


def test_sidecar_or_blip_mixes_sources(tiny_blip, images, tmp_path):
    requests = _requests(tmp_path, images[:4])
    requests[1].path.with_suffix(".txt").write_text("a dog on a tree")
    requests[3].path.with_suffix(".txt").write_text("   ")  # blank counts as no sidecar
    captioner = RecordingCaptioner(tiny_blip, batch_size=8)
    with CaptionCache(tmp_path / "captions.sqlite") as cache:
        captions = caption_all(
            requests, source="sidecar-or-blip", cache=cache, captioner_factory=lambda: captioner
        )
        assert len(cache) == 3  # only BLIP captions are cached; sidecars are read each time
    assert captioner.batches == [3]
    assert captions[requests[1].hq_hash] == Caption("a dog on a tree", SIDECAR_CAPTIONER)
    blip = BlipCaptioner(str(tiny_blip)).caption([load_rgb(requests[i].path) for i in (0, 2, 3)])
    assert [captions[requests[i].hq_hash] for i in (0, 2, 3)] == [
        Caption(text, captioner.id) for text in blip
    ]


def test_blip_source_ignores_sidecars(tiny_blip, images, tmp_path):
    requests = _requests(tmp_path, images[:1])
    requests[0].path.with_suffix(".txt").write_text("a dog")
    with CaptionCache(tmp_path / "captions.sqlite") as cache:
        captions = caption_all(
            requests,
            source="blip",
            cache=cache,
            captioner_factory=lambda: RecordingCaptioner(tiny_blip),
        )
    assert captions[requests[0].hq_hash].captioner.startswith("blip:local:")


def test_unknown_source_is_refused(tmp_path):
    with (
        CaptionCache(tmp_path / "captions.sqlite") as cache,
        pytest.raises(ValueError, match="source"),
    ):
        caption_all([], source="clip", cache=cache)  # type: ignore[arg-type]


@pytest.mark.parametrize("where", ["hub", "local"])
def test_unloadable_model_says_how_to_provide_weights(tmp_path, monkeypatch, where):
    pytest.importorskip("transformers")
    if where == "hub":
        # Set after huggingface_hub was imported: the captioner must still read it.
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        model = "uir-forge-tests/no-such-blip"
    else:
        model = str(tmp_path / "no-such-dir")
    with pytest.raises(CaptionError) as raised:
        BlipCaptioner(model).load()
    message = str(raised.value)
    assert "\n" not in message
    assert f"BLIP model {model!r} could not be loaded offline" in message
    assert f"hf download {DEFAULT_BLIP_MODEL}" in message
    assert "captions.model in params.yaml" in message
    assert "captions.source: sidecar" in message


def test_cache_is_shared_between_connections_and_survives_reopening(tmp_path):
    path = tmp_path / "captions.sqlite"
    with CaptionCache(path) as writer, CaptionCache(path) as reader:
        writer.put_many({"aa": "a cat", "bb": "a dog"}, "blip:x")
        writer.put_many({"aa": "a kitten"}, "blip:y")
        assert reader.get_many(["aa", "bb", "cc"], "blip:x") == {"aa": "a cat", "bb": "a dog"}
        assert reader.get_many(["aa"], "blip:y") == {"aa": "a kitten"}
        reader.put_many({"aa": "a tabby cat"}, "blip:x")
        assert writer.get_many(["aa"], "blip:x") == {"aa": "a tabby cat"}
    with CaptionCache(path) as reopened:
        assert len(reopened) == 3
        many = {f"{index:08x}": f"caption {index}" for index in range(1200)}
        reopened.put_many(many, "blip:z")
        assert reopened.get_many([*many, *many], "blip:z") == many


def test_cache_takes_writes_from_several_processes(tmp_path):
    path = tmp_path / "captions.sqlite"
    writer = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from uir.dataset.captions import CaptionCache
        with CaptionCache(Path(sys.argv[1])) as cache:
            for index in range(100):
                cache.put_many({f"{sys.argv[2]}{index}": "a caption"}, "blip:x")
        """
    )
    processes = [subprocess.Popen([sys.executable, "-c", writer, str(path), name]) for name in "ab"]
    assert [process.wait(timeout=60) for process in processes] == [0, 0]
    with CaptionCache(path) as cache:
        assert len(cache) == 200


def _open_and_write(path: str, barrier: Barrier, failures: Queue) -> None:
    barrier.wait()  # every process opens the new file at the same instant
    try:
        with CaptionCache(Path(path)) as cache:
            cache.put_many({"aa": "a cat"}, "blip:x")
    except Exception as err:  # reported to the parent, which fails the test with it
        failures.put(repr(err))


def test_processes_opening_a_new_cache_together_all_get_it(tmp_path):
    """Switching a new file to WAL answered "database is locked" at once, without waiting,
    when processes opened it together. A race: before the retry, 6 of 600 openings failed in
    a stress run and this test failed in about half of its runs; after it, none in 600 more."""
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    for trial in range(50):
        barrier = context.Barrier(6)
        path = str(tmp_path / f"captions-{trial}.sqlite")
        processes = [
            context.Process(target=_open_and_write, args=(path, barrier, failures))
            for _ in range(6)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
        assert [process.exitcode for process in processes] == [0] * 6
    assert failures.empty(), failures.get()
