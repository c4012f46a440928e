"""Configuration: ``get_cfg()`` returns the defaults; YAML files and ``KEY VALUE`` lists refine them."""

from .config import CfgNode, ConfigError, load_yaml_with_base
from .defaults import get_cfg
from .setup import setup_cfg

__all__ = ["CfgNode", "ConfigError", "get_cfg", "load_yaml_with_base", "setup_cfg"]
