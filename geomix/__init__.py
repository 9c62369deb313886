"""geomix: geodesic multi-modal mixup for CLIP fine-tuning.

Importing ``geomix`` pulls in torch and open_clip only; Ray, Optuna and pandas live behind ``sweeps/`` and
``analysis/``.
"""

__version__ = "0.1.0"
