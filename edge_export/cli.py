"""Command line: parse args -> build config -> call api -> map errors to exit codes.

Exit codes: 0 all passed; 1 a validation gate failed; 2 usage/config/input error (nothing
written); 3 an export failed; 4 a device failed. Errors print one line; --debug adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from edge_export import __version__, interrupts
from edge_export.errors import ConfigError, EdgeExportError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 too; keep our one-line format
        self.print_usage(sys.stderr)
        raise SystemExit(_fail(ConfigError(message, hint=f"see {self.prog} --help")))


def _fail(exc: EdgeExportError) -> int:
    print(f"error: {exc.one_line()}", file=sys.stderr)
    return exc.exit_code


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout, nothing else")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _inventory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--inventory", type=Path, metavar="FILE", help="devices file (YAML/TOML): name -> connection entry"
    )


def _latency_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", action="append", dest="devices", metavar="NAME", help="device to measure on (repeatable)"
    )
    _inventory_flag(p)
    p.add_argument("--warmup", type=int, help="warmup iterations")
    p.add_argument("--iterations", type=int, help="timed iterations")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(prog="edge-export", description="Export Hugging Face models to validated edge bundles.")
    parser.add_argument("--version", action="version", version=f"edge-export {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _export_parser(sub)
    val = sub.add_parser("validate", help="re-check a bundle (accuracy + latency)")
    val.add_argument("bundle", type=Path)
    val.add_argument("--data", type=Path)
    _latency_flags(val)
    _common(val)
    ben = sub.add_parser("bench", help="measure a bundle's latency")
    ben.add_argument("bundle", type=Path)
    _latency_flags(ben)
    _common(ben)
    tgt = sub.add_parser("targets", help="targets, recipes, and whether each is installed")
    tgt.add_argument("--families", action="store_true",
                     help="which model family (model_type) each target exports, and why not where it cannot")  # fmt: skip
    _common(tgt)
    dev = sub.add_parser("devices", help="known devices, their facts and runtimes")
    dev.add_argument("--check", action="store_true", help="ask each device for its facts and runtimes")
    dev.add_argument("--config", type=Path, help="config file whose `inventory:` declares devices")
    _inventory_flag(dev)
    _common(dev)
    _cache_parser(sub)
    from edge_export.lab.cli import add_lab_parser

    add_lab_parser(sub, _Parser, _common, _inventory_flag)
    return parser


def _export_parser(sub: Any) -> None:
    exp = sub.add_parser("export", help="export, validate and measure a model")
    exp.add_argument("model", help="HF model folder, hub id, or .gguf file")
    exp.add_argument("--task", help="feature-extraction, text-classification, fill-mask, text-generation")
    exp.add_argument(
        "--target", action="append", dest="targets", help="onnx[,coreml,executorch,tflite] or all"
    )
    exp.add_argument(
        "--quantize", action="append", help="fp32,fp16,int8,int4 (recommended recipe per target)"
    )
    exp.add_argument(
        "--recipe",
        action="append",
        dest="recipes",
        metavar="ID",
        help="exact recipe id(s), e.g. onnx:int8-static or onnx:fp32,coreml:int8-w8a8 (repeatable)",
    )
    exp.add_argument("--config", type=Path, help="YAML or TOML config file (flags override it)")
    exp.add_argument("--out", type=Path, help="output folder (default edge-export-out)")
    exp.add_argument("--data", type=Path, help="real text for validation and calibration (.txt or .jsonl)")
    exp.add_argument("--force", action="store_true", default=None, help="replace an existing output folder")
    exp.add_argument(
        "--allow-pickle", action="store_true", default=None, help="allow pickle checkpoints (runs code)"
    )
    exp.add_argument(
        "--trust-remote-code", action="store_true", default=None, help="allow the model's own code"
    )
    exp.add_argument(
        "--require-full-delegation",
        action="store_true",
        default=None,
        help="fail a result when any operator runs outside the accelerator delegate",
    )
    exp.add_argument(
        "--cache", nargs="?", const="", type=str, metavar="DIR",
        help="reuse unchanged exports from an export cache (DIR, else $EDGE_EXPORT_CACHE or ~/.cache/edge-export)",
    )  # fmt: skip
    exp.add_argument("--no-validate", action="store_true", help="skip accuracy validation")
    exp.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    _latency_flags(exp)
    _common(exp)


def _cache_parser(sub: Any) -> None:
    cache = sub.add_parser("cache", help="the export cache: list or prune cached exports")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    for name, text in (("ls", "list cached exports"), ("prune", "remove least recently used exports")):
        c = cache_sub.add_parser(name, help=text)
        c.add_argument("--cache", type=Path, metavar="DIR", help="cache folder (default $EDGE_EXPORT_CACHE or ~/.cache/edge-export)")  # fmt: skip
        if name == "prune":
            c.add_argument("--max-size", required=True, metavar="SIZE", help="keep at most this much, e.g. 20G, 500M")  # fmt: skip
        _common(c)


def _export_config(args: argparse.Namespace) -> Any:
    from edge_export.config import build_config, config_warnings, read_config_file

    file_values = read_config_file(args.config) if args.config else {}
    flags: dict[str, Any] = {
        "model": args.model, "task": args.task, "targets": args.targets, "quantize": args.quantize,
        "recipes": args.recipes, "out": args.out, "force": args.force, "allow_pickle": args.allow_pickle,
        "trust_remote_code": args.trust_remote_code, "devices": args.devices,
        "require_full_delegation": args.require_full_delegation,
        "cache": None if args.cache is None else (Path(args.cache) if args.cache else _default_cache()),
    }  # fmt: skip
    if args.inventory:
        flags["inventory"] = {**file_values.get("inventory", {}), **_inventory_data(args.inventory)}
    nested = _nested_flags(args)
    if args.no_validate:
        nested["validation"]["enabled"] = False
    if args.no_latency:
        nested["latency"]["enabled"] = False
    flags.update({k: v for k, v in nested.items() if v})
    cfg = build_config(file_values, flags)
    for warning in config_warnings(cfg, file_values, flags):
        print(f"warning: {warning}", file=sys.stderr)
    return cfg


def _default_cache() -> Path:
    from edge_export.cache import default_cache_dir

    return default_cache_dir()


def _inventory_data(path: Path) -> dict[str, Any]:
    from edge_export.config import read_config_file

    data = read_config_file(path, "--inventory")
    return data["inventory"] if set(data) == {"inventory"} else data


def _inventory(args: argparse.Namespace) -> dict[str, Any]:
    """The devices declared by --config (its `inventory:`) and --inventory, validated."""
    from edge_export.config import read_config_file
    from edge_export.devices.inventory import parse_inventory, read_inventory

    specs: dict[str, Any] = {}
    if getattr(args, "config", None):
        specs.update(
            parse_inventory(read_config_file(args.config).get("inventory", {}), f"--config {args.config}")
        )
    if getattr(args, "inventory", None):
        specs.update(read_inventory(args.inventory))
    return specs


def _latency_config(values: dict[str, Any]) -> Any:
    """`bench`'s latency settings from its flags; an out-of-range count names the flag."""
    from pydantic import ValidationError

    from edge_export.config import LatencyConfig, explain

    try:
        return LatencyConfig(**values)
    except ValidationError as exc:
        raise explain(exc, LatencyConfig, {("latency", k) for k in values}, ("latency",)) from exc


def _nested_flags(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    latency = {k: getattr(args, k) for k in ("warmup", "iterations") if getattr(args, k, None) is not None}
    validation = {"data": args.data} if getattr(args, "data", None) else {}
    return {"latency": latency, "validation": validation}


def _dispatch(args: argparse.Namespace) -> int:
    from edge_export import api
    from edge_export.report.progress import Progress
    from edge_export.report.result import failure_lines
    from edge_export.report.table import emit, print_devices, print_families, print_targets

    if args.command == "targets":
        if args.families:
            print_families(api.families_info(), args.json)
        else:
            print_targets(api.targets_info(), args.json)
        return 0
    if args.command == "devices":
        info = api.devices_info(check=args.check, inventory=_inventory(args))
        print_devices(info, args.json)
        unreachable = [d for d in info if d.get("reachable") is False]
        for device in unreachable:
            print(f"error: {device['error']}", file=sys.stderr)
        return 4 if unreachable else 0
    if args.command == "cache":
        from edge_export.cache import cache_command

        return cache_command(args)
    if args.command == "lab":
        from edge_export.lab.cli import lab_command

        return lab_command(args)
    progress = Progress(enabled=False if args.json else None)
    if args.command == "export":
        report, code = api.export(_export_config(args), progress)
    elif args.command == "validate":
        report, code = api.validate(args.bundle, _validate_overrides(args), progress)
    else:
        lat = _latency_config(_nested_flags(args)["latency"])
        report, code = api.bench(args.bundle, args.devices or ["local"], lat, _inventory(args))
    emit(report, args.json)
    for line in failure_lines(report):
        print(f"error: {line}", file=sys.stderr)
    return code


def _validate_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {k: v for k, v in _nested_flags(args).items() if v}
    if args.devices:
        overrides["devices"] = args.devices
    inventory = _inventory(args)
    if inventory:
        overrides["inventory"] = inventory
    return overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `edge-export` console script."""
    args = build_parser().parse_args(argv)
    if argv is None:  # the console script, not an embedding caller: signals clean up, exit 128 + n
        interrupts.install()
        scratch = interrupts.private_tmpdir()
        try:
            scratch.__enter__()
        except OSError as exc:  # TMPDIR missing, full or not writable
            from edge_export.files import describe_os_error

            return _fail(describe_os_error(exc, "TMPDIR"))
        try:
            return _main(args)
        finally:
            scratch.__exit__(None, None, None)
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        return _dispatch(args)
    except EdgeExportError as exc:
        if args.debug:
            traceback.print_exc()
        return _fail(exc)
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written at the output folder", file=sys.stderr)
        return 130
    except OSError as exc:  # the user's paths or machine (permissions, full disk, ...), not a bug
        from edge_export.files import USER_ERRNOS, describe_os_error

        if exc.errno not in USER_ERRNOS:
            return _unexpected(exc, args.debug)
        if args.debug:
            traceback.print_exc()
        return _fail(describe_os_error(exc))
    except Exception as exc:  # a bug or an unforeseen library failure: still one line, exit 3
        return _unexpected(exc, args.debug)


def _unexpected(exc: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    first = (str(exc).strip().splitlines() or [""])[0]
    print(
        f"error: unexpected {type(exc).__name__}: {first} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
