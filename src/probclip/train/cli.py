"""``probclip train --config FILE.yaml [--section.key value ...]`` (also ``python -m probclip.train`` / torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from ..cli import run_command
from .config import load_config, parse_override_args
from .loop import train

__all__ = ["main"]

_EPILOG = """\
Overrides: any config key as --section.key VALUE (YAML-parsed), e.g.
  --optim.lr 1e-4 --run.steps 2000 --data.paths 'shards/{00000..00099}.tar' --loss.kwargs '{vib_beta: 0}'
A list of several patterns: --data.paths '["a/{000..009}.tar", "b/{000..009}.tar"]' (quote braces inside a list).
Sections: model, data, loss, masking, optim, run, eval (see docs/training.md).
Resume the newest checkpoint of the run directory with --resume latest; start over in a directory that holds
checkpoints only with --run.overwrite true. Errors print one line; --debug (or PROBCLIP_DEBUG=1) adds the traceback.
Many processes: torchrun --nproc_per_node N -m probclip.train --config FILE.yaml
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probclip train",
        description="Train or fine-tune a probabilistic (or baseline) image-text model from a YAML config.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--config", help="YAML training config (defaults are used for absent keys)")
    parser.add_argument("--resume", help="'latest' or a checkpoint directory (same as --run.resume)")
    parser.add_argument("--output-dir", help="run directory (same as --run.output_dir)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, print where the model is; returns the exit status (errors: one line on stderr)."""
    return run_command("train", _train_command, sys.argv[1:] if argv is None else argv)


def _train_command(argv: list[str]) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    overrides = parse_override_args(rest)
    if args.resume is not None:
        overrides.setdefault("run", {})["resume"] = args.resume
    if args.output_dir is not None:
        overrides.setdefault("run", {})["output_dir"] = args.output_dir
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    result = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"trained {result.steps} steps ({result.samples} samples) in {result.seconds:.1f} s; "
            f"stop: {result.stop_reason}; skipped samples: {result.skipped_samples}; "
            f"non-finite steps: {result.nonfinite_steps}\n"
            f"checkpoint: {result.checkpoint}\nlog: {result.log_path}"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
