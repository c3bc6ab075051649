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


class CommandError(Exception):
    """An expected failure: reported as one line, exit code 2."""


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


def _overrides(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from uir.imageio import ImageDecodeError

    try:
        if args.plugin:
            from degradations.plugins import load_modules

            load_modules(args.plugin)
        args.run(args)
    except (CommandError, ImageDecodeError, ImportError) as err:
        print(f"uir: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
        return 0
    except OSError as err:
        print(f"uir: error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
