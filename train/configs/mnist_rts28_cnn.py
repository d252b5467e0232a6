"""CNN for the generalisation experiment: trained on RTS28 (±45°, scale 0.7–1.3, shift ±1.4 px).

Tested at exact rotations of 45°, 60°, 75° and 90° by ``benchmarks/generalisation.py``.
"""

from train.configs import base


def get_config():
    return base.mnist("RTS28", "cnn")
