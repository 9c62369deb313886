"""The results store: the Parquet schema of a sweep's results, its one writer and its one reader.

A results folder (a local path, or an ``s3://`` / ``gs://`` URI: multi-node Ray needs shared storage) holds
the ``trials/`` table (one row per trial) and the ``history/`` table (one row per trial per evaluation
point), each a folder of Parquet parts that are written once and read as one dataset, ``config.yaml`` (the
resolved sweep) and ``embeddings/<trial>.npz``; ``docs/results.md`` documents every column. This package
sits above ``geomix`` (it reads the metric vocabulary of :mod:`geomix.registry` and the config classes) and
below ``sweeps`` (which writes) and ``analysis`` (which reads); it imports pandas and pyarrow, never torch.

Modules: :mod:`.fs` (paths, URIs, atomic writes), :mod:`.schema` (names, statuses, versions, declared
column types), :mod:`.columns` (rows -> typed Arrow), :mod:`.parts` (the part files of a table; a damaged
file named and set aside), :mod:`.buffer` (several writes per part), :mod:`.rows` (rows from a trial's
config and result), :mod:`.io` (write and read).
"""

from store.buffer import batched, flush
from store.fs import has_file, save_file
from store.io import keep_embeddings, load_resolved_config, read_results, save_resolved_config, write_rows
from store.parts import DAMAGED_DIR, DamagedFile, damaged_files, set_aside
from store.rows import environment_info, history_rows, trial_row
from store.schema import (
    CONFIG_FILE,
    EMBEDDINGS_DIR,
    METRIC_COLUMNS,
    SCHEMA_VERSION,
    SPLITS,
    STATUSES,
    TABLES,
)

__all__ = [
    "CONFIG_FILE", "DAMAGED_DIR", "DamagedFile", "EMBEDDINGS_DIR", "METRIC_COLUMNS", "SCHEMA_VERSION",
    "SPLITS", "STATUSES", "TABLES",
    "batched", "damaged_files", "environment_info", "flush", "has_file", "history_rows", "keep_embeddings",
    "load_resolved_config", "read_results",
    "save_file", "save_resolved_config", "set_aside", "trial_row", "write_rows",
]
