"""Ray Tune's MLflow logger callback, logging a trial's reported metrics only (``sweeps/tracking.py``).

Tune's ``MLflowLoggerCallback`` logs every numeric value of a result as a metric, and a Tune result carries
the trial's whole config (``config/trial/config/...``: a hundred numbers that never change, already
logged once as parameters). Logging those at every report made each report cost about a second on the
2-core machine (Tune warns that the callback is a bottleneck). This subclass drops the config from the
result before handing it to Tune's callback; everything else is Tune's.
"""

from __future__ import annotations

from typing import Any

from sweeps import tune_api as tune


class MetricsMLflowCallback(tune.MLflowLoggerCallback):
    """``MLflowLoggerCallback`` whose metrics are the trial's reports without its config."""

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        super().log_trial_result(iteration, trial, {k: v for k, v in result.items() if k != "config"})
