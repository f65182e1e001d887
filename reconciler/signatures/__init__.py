"""Cosign signature verification, pure: no I/O, no registry, no policy source.

keys.py loads the trusted keys (ECDSA P-256, PKIX PEM, from configuration
only); simple.py checks cosign "simple signing" (`sha256-<hex>.sig`);
bundle.py checks v3 Sigstore bundles (DSSE in-toto) found as referrers;
policy.py holds an entry's rule; verify.py combines them into one verdict,
Accepted or Rejected, from objects the registry side fetched.
"""
