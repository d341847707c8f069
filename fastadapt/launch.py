"""Process-level plumbing of the CLI: the torchrun rank, `train --nproc N` (ranks started in
this process through torch.distributed.run), and SIGTERM turned into an interruption."""

from __future__ import annotations

import os
import signal

from .errors import FastAdaptError


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so it unwinds like Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated


def rank() -> int:
    """This process's torchrun rank (0 outside torchrun), read without importing torch."""
    value = os.environ.get("RANK", "0")
    return int(value) if value.isdigit() else 0


def launch(args, meta_batch: int) -> int:
    """`train --nproc N`: the same command under torch.distributed.run (torchrun's module), N ranks
    on this machine (a random free port, `--standalone`), run in this process as the `torchrun`
    command runs it. Settings and the run folder are checked here first; a rank's error is its one
    line (torchrun's failure report is left out) and its exit code (128 + N for a rank killed by
    signal N)."""
    n = args.nproc
    if n < 1:
        raise FastAdaptError(f"--nproc must be an integer >= 1, got {n}")
    if "RANK" in os.environ:
        raise FastAdaptError("--nproc starts its own processes; under torchrun, drop --nproc")
    if n > meta_batch:
        raise FastAdaptError(
            f"--nproc {n} is more than train.meta_batch ({meta_batch}): each process runs at least one "
            f"task of every meta-batch; use --nproc {meta_batch} or fewer"
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    argv = ["--standalone", f"--nproc-per-node={n}", "-m", "fastadapt", "train"]
    argv += [str(args.config)] if args.config is not None else ["--from-study", str(args.from_study)]
    for override in getattr(args, "given_overrides", args.overrides):
        argv += ["--set", override]
    named = (
        ("--out", args.out),
        ("--data-root", args.data_root),
        ("--study-storage", getattr(args, "study_storage", None)),
    )
    for flag, value in named:
        if value is not None:
            argv += [flag, str(value)]
    argv += [flag for flag, on in (("--download", args.download), ("--quiet", args.quiet)) if on]
    if n > 1:  # what torchrun does, without its banner: one intra-op thread per rank
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        code = exc.get_first_failure()[1].exitcode
        return code if code > 0 else 128 - code
    except SignalException as exc:  # Ctrl-C or SIGTERM: the launcher has stopped the ranks
        raise (Terminated() if exc.sigval == signal.SIGTERM else KeyboardInterrupt()) from None
    return 0
