"""The one exception hierarchy of reconciler.

Every message is written for a site admin: it names the image, registry,
file or key concerned and says what to do. No message ever carries a
password, token or webhook secret.
"""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error reconciler raises on purpose."""


class ConfigError(ReconcilerError):
    """Bad configuration or bad input given by the operator (exit code 2)."""


class InvalidReferenceError(ConfigError):
    """An image reference that cannot be parsed."""


class CredentialError(ConfigError):
    """Credentials that are configured but cannot be read."""


class RegistryError(ReconcilerError):
    """A registry answered in a way we cannot use."""


class AuthenticationError(RegistryError):
    """The registry or its token service refused our credentials."""


class TokenServiceUnavailableError(RegistryError):
    """The token service is unreachable or failing (5xx, 429): worth retrying."""


class NotFoundError(RegistryError):
    """The repository, tag, manifest or blob does not exist."""


class RepositoryNotFoundError(NotFoundError):
    """The registry knows no repository of that name (HTTP 404 `NAME_UNKNOWN`)."""


class ManifestNotFoundError(NotFoundError):
    """The repository exists but has no such tag or manifest (HTTP 404 `MANIFEST_UNKNOWN`)."""


class AccessDeniedError(AuthenticationError):
    """The registry refuses this repository to whoever we are (HTTP 403, `DENIED`)."""


class RateLimitedError(RegistryError):
    """The registry kept answering 429 after every retry."""


class TransferError(RegistryError):
    """A transfer failed after every retry (connection errors, 5xx, short bodies)."""


class RegistryUnreachableError(TransferError):
    """No HTTP exchange with a registry (or token, or storage) host was possible."""


class HostNotFoundError(RegistryUnreachableError):
    """A host name that DNS cannot resolve."""


class RegistryConnectionRefusedError(RegistryUnreachableError):
    """Nothing listens at the host and port (the connection was refused)."""


class RegistryTLSError(RegistryUnreachableError):
    """The TLS handshake failed: a certificate that cannot be verified, or a
    server speaking plain http where https was expected. Not retried: it is
    a matter of configuration."""


class UnsupportedManifestError(RegistryError):
    """A manifest of a kind we do not convert (schema 1, unknown media type)."""


class PlatformNotFoundError(RegistryError):
    """An index that lists no manifest for the requested platform."""


class IncompleteListingError(RegistryError):
    """A tag listing that could not be read to its end.

    Never treat it as "those tags were deleted".
    """


class IntegrityError(ReconcilerError):
    """Content whose digest or size does not match what was promised."""


class BlobStoreError(ReconcilerError):
    """The local blob store cannot hold or read a blob."""


class LayerError(ReconcilerError):
    """A layer that cannot be applied (corrupt, unsupported, over a limit)."""


class HostileLayerError(LayerError):
    """A layer that tries to reach outside the image root or otherwise attacks the host."""


class PublishError(ReconcilerError):
    """The publisher cannot make an image or tag visible."""


class StartError(ReconcilerError):
    """The machine refuses something the run needs before it can begin: a
    directory it cannot create or write, a port in use, a missing command
    (exit code 3)."""


class BusyError(ReconcilerError):
    """Another reconciler holds the lock on the same state directory or
    publish target (exit code 4)."""


class RefusedImageError(ReconcilerError):
    """A policy (the publish target's, or an entry's signature policy) refuses
    an image (it fails alone; the published revision stays; it is checked
    again at its next poll)."""


class PrivateImageError(RefusedImageError):
    """An image that needs credentials, bound for a target anyone can read."""


class VisibilityUnknownError(RefusedImageError):
    """Whether an image is public could not be told (the anonymous probe failed):
    a public target does not take it until it can."""


class SignatureError(RefusedImageError):
    """An image its entry's signature policy requires signed, without a valid
    signature by a trusted key (CI often signs after pushing)."""
