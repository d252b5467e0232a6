"""Command line: ``python -m train --config NAME --workdir DIR [--data_dir DIR] [--set key=value ...]``.

Examples::

    python -m train --config mnist_rts_st_cnn_affine --workdir runs/rts --data_dir data
    python -m train --config tiny --workdir /tmp/t --data_dir data --set steps=20 batch_size=16
    python -m train --list                              # every experiment, one line each
    python -m train --config tiny --print_config        # its keys, values and docs (what --set can change)
    python -m train --config tiny --workdir /tmp/t --config.steps=20   # the Flax examples' spelling of --set

Rerunning the same command resumes from the newest checkpoint in ``--workdir`` that
verifies (damaged ones are reported and moved aside); one run at a time holds a workdir.
``--set`` values are Python literals (``steps=2000``, ``lr_drops=(0.3,0.6)``,
``model_kwargs.channels=(8,8)``), anything else is a string; unknown keys and values
of the wrong type are configuration errors.

Devices and hosts:

* ``--num_cpu_devices N`` splits the CPU into N devices (testing data parallelism);
* several hosts: ``--coordinator HOST:PORT --num_processes N --process_id I`` on each
  (or ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``), or
  ``--distributed`` to let ``jax.distributed.initialize()`` detect the cluster
  (SLURM, Cloud TPU, ...). CPU processes exchange data with gloo collectives.

Exit codes: 0 success; 1 unexpected error; 2 bad configuration or command line
(found before any compile); 3 non-finite loss (the message names the checkpoint a
rerun resumes from); 4 dataset missing and not preparable; 5 the workdir has
checkpoints but none verifies (nothing moved or deleted); 6 another run holds the
workdir; 7 preempted (SIGTERM, or JAX's preemption notice on a multi-process run): stopped
at a step every process agreed on, with a complete and digested checkpoint of it, which
the message names and a rerun resumes from; 130 interrupted (Ctrl-C).

Console output that is not a terminal (logs, CI) carries no progress-bar escape codes and
no TensorFlow/TFDS start-up warnings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from train import errors  # exit codes and errors; train.train is imported after JAX's set-up
from train.configs import apply_overrides, parse_overrides  # noqa: F401 -- kept for callers of the CLI module

EXIT_CODE_HELP = ", ".join(f"{code} {what}" for code, what in errors.EXIT_CODES.items())


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train",
        description="Train the Spatial Transformer Network experiments.",
        epilog=f"exit codes: {EXIT_CODE_HELP}",
    )
    parser.add_argument("--config", help="experiment name (see --list)")
    parser.add_argument("--workdir", help="checkpoints, metrics and figures go here; reruns resume")
    parser.add_argument("--data_dir", help="TFDS data dir (default: config's data_dir, else $TFDS_DATA_DIR)")
    parser.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides; values are Python literals (steps=2000 lr_drops=(0.3,0.6) "
        "model_kwargs.channels=(8,8)), anything else is a string; --print_config "
        "shows the keys",
    )
    parser.add_argument("--print_config", action="store_true", help="print the config's keys and values and exit")
    parser.add_argument("--list", action="store_true", help="list the experiments (one line each) and exit")
    parser.add_argument("--num_cpu_devices", type=int, default=None, help="split the CPU into N devices")
    parser.add_argument("--distributed", action="store_true", help="jax.distributed.initialize() with auto-detection")
    parser.add_argument("--coordinator", default=os.environ.get("JAX_COORDINATOR_ADDRESS"), help="HOST:PORT")
    parser.add_argument("--num_processes", type=int, default=_env_int("JAX_NUM_PROCESSES"))
    parser.add_argument("--process_id", type=int, default=_env_int("JAX_PROCESS_ID"))
    return parser


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


def init_jax(args: argparse.Namespace) -> None:
    """Device and multi-process set-up; must run before anything initialises JAX's backends."""
    from train import xla_cpu

    xla_cpu.use_xla_convolutions()
    import jax

    if args.num_cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.num_cpu_devices)
    if args.distributed or args.coordinator:
        # Harmless on GPU/TPU hosts; on CPU hosts it is what makes cross-process collectives work.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        if args.coordinator:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        else:
            jax.distributed.initialize()


def _not_third_party_chatter(record: logging.LogRecord) -> bool:
    """Drops absl records below ERROR logged by TensorFlow or TFDS code (e.g. "OpenCV is not installed")."""
    parts = Path(record.pathname).parts
    return record.levelno >= logging.ERROR or not ({"tensorflow", "tensorflow_datasets"} & set(parts))


def quiet_third_party() -> None:
    """No TensorFlow C++ start-up lines nor TFDS warnings that say nothing about the run; errors still show."""
    from absl import logging as absl_logging  # absl's own logger class: records name the module that logs

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    absl_logging.get_absl_logger().addFilter(_not_third_party_chatter)  # once: addFilter skips a filter it has


def config_flags_as_set(argv: list[str]) -> list[str]:
    """The Flax examples' ``--config.key=value`` (or ``--config.key value``) as ``--set key=value``."""
    out, rest = [], iter(argv)
    for arg in rest:
        if arg.startswith("--config."):
            key, sep, value = arg.removeprefix("--config.").partition("=")
            out += ["--set", f"{key}={value if sep else next(rest, '')}"]
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(config_flags_as_set(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party()
    os.environ.setdefault("EPATH_USE_TF", "false")  # gs:// through gcsfs, as tested (train.storage)
    from train import configs

    if args.list:
        width = max(map(len, configs.NAMES))
        print("\n".join(f"{name:<{width}}  {configs.describe(name)}" for name in configs.NAMES))
        return errors.EXIT_OK
    try:
        if not args.config or not (args.workdir or args.print_config):
            raise errors.ConfigError("--config and --workdir are required (see --help)")
        config = configs.get_config(args.config, args.set)
        if args.data_dir:
            config.data_dir = args.data_dir
        if args.print_config:
            print(configs.base.describe(config))
            return errors.EXIT_OK
        init_jax(args)
        from train.train import train_and_evaluate  # imports JAX-using modules: after init_jax

        train_and_evaluate(config, args.workdir)
    except configs.UnknownConfigError as err:
        print(f"{errors.ConfigError.prefix}{err}", file=sys.stderr)
        return errors.EXIT_CONFIG
    except errors.RUN_ERRORS as err:
        print(f"{err.prefix}{err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the newest checkpoint that verifies", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    return errors.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
