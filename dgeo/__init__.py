"""dgeo: differentiable geometry for learned visual localization."""

from dgeo.errors import DgeoError

__version__ = "0.1.0"
__all__ = ["DgeoError", "__version__"]
