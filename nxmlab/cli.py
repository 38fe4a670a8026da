"""``nxmlab`` command line: ``train``, ``table``, ``reproduce``, ``verify``.

Bad input exits with status 2 and one line on stderr (a traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input: reported in one line, exit status 2."""


def _train(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from .recipes import NxMTrainingArguments, RunConfig, run_experiment

    parser = HfArgumentParser((RunConfig, NxMTrainingArguments), prog="nxmlab train",
                              description="Train one method on one GLUE task into the results store. "
                                          "Also accepts a single JSON/YAML config file.")
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        try:
            cfg, args = loader(argv[0])
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read config {argv[0]}: {exc}") from exc
    else:
        cfg, args = parser.parse_args_into_dataclasses(args=argv)
    metrics = run_experiment(cfg, args)
    score = 100 * metrics["score"]
    phases = ", ".join(f"{k} {v['seconds']:.0f}s" for k, v in metrics["phases"].items())
    print(f"{metrics['task']} {metrics['method']}{'+kd' if metrics['kd'] else ''}: score {score:.2f} ({phases})")
    return 0


def _table(argv: list[str]) -> int:
    from pathlib import Path

    from .report import glue_table, load_results, to_markdown

    parser = argparse.ArgumentParser(prog="nxmlab table", description="Print the GLUE table of a results store as markdown.")
    parser.add_argument("results_dir")
    parser.add_argument("--model", help="only runs of this model")
    parser.add_argument("--pattern", help="only runs of this n:m pattern (dense rows always shown)")
    ns = parser.parse_args(argv)
    if not Path(ns.results_dir).is_dir():
        raise UsageError(f"results folder {ns.results_dir} does not exist")
    df = load_results(ns.results_dir)
    if ns.model:
        df = df[df["model"] == ns.model]
    if ns.pattern:
        df = df[(df["pattern"] == ns.pattern) | (df["method"] == "dense")]
    sys.stdout.write(to_markdown(glue_table(df)))
    return 0


def _reproduce(argv: list[str]) -> int:
    from .reproduce import main as reproduce_main

    try:
        return reproduce_main(argv)
    except RuntimeError as exc:  # a notebook failed: its executed copy says where
        print(f"nxmlab: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1


def _verify(argv: list[str]) -> int:
    from .verify import verify_results

    parser = argparse.ArgumentParser(prog="nxmlab verify", description="Check every finished run of a results store.")
    parser.add_argument("results_dir")
    ns = parser.parse_args(argv)
    checks = verify_results(ns.results_dir)
    bad = [c for c in checks if c.finished and c.problems]
    for check in checks:
        status = "unfinished" if not check.finished else ("ok" if check.ok else "FAIL")
        print(f"{status:10} {check.run}")
        for problem in check.problems:
            print(f"{'':10}   - {problem}")
    finished = sum(c.finished for c in checks)
    print(f"{finished} finished run(s), {len(bad)} with problems, {len(checks) - finished} unfinished")
    return 1 if bad else 0


COMMANDS = {"train": _train, "table": _table, "reproduce": _reproduce, "verify": _verify}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nxmlab`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: nxmlab {train,table,reproduce,verify} ... [--debug]\n"
              "  train      train one method on one GLUE task (nxmlab train --help)\n"
              "  table      print the GLUE table of a results folder\n"
              "  reproduce  run the study notebooks of a preset (nxmlab reproduce --preset smoke|quick|cpu|paper)\n"
              "  verify     check the integrity of a results folder",
              file=sys.stderr if argv else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"nxmlab: error: unknown command {argv[0]!r}", file=sys.stderr)
            return EXIT_USAGE
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from .trainer import NonFiniteError

    try:
        return COMMANDS[argv[0]](argv[1:])
    except NonFiniteError as exc:  # a numerical fault, not bad input: exit 1
        if debug:
            raise
        print(f"nxmlab: error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, ValueError, OSError, ImportError) as exc:
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"nxmlab: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
