"""The OCI distribution protocol: knows nothing of CVMFS, layers or publishing."""

from .. import __version__

# Sent with every request (registry, token service, storage), so a registry
# operator can tell our traffic apart from others'.
USER_AGENT = f"reconciler/{__version__}"
