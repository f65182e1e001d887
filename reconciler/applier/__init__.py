"""The layer applier: writes OCI layers into a tree. Knows nothing of HTTP or publishing."""

from .apply import ApplyOptions, LayerLimits, LayerStats, apply_layer
from .decompress import compression_for

__all__ = ["ApplyOptions", "LayerLimits", "LayerStats", "apply_layer", "compression_for"]
