"""Strict YAML configs: ``_base_`` inheritance, dotted overrides, validation against defaults.yaml."""

from .config import Config, load_config

__all__ = ["Config", "ConfigError", "load_config"]
