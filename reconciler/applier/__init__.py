"""The layer applier: writes OCI layers into a tree. Knows nothing of HTTP or publishing."""

from .apply import ApplyOptions, ChangeObserver, LayerLimits, LayerStats, apply_layer
from .decompress import compression_for

__all__ = ["ApplyOptions", "ChangeObserver", "LayerLimits", "LayerStats", "apply_layer", "compression_for"]
