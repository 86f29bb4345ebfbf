"""Typed configuration: the schema (dataclasses), loading (recipes, overrides) and value checks."""
from selfsup.config.checks import check_image_sides, validate_config, validate_method, validate_paths, validate_run
from selfsup.config.loading import (
    DEFAULT_RECIPE,
    RECIPES_DIR,
    apply_override,
    config_from_dict,
    find_recipe,
    load_config,
    method_config,
    parse_yaml,
    read_yaml,
    resolve_config,
    save_config,
)
from selfsup.config.schema import (
    BackboneConfig,
    Bounds,
    Config,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    MethodConfig,
    RunConfig,
    TrainerConfig,
    bounded,
    config_to_dict,
    field_bounds,
)

__all__ = [
    "BackboneConfig", "Bounds", "check_image_sides", "Config", "DataConfig", "DEFAULT_RECIPE", "EvalConfig", "FinetuneConfig",
    "MethodConfig", "RECIPES_DIR", "RunConfig", "TrainerConfig", "apply_override", "bounded", "config_from_dict",
    "config_to_dict", "field_bounds", "find_recipe", "load_config", "method_config", "parse_yaml", "read_yaml",
    "resolve_config", "save_config",
    "validate_config", "validate_method", "validate_paths", "validate_run",
]
