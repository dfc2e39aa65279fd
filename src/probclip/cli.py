"""The ``probclip`` command: a thin dispatcher to the subcommands' own modules.

Each subcommand lives in the module that owns its work and exposes ``main(argv) -> int``; the
dispatcher imports it only when it is asked for, so ``probclip --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from . import __version__

SUBCOMMANDS = {
    "quickstart": ("probclip.quickstart", "train ProLIP and a SigLIP baseline on the synthetic world, write a report"),
    "train": ("probclip.train.cli", "train or fine-tune a model from a YAML config"),
    "eval": ("probclip.eval.cli", "evaluate a model on a task (zero-shot, retrieval, ...)"),
    "synth": ("probclip.synthetic.cli", "generate the synthetic world or write it as webdataset shards"),
    "models": ("probclip.models.cli", "list the registered model configurations"),
    "embed": ("probclip.search.embed_cli", "embed a collection's images and captions into shards (torchrun-ready)"),
    "index": ("probclip.search.index_cli", "build the search indexes of an embedded collection (FAISS or Milvus)"),
    "search": ("probclip.search.search_cli", "search an indexed collection by CSD, cosine or inclusion"),
    "serve": ("probclip.serve.cli", "serve indexed collections over HTTP: search API, metrics and a web page"),
}


def _usage() -> str:
    lines = ["usage: probclip <command> [options]", "", "commands:"]
    width = max(len(k) for k in SUBCOMMANDS)
    for name, (_, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run `probclip <command> --help` for the options of a command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"probclip {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"probclip: unknown command {name!r}; expected one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
