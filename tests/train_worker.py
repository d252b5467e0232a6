"""Runs ``python -m train``'s options in one process of a multi-process test and saves its replica.

Usage: ``python tests/train_worker.py OUT.npz <python -m train arguments>``. Writes this
process's in-memory final parameters (leaves in tree order) to ``OUT.npz``.
"""

from __future__ import annotations

import sys

import numpy as np

from train import __main__ as cli
from train import configs


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    args = cli.make_parser().parse_args(argv)
    config = configs.get_config(args.config)
    cli.apply_overrides(config, cli.parse_overrides(args.set))
    config.data_dir = args.data_dir
    cli.init_jax(args)
    import jax  # after init_jax: jax.distributed must come first

    from train import train as train_lib

    summary, params = train_lib.train_and_evaluate(config, args.workdir, return_params=True)
    leaves = jax.tree.leaves(params)
    np.savez(
        out,
        *leaves,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        devices=jax.device_count(),
        test_error=summary["test_error"],
        resumed_from=summary["resumed_from"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
