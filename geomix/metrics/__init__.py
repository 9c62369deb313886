"""Evaluation metrics for image-text embeddings: retrieval, alignment / uniformity, modality gap, calibration.

Everything takes embeddings as torch tensors (CPU or CUDA) and returns Python floats. Rows are L2-normalised
here (a no-op for already normalised features), so every metric is the one of the unit sphere. Half-precision
inputs are upcast to float32, float64 stays float64. Any ``n x m`` similarity matrix is built in row blocks of
at most ``inputs._BLOCK_ELEMS`` entries (4M, i.e. 16 MB per float32 block): ``evaluate_embeddings`` on 5k
images x 25k captions x 512 dims peaks at ~280 MB extra RSS on the CPU (input copies included) against
~1.6 GB with one full block.

Conventions (see ``docs/losses.md``, section Metrics):

- Retrieval ``R@K`` in percent. Image->text: a hit when ANY caption of the image is within the top K.
  Text->image: a hit when the caption's own image is within the top K. Ties are counted pessimistically: the
  rank of a query is the number of wrong candidates whose score is >= the best correct score, so a tie with
  a wrong candidate never helps (a fully collapsed embedding scores 0 for every K below the number of
  candidates, not 100).
- ``align`` and ``unif`` follow the paper's (seed) definitions; both are higher-is-better.
- ``unif_img`` / ``unif_txt`` are the standard Wang-Isola within-modality uniformity
  ``log E_{i != j} exp(-2 ||x_i - x_j||^2)``: NEGATIVE numbers, LOWER = more uniform (not negated, so they
  compare directly with published Wang-Isola values). :data:`HIGHER_IS_BETTER` records every direction.
- ``ece`` is the expected calibration error in percent with 15 equal-width confidence bins.

Modules: :mod:`.inputs` (argument checks, block size), :mod:`.retrieval` (Recall@K),
:mod:`.geometry` (alignment, uniformity, modality gap), :mod:`.calibration` (ECE, zero-shot),
:mod:`.evaluate` (:func:`evaluate_embeddings`, all of them at once), :mod:`.probe` (the few-shot
linear probe) and :mod:`.arithmetic` (embedding-arithmetic retrieval), which run at the end of a run.
The metric names, their order and their
directions are declared once, in :data:`geomix.registry.METRICS`.
"""

from geomix import registry
from geomix.metrics.arithmetic import arithmetic_retrieval
from geomix.metrics.calibration import DEFAULT_SCALE, expected_calibration_error, zero_shot
from geomix.metrics.evaluate import evaluate_embeddings
from geomix.metrics.geometry import alignment, modality_gap, uniformity, within_uniformity
from geomix.metrics.probe import few_shot_probe
from geomix.metrics.retrieval import RETRIEVAL_KS, retrieval_recall

METRIC_KEYS: tuple[str, ...] = registry.METRIC_KEYS
"""The keys of :func:`evaluate_embeddings`, in order."""

HIGHER_IS_BETTER: dict[str, bool | None] = {name: m.higher for name, m in registry.METRICS.items()}
"""Direction of each metric: True = higher is better, False = lower is better, None = descriptive."""

__all__ = [
    "METRIC_KEYS",
    "HIGHER_IS_BETTER",
    "DEFAULT_SCALE",
    "RETRIEVAL_KS",
    "retrieval_recall",
    "alignment",
    "uniformity",
    "within_uniformity",
    "modality_gap",
    "expected_calibration_error",
    "zero_shot",
    "evaluate_embeddings",
    "few_shot_probe",
    "arithmetic_retrieval",
]
