"""Configuration: one frozen dataclass per concern (:mod:`.schema`), files and overrides (:mod:`.io`).

Example::

    cfg = load_config("exp.yaml", ["loss.w_m2=0.1", "optim.epochs=3"])
    flat = flatten(to_dict(cfg))        # {"loss.w_m2": 0.1, ...} -> Parquet columns
"""

from geomix.checks import ConfigError, check_choice, check_range
from geomix.config.io import (
    admits_none,
    build_config,
    config_hash,
    from_dict,
    load_config,
    load_yaml,
    parse_overrides,
    save_config,
    to_dict,
)
from geomix.config.schema import (
    SECTIONS,
    DataConfig,
    EvaluationConfig,
    LambdaConfig,
    LossConfig,
    MixConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    TransferConfig,
)
from geomix.config.sections import (
    EMBEDDED_BASE,
    LAMBDA_POLICIES,
    LOSS_KINDS,
    LR_SCHEDULES,
    MIX_GEOMETRIES,
    PARTNER_POLICIES,
    RUN_ONLY,
    SEPARATORS,
    SHAPE_STYLES,
    TASKS,
    WASSERSTEIN_ESTIMATORS,
    WEIGHT_DECAYS,
)
from geomix.dotted import flatten, merge, unflatten

__all__ = [
    "EMBEDDED_BASE",
    "RUN_ONLY",
    "ConfigError", "admits_none", "check_choice", "check_range", "build_config", "config_hash", "from_dict",
    "load_config", "load_yaml", "parse_overrides", "save_config", "to_dict", "flatten", "merge", "unflatten",
    "LAMBDA_POLICIES", "LOSS_KINDS", "LR_SCHEDULES", "MIX_GEOMETRIES", "PARTNER_POLICIES", "SECTIONS",
    "SEPARATORS", "SHAPE_STYLES", "TASKS",
    "WASSERSTEIN_ESTIMATORS", "WEIGHT_DECAYS", "DataConfig", "EvaluationConfig", "LambdaConfig",
    "LossConfig", "MixConfig",
    "ModelConfig", "OptimConfig", "RunConfig", "TrainConfig", "TransferConfig",
]
