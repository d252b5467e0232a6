"""XLA CPU set-up of the training process: convolutions and reductions off the YNNPACK path.

JAX 0.10's CPU backend hands convolutions (and channel reductions) to YNNPACK fusions,
which on this 2-core x86 machine run our CNNs' backward pass 2-3x slower than XLA's own
(Eigen) kernels: the input gradient of a 9x9 conv with one input channel took 290 ms of
a 1.1 s ST-CNN step (BENCHMARKS.md, "Training step: what we tried"). The switch is an
XLA flag, read once when the backend starts, for the whole process; so the training
command sets it (it owns its process), the library never does. A user's own
``--xla_cpu_experimental_ynn_fusion_type`` in ``XLA_FLAGS`` wins. GPU/TPU ignore it.
"""

from __future__ import annotations

import os

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
YNN_OFF = "-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,-LIBRARY_FUSION_TYPE_REDUCE"


def use_xla_convolutions(environ=os.environ) -> bool:
    """Adds the flag to ``XLA_FLAGS`` unless already there; call before JAX's backend starts.

    Returns whether it added it.
    """
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return False
    environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}={YNN_OFF}".strip()
    return True
