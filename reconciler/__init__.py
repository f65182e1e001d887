"""reconciler: keep a CVMFS repository (or a local directory) in step with OCI images."""

__version__ = "0.2.0"
