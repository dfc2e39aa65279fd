"""``probclip models``: list the registered configurations, show one, or convert a checkpoint's layout."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ..cli import run_command
from ..errors import InputError, ProbclipError
from .config import ProbCLIPConfig
from .convert import convert_checkpoint
from .hub import resolve_model_config
from .model import ProbCLIP
from .registry import get_model_config, list_models


def _summary(config: ProbCLIPConfig) -> str:
    with torch.device("meta"):
        n_params = sum(p.numel() for p in ProbCLIP(config).parameters())
    v, t = config.vision, config.text
    return (
        f"D={config.embed_dim:<5d} image {v.image_size}px/p{v.patch_size} {v.layers}x{v.width}  "
        f"text ctx {t.context_length} {t.layers}x{t.width} ({t.tokenizer['type']})  {n_params / 1e6:8.2f}M params"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="probclip models", description=__doc__)
    sub = parser.add_subparsers(dest="action")
    list_p = sub.add_parser("list", help="list registered model names (the default action)")
    list_p.add_argument("--names-only", action="store_true", help="print only the names")
    show = sub.add_parser("show", help="print the config JSON of a model name, checkpoint directory or hf-hub: id")
    show.add_argument("source")
    convert = sub.add_parser("convert", help="rewrite a checkpoint in the released or the probclip layout")
    convert.add_argument("source", help="checkpoint directory or hf-hub:owner/repo")
    convert.add_argument("dest", help="output directory")
    convert.add_argument("--to", choices=("released", "probclip"), required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``probclip models``; returns the exit status (errors: one line on stderr)."""
    return run_command("models", _models_command, sys.argv[1:] if argv is None else argv)


def _models_command(argv: list[str]) -> int:
    args = _build_parser().parse_args(argv)
    action = args.action or "list"
    try:
        if action == "list":
            names = list_models()
            width = max(len(n) for n in names)
            for name in names:
                print(
                    name
                    if getattr(args, "names_only", False)
                    else f"{name.ljust(width)}  {_summary(get_model_config(name))}"
                )
        elif action == "show":
            print(json.dumps(resolve_model_config(args.source).to_dict(), indent=2, sort_keys=True))
        elif action == "convert":
            convert_checkpoint(args.source, args.dest, args.to)
            print(f"wrote {args.to} checkpoint to {args.dest}")
    except ProbclipError:
        raise
    except (KeyError, ValueError) as err:  # a checkpoint whose config or keys cannot be read or converted
        raise InputError(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)) from err
    return 0
