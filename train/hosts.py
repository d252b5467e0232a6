"""What the processes of a run agree on: which one leads, barriers, and process 0's word.

Each function is a no-op (or a local answer) with one process; with several, the collective ones must be
called by every process, in the same order.
"""

from __future__ import annotations

import jax
import numpy as np


def is_lead() -> bool:
    """Process 0: the one that writes metrics, figures and the summary, and holds the workdir's lock."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (collective)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def lead_says(flag: bool) -> bool:
    """Process 0's ``flag`` on every process (collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def allgather(value: int) -> list[int]:
    """Every process's ``value``, in process order (collective)."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    return [int(v) for v in np.asarray(multihost_utils.process_allgather(np.int32(value))).ravel()]


def everywhere(ok: bool) -> bool:
    """True when ``ok`` on every process (collective)."""
    return min(allgather(int(ok))) == 1
