"""Names, statuses and versions of the results schema (``docs/results.md``).

The metric columns are :data:`geomix.registry.METRIC_KEYS`; the key columns of each table, the allowed
statuses and splits, and the schema version every row carries are declared here, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geomix.registry import METRIC_KEYS
from geomix.registry import SPLITS as _SPLITS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

SCHEMA_VERSION = 1

#: Final metrics, as :func:`geomix.metrics.evaluate_embeddings` names them (trials hold the test split's).
METRIC_COLUMNS: tuple[str, ...] = METRIC_KEYS

STATUSES: tuple[str, ...] = ("completed", "early_stopped", "failed", "diverged")

#: Table name -> its key columns (a row per key; the last write of a key wins).
TABLES: dict[str, tuple[str, ...]] = {"trials": ("trial_id",), "history": ("trial_id", "step", "split")}
SPLITS: tuple[str, ...] = _SPLITS
CONFIG_FILE = "config.yaml"
#: Where a sweep puts each trial's evaluation embeddings, relative to the results folder.
EMBEDDINGS_DIR = "embeddings"


def check_version(df: pd.DataFrame, where: str) -> None:
    """Raise ``ValueError`` unless every row of ``df`` has this code's :data:`SCHEMA_VERSION`."""
    if "schema_version" not in df.columns:
        raise ValueError(
            f"{where} has no schema_version column: it is too old (written before results schema "
            f"versioning); allowed is schema_version={SCHEMA_VERSION}. Re-run the sweep with this geomix."
        )
    versions = df["schema_version"].dropna().unique().tolist()
    for v in versions:
        try:
            iv = int(v)
        except (TypeError, ValueError):
            raise ValueError(
                f"{where} has schema_version={v!r}, which is unknown: allowed is {SCHEMA_VERSION}"
            ) from None
        if iv > SCHEMA_VERSION:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too new: this geomix reads schema_version="
                f"{SCHEMA_VERSION}; upgrade geomix to read it"
            )
        if iv < SCHEMA_VERSION:
            raise ValueError(
                f"{where} has schema_version={iv}, which is too old: this geomix reads schema_version="
                f"{SCHEMA_VERSION}; re-run the sweep or use an older geomix"
            )
    if df["schema_version"].isna().any():
        raise ValueError(f"{where} has rows without a schema_version: allowed is {SCHEMA_VERSION}")
