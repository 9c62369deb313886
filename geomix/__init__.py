"""geomix: geodesic multi-modal mixup for CLIP fine-tuning.

Importing ``geomix`` pulls in torch and open_clip only; Ray, Optuna and pandas live behind ``sweeps/`` and
``analysis/``.
"""

from pathlib import Path

__version__ = "0.1.0"


def checkout(script: str | Path) -> Path:
    """The checkout holding ``sweeps/`` for a script in it: the script's grandparent folder, or, when the
    script was copied elsewhere (``ray submit`` copies it to the head node's home), the checkout of this
    installed ``geomix`` (``pip install -e``)."""
    here = Path(script).resolve().parent.parent
    if (here / "sweeps" / "_tune.py").is_file():
        return here
    return Path(__file__).resolve().parent.parent
