"""The ``uir`` command line: thin argument handling over the library.

Expected failures (bad images, bad prompts, bad configs) print one line and exit 2; heavy
modules are imported inside commands so that ``uir degrade`` stays small in memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

EXIT_USAGE = 2
EXIT_VERIFY = 1


class CommandError(Exception):
    """An expected failure: reported as one line, exit code 2."""


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as overrides; values are YAML (numbers, lists, ...)."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def _overrides(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    overrides = _parse_sets(args.set)
    if getattr(args, "scale", None) is not None:
        key = getattr(config_type, "scale_key", None)
        if key is None:
            _fail(f"pipeline {args.pipeline!r} has no scale to set")
        overrides[key] = args.scale
    if getattr(args, "prompt", None) is not None:
        if "prompt" not in config_type.model_fields:
            _fail("--prompt needs --pipeline prompt")
        overrides["prompt"] = args.prompt
    return overrides


def _config_error(err: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"invalid config {where}: {first['msg']}"
    return str(err.args[0] if err.args else err)


def _side_inputs(path: str) -> dict[str, Any]:
    """Sidecars next to the input image: ``<stem>.depth.png`` feeds the haze model."""
    from uir.imageio import read_depth, sidecar

    depth = sidecar(Path(path), ".depth.png")
    return {"depth": read_depth(depth)} if depth else {}


def cmd_degrade(args: argparse.Namespace) -> None:
    import degradations
    from degradations.presets import resolve_preset
    from uir.imageio import load_rgb, save_image

    try:
        spec = degradations.PIPELINES[resolve_preset(args.pipeline).pipeline]
    except (KeyError, ValueError) as err:
        _fail(_config_error(err))
    image = load_rgb(args.input)
    try:
        sample = degradations.synthesize_sample(
            image, args.pipeline, args.seed, inputs=_side_inputs(args.input),
            **_overrides(args, spec.config_type),
        )
    except (ValueError, KeyError) as err:
        _fail(_config_error(err))
    lq, record = sample.lq, sample.record
    record["source"] = str(args.input)
    save_image(args.output, lq)
    if "mask" in sample.extras:
        mask_path = Path(args.output).with_suffix(".mask.png")
        save_image(mask_path, sample.extras["mask"] * 255)
        print(f"{mask_path}: mask (255 = hole)")
    record_path = Path(args.record) if args.record else Path(args.output).with_suffix(".json")
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    size = f"{lq.shape[1]}x{lq.shape[0]}"
    print(f"{args.output}: {size}  {record['prompt']}  (record: {record_path})")


def cmd_replay(args: argparse.Namespace) -> None:
    import degradations
    from uir.imageio import load_rgb, save_image

    try:
        record = json.loads(Path(args.record).read_text())
    except (OSError, json.JSONDecodeError) as err:
        _fail(f"{args.record}: cannot read record: {err}")
    image = load_rgb(args.input)
    try:
        lq = degradations.replay_sample(image, record, _side_inputs(args.input)).lq
    except (ValueError, KeyError) as err:
        _fail(str(err.args[0] if err.args else err))
    save_image(args.output, lq)
    print(f"{args.output}: {lq.shape[1]}x{lq.shape[0]} replayed from {args.record}")


def cmd_prompt_parse(args: argparse.Namespace) -> None:
    from degradations import PromptError, parse_prompt

    try:
        print(json.dumps(parse_prompt(args.text).to_json()))
    except PromptError as err:
        _fail(str(err))


def cmd_prompt_render(args: argparse.Namespace) -> None:
    from degradations import PromptError, RestorationPrompt, render_prompt

    text = sys.stdin.read() if args.json == "-" else args.json
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        _fail(f"not JSON: {err}")
    try:
        print(render_prompt(RestorationPrompt.from_json(data)))
    except PromptError as err:
        _fail(str(err))


def cmd_list(args: argparse.Namespace) -> None:
    import degradations
    from degradations.presets import available_presets, resolve_preset

    print("presets:")
    for name in available_presets():
        print(f"  {name:<12} -> pipeline {resolve_preset(name).pipeline}")
    print("pipelines:")
    for spec in degradations.PIPELINES.values():
        print(f"  {spec.name:<12} v{spec.version}  {spec.doc}")
    print("degradation types:")
    for kind in sorted(degradations.DEGRADATIONS.values(), key=lambda k: k.order):
        ranges = ", ".join(f"{p.name} {p.low:g}-{p.high:g}" for p in kind.params)
        print(f"  {kind.name:<16} {kind.template:<32} ({ranges})  {kind.doc}")
    print("ops:")
    for op in degradations.OPS.values():
        print(f"  {op.name:<16} {op.doc}")


def cmd_preview(args: argparse.Namespace) -> None:
    from uir.imageio import save_image
    from uir.preview import pipeline_sheet, types_sheet

    if not args.all and not args.pipeline:
        _fail("give --pipeline NAME or --all")
    try:
        sheet = types_sheet(args.seed) if args.all else pipeline_sheet(args.pipeline, args.seed)
    except (ValueError, KeyError) as err:
        _fail(_config_error(err))
    save_image(args.out, sheet)
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


def cmd_demo(args: argparse.Namespace) -> None:
    from uir.demo_job import run_demo

    run_demo(Path(args.out), seed=args.seed, pipelines=args.pipeline)


def _build_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = _parse_sets(args.set)
    if args.workers:
        overrides["runner.workers"] = args.workers
    return overrides


def cmd_build(args: argparse.Namespace) -> None:
    from uir.dataset.config import ConfigError, dataset_names, load_dataset_config
    from uir.quality.job import QualityError, load_job, split_overrides
    from uir.quality.run import resolve_steps

    overrides = _build_overrides(args)
    dataset_overrides, quality_overrides = split_overrides(overrides)
    requested = [step.strip() for step in args.steps.split(",")] if args.steps else None
    try:
        name = args.dataset
        if name is None:
            names = dataset_names(args.params)
            if len(names) != 1:
                _fail(f"{args.params} defines {', '.join(names)}: name the dataset to build")
            name = names[0]
        config = load_dataset_config(name, args.params, dataset_overrides)
        job = load_job(name, args.params, dataset_overrides, quality_overrides)
        steps = resolve_steps(requested, job is not None)
    except (ConfigError, QualityError) as err:
        _fail(str(err))
    from uir.dataset.captions import CaptionError

    trained = None
    try:
        if args.engine == "local":
            if args.train:
                _fail("--train runs the training flows: use the prefect engine")
            from uir.dataset.build import run_build, stderr_progress

            progress = stderr_progress(config.name)
            base = run_build(config, progress=progress).manifest if "base" in steps else None
            labelled = None
            if job is not None and set(steps) - {"base"}:
                from uir.quality.run import run_quality

                workers = args.workers or config.runner.workers
                labelled = run_quality(job, steps, workers=workers, progress=progress)
        else:
            from flows.build_dataset import build_dataset

            result = build_dataset(
                name, params=str(args.params), overrides=overrides, dvc_commit=args.dvc_commit,
                steps=steps, train=args.train,
            )
            base, labelled = result["base"], result["quality"]
            trained = result["training"]
    except (ConfigError, CaptionError, QualityError) as err:
        _fail(str(err))
    if base is not None:
        counts = base["counts"]
        print(
            f"built {config.name} {config.version} in {config.output_dir}: {counts['samples']} "
            f"samples in {len(base['shards'])} shards; seen {counts['seen']}, accepted "
            f"{counts['accepted']}, rejected {counts['rejected']}"
        )
    if labelled is not None and job is not None:
        quality = labelled["quality"]
        print(
            f"labelled {config.name} in {job.output_dir}: {labelled['counts']['samples']} "
            f"samples in {len(labelled['shards'])} shards; dropped {quality['dropped']}, "
            f"flagged {quality['flagged']}; perceiver val accuracy {quality['val']['accuracy']} "
            f"(chance {quality['val']['chance']}, p {quality['val']['p_above_chance']}); mean "
            f"PSNR LQ {quality['psnr_lq']} -> MQ {quality['psnr_mq']} dB, better on "
            f"{quality['types_where_mq_beats_lq']} of {quality['types_with_psnr']} types"
        )
    elif set(steps) - {"base"}:
        print(f"{config.name}: steps {', '.join(steps)} done")
    if trained is not None:
        from uir.training.evaluate import report_markdown

        print(report_markdown(trained["evaluate"]), end="")


def cmd_train(args: argparse.Namespace) -> None:
    import logging

    from uir.dataset.config import ConfigError
    from uir.training.config import STEPS
    from uir.training.job import TrainingError
    from uir.training.launch import LaunchError, launch
    from uir_models.data import DatasetError

    # Progress of our loops only: open_clip logs every model it builds at INFO.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    for name in ("uir", "uir_models"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        logger.propagate = False  # a library may have configured the root logger as well
    steps = list(STEPS) if args.step == "all" else [args.step]
    overrides = _parse_sets(args.set)
    for step in steps:
        try:
            result = launch(
                step,
                args.params,
                profile=args.profile,
                overrides=overrides,
                restorer=args.restorer,
                torchrun=args.torchrun,
            )
        except (ConfigError, TrainingError, LaunchError, DatasetError) as err:
            _fail(str(err))
        if step == "evaluate":
            from uir.training.evaluate import report_markdown

            print(report_markdown(result["evaluate"]), end="")
        else:
            print(json.dumps({step: result}, indent=1, default=str))


def cmd_verify(args: argparse.Namespace) -> int:
    from uir.dataset.verify import verify

    report = verify(Path(args.dir))
    for problem in report.problems:
        print(f"FAIL {problem}")
    if not report.ok:
        print(f"{args.dir}: {len(report.problems)} problem(s)", file=sys.stderr)
        return EXIT_VERIFY
    print(f"OK {args.dir}: {report.shards} shards, {report.samples} samples verified")
    return 0


def cmd_inspect(args: argparse.Namespace) -> None:
    from uir.dataset.verify import summary

    try:
        info = summary(Path(args.dir))
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
    if args.json:
        print(json.dumps(info, indent=1, sort_keys=True))
        return
    print(f"{info['dataset']} {info['version']}  params {info['params_hash']}  "
          f"code {info['git_commit']}")
    print(f"shards {info['shards']}  bytes {info['bytes']:,}  samples {info['samples']}")
    print(f"inputs seen {info['seen']}  accepted {info['accepted']}  rejected {info['rejected']} "
          f"{info['rejected_by_stage']}")
    for split, labels in info["labels"].items():
        shown = ", ".join(f"{label} {count}" for label, count in labels.items())
        print(f"{split:<5} {info['splits'][split]:>6}  {shown}")


def cmd_export_daclip(args: argparse.Namespace) -> None:
    from uir.dataset.config import SPLITS
    from uir.dataset.export import export_daclip_csv

    try:
        report = export_daclip_csv(Path(args.dir), Path(args.out), args.split or SPLITS,
                                   with_gt=not args.no_gt)
    except FileNotFoundError as err:
        _fail(str(err))
    written = ", ".join(f"{split} {count}" for split, count in report.written.items())
    skipped = ", ".join(f"{why} {count}" for why, count in report.skipped.items()) or "none"
    print(f"wrote DA-CLIP CSVs to {args.out}: {written or 'nothing'}; skipped {skipped}")


def cmd_serve(args: argparse.Namespace) -> None:
    from flows.serve import serve

    serve(Path(args.params), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uir", description=__doc__.split("\n")[0])
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import a degradation plugin module (repeatable)")
    commands = parser.add_subparsers(dest="command", required=True)

    degrade = commands.add_parser("degrade", help="degrade one image and record how")
    degrade.add_argument("input")
    degrade.add_argument("output", help="LQ image (.png, .jpg, .webp)")
    degrade.add_argument("--pipeline", default="realesrgan")
    degrade.add_argument("--seed", type=int, default=0)
    degrade.add_argument("--scale", type=int, choices=(1, 2, 4))
    degrade.add_argument("--record", help="record JSON (default: OUTPUT with .json)")
    degrade.add_argument("--prompt", help="restoration prompt, with --pipeline prompt")
    degrade.add_argument("--set", action="append", metavar="KEY=VALUE",
                         help="override a config field, e.g. --set second.blur_prob=1.0")
    degrade.set_defaults(run=cmd_degrade)

    replay = commands.add_parser("replay", help="re-run a record on its HQ image")
    replay.add_argument("record")
    replay.add_argument("input")
    replay.add_argument("output")
    replay.set_defaults(run=cmd_replay)

    prompt = commands.add_parser("prompt", help="parse or render restoration prompts")
    prompt_commands = prompt.add_subparsers(dest="prompt_command", required=True)
    parse = prompt_commands.add_parser("parse", help="prompt text -> JSON")
    parse.add_argument("text")
    parse.set_defaults(run=cmd_prompt_parse)
    render = prompt_commands.add_parser("render", help="JSON (or - for stdin) -> prompt text")
    render.add_argument("json")
    render.set_defaults(run=cmd_prompt_render)

    listing = commands.add_parser("list", help="registered pipelines and degradations")
    listing.set_defaults(run=cmd_list)

    preview = commands.add_parser("preview", help="contact sheet of a pipeline on the demo photos")
    preview.add_argument("--pipeline", help="preset, pipeline or preset YAML")
    preview.add_argument("--all", action="store_true", help="one row per degradation type")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--out", default="preview.png")
    preview.set_defaults(run=cmd_preview)

    demo = commands.add_parser("demo", help="degrade the embedded demo photos + contact sheet")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--pipeline", action="append", help="pipelines (default: realesrgan, tip)")
    demo.set_defaults(run=cmd_demo)

    build = commands.add_parser("build", help="build a dataset of params.yaml into shards")
    build.add_argument("dataset", nargs="?", help="dataset name in params.yaml")
    build.add_argument("--params", default="params.yaml")
    build.add_argument("--engine", choices=("prefect", "local"), default="prefect",
                       help="prefect: the build-dataset flow (no server needed); local: "
                            "the same steps on a local process pool without Prefect")
    build.add_argument("--workers", type=int, help="worker processes (default: runner.workers)")
    build.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a dataset field, e.g. --set synthesis.variants=2, or a "
                            "quality field, e.g. --set quality.proxy.iterations=50")
    build.add_argument("--steps", metavar="STEP[,STEP]",
                       help="run only these of base, proxy, render, perceiver, label "
                            "(default: base, plus the quality steps when quality.<name> exists)")
    build.add_argument("--dvc-commit", action="store_true",
                       help="record the outputs in dvc.lock afterwards (not inside dvc repro)")
    build.add_argument("--train", action="store_true",
                       help="then run the train-controller and train-restorer flows of the "
                            "training profile (prefect engine; deployments do this by default "
                            "for the profile's dataset)")
    build.set_defaults(run=cmd_build)

    training = commands.add_parser(
        "train", help="train the DA-CLIP controller and restorers of params.yaml's training "
        "profile from its dataset's shards"
    )
    training.add_argument("step", choices=("controller", "restorer", "evaluate", "all"))
    training.add_argument("--params", default="params.yaml")
    training.add_argument("--profile", help="a training.profiles entry (default: training.profile)")
    training.add_argument("--restorer", help="train only this restorer of the profile")
    training.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a field of the profile, e.g. "
                               "--set controller.train.iterations=50")
    training.add_argument("--torchrun", action=argparse.BooleanOptionalAction, default=None,
                          help="launch through torchrun even for one process (default: only "
                               "when the profile has nproc > 1 or nnodes > 1)")
    training.set_defaults(run=cmd_train)

    check = commands.add_parser("verify", help="check a built dataset byte for byte")
    check.add_argument("dir")
    check.set_defaults(run=cmd_verify)

    inspect = commands.add_parser("inspect", help="counts of a built dataset")
    inspect.add_argument("dir")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(run=cmd_inspect)

    export = commands.add_parser("export", help="write a dataset in another tool's format")
    formats = export.add_subparsers(dest="format", required=True)
    daclip = formats.add_parser("daclip-csv", help="DA-CLIP's tab-separated filepath/title CSV")
    daclip.add_argument("dir")
    daclip.add_argument("out")
    daclip.add_argument("--split", action="append", choices=("train", "val", "test"))
    daclip.add_argument("--no-gt", action="store_true", help="write only the LQ images")
    daclip.set_defaults(run=cmd_export_daclip)

    serve = commands.add_parser("serve", help="serve the build-dataset deployments "
                                "(needs PREFECT_API_URL; see scripts/serve.sh)")
    serve.add_argument("--params", default="params.yaml")
    serve.add_argument("--port", type=int, default=4200,
                       help="local server port, used when PREFECT_API_URL is not set")
    serve.set_defaults(run=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from uir.imageio import ImageDecodeError

    try:
        if args.plugin:
            from degradations.plugins import load_modules

            load_modules(args.plugin)
        code = args.run(args)
    except (CommandError, ImageDecodeError, ImportError) as err:
        print(f"uir: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
        return 0
    except OSError as err:
        print(f"uir: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
