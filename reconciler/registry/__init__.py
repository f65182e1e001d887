"""The OCI distribution protocol: knows nothing of CVMFS, layers or publishing."""
