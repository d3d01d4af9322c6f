"""cxr-pneumonia's shared package: every line of logic the notebooks need lives here."""
from .config import PROFILES, ConfigError, RunConfig, make_config

__all__ = ["RunConfig", "ConfigError", "PROFILES", "make_config"]
