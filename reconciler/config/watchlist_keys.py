"""Every key `watchlist.toml` may hold, declared once (see schema.py): the
loader checks and reads the file through these tables, the records take
their defaults from them, and the README's "Watchlist reference" table is
rendered from them (`python -m reconciler.config.reference`)."""

from __future__ import annotations

from typing import Tuple

from ..apptainer import DEFAULT_BIND_POINTS
from .schema import (
    ADDRESS,
    DURATION,
    FLAG,
    PATH,
    PLATFORMS,
    SIZE,
    STRINGS,
    TEXT,
    WHOLE,
    Key,
    Kind,
    Table,
    table_kind,
)

BACKENDS = ("local", "cvmfs")

# `signature` is a table, or the word "none" (no policy, where [defaults] has one).
SIGNATURE_KIND = Kind(object, 'a table { keys = [...], identity = ... } or "none"', 'table, or "none"')
SIGNATURE_NONE = "none"

TOP = Table("", (
    Key("publish", table_kind("a [publish] table, or [publish.<name>] tables")),
    Key("state", table_kind("a [state] table")),
    Key("defaults", table_kind("a [defaults] table")),
    Key("registries", table_kind('a table of [registries."host"] tables')),
    Key("service", table_kind("a [service] table")),
    Key("webhooks", table_kind("a table of [webhooks.<provider>] tables")),
    Key("image", table_kind("a list of [[image]] tables")),
    Key("list", table_kind("a list of [[list]] tables")),
))

PUBLISH = Table("publish", (
    Key("backend", TEXT, '"local" or "cvmfs"', default="local"),
    Key("root", PATH, "where tags and images are published; relative paths are taken from the watchlist's "
                      "directory", default="publish", default_doc="cvmfs: `/cvmfs/<repository>`"),
    Key("repository", TEXT, "cvmfs: the repository name, e.g. containers.example.org",
        default_doc="required for cvmfs"),
    Key("lease_path", TEXT, "cvmfs: publish only this sub-tree, through a gateway lease",
        default_doc="the whole repository"),
    Key("bind_points", STRINGS, "directories created in each image for bind mounts (the OSG set by default)",
        default=DEFAULT_BIND_POINTS),
    Key("gc_grace", DURATION, "an image no tag references is removed after this long", default="2d"),
    Key("gc_max_per_cycle", WHOLE, "at most this many image removals per cycle (0: never collect)", default=50),
    Key("visibility", TEXT, '"public": anyone can read it, so no image that needs credentials goes there; '
                            '"restricted": only its members can',
        default_doc="cvmfs: public, or restricted when the repository has a membership requirement (`mkfs -V`); "
                    "local: restricted"),
    Key("foreign_tags", TEXT, 'a repository taken over from cvmfs-singularity-sync or DUCC: "keep" or "collect" '
                              "the tag links of that tool no entry watches (watched ones are replaced by ours)",
        default="keep"),
))

VISIBILITIES = ("public", "restricted")

FOREIGN_TAG_POLICIES = ("keep", "collect")

STATE = Table("state", (
    Key("dir", PATH, "the blob store (blobs/) and the state database (state.db)", default=".reconciler"),
    Key("blob_cache_max", SIZE, "bound the blob store; least recently used blobs not in use go first",
        default_doc="unbounded"),
))

DEFAULTS = Table("defaults", (
    Key("interval", DURATION, "how often each image's tags are checked (durations: 30s, 15m, 1h30m, 2d)",
        default="15m"),
    Key("platforms", PLATFORMS, "the platforms each image is published for", default=("linux/amd64",)),
    Key("publish", TEXT, "the target of entries that name none: a name of [publish.<name>]",
        default_doc="the only target"),
    Key("signature", SIGNATURE_KIND, "publish only images a listed cosign key signed (keys, identity below)",
        default_doc="none: no check"),
))

REGISTRY = Table('registries."<host>"', (
    Key("insecure", FLAG, "plain http", default=False),
    Key("username", TEXT, "with password_file or password_env; without, credentials come from Docker's "
                          "config.json", default_doc="none"),
    Key("password_file", PATH, "a file holding the password", default_doc="none"),
    Key("password_env", TEXT, "an environment variable holding the password", default_doc="none"),
    Key("mirror", TEXT, "blobs (verified as always) come from here first, the origin if it fails; tags are "
                        "always resolved at the origin", default_doc="none"),
    Key("max_concurrency", WHOLE, "requests at once to this registry", default=4),
    Key("token_realms", STRINGS, "token services or storage hosts it may name on a private address",
        default=()),
    Key("address", TEXT, 'the host (and port) this registry\'s requests go to instead, e.g. "127.0.0.1:5000" '
                         "(a test registry, a full mirror); names and paths stay the registry's, config.json "
                         "credentials are the address's",
        default_doc="the registry itself"),
))

SERVICE = Table("service", (
    Key("listen", ADDRESS, "the service's HTTP listener (webhooks, /metrics, /status, /healthz)",
        default_doc="none"),
))

WEBHOOK = Table("webhooks.<provider>", (
    Key("token_env", TEXT, "an environment variable holding the provider's token", default_doc="none"),
    Key("token_file", PATH, "or a file holding it", default_doc="none"),
))

IMAGE = Table("image[n]", (
    Key("source", TEXT, "the repository to watch, without a tag", default_doc="required"),
    Key("tags", STRINGS, "exact tags, or a selection from the registry's tag list (the next four)",
        default_doc="required without tag_pattern, tag_glob or semver"),
    Key("tag_pattern", TEXT, "a regular expression (re.search) the tags must match", default_doc="none"),
    Key("tag_glob", STRINGS, "shell wildcards (`*`, `?`, `[…]`, as Python's fnmatch) matched against the whole "
                             "tag; a tag matching any of them is selected", default_doc="none"),
    Key("semver", TEXT, 'a version range such as ">=1.2,<2" (PEP 440 parsing; pre-releases excluded)',
        default_doc="none"),
    Key("newest", WHOLE, "keep only this many highest: versions in PEP 440 order, other tags below them",
        default_doc="all"),
    Key("dest", TEXT, "where under root its tags are published", default_doc="`<registry>/<repository>`"),
    Key("platforms", PLATFORMS, "the platforms it is published for", default_doc="`[defaults]` platforms"),
    Key("interval", DURATION, "how often its tags are checked", default_doc="`[defaults]` interval"),
    Key("publish", TEXT, "its target: a name of [publish.<name>]", default_doc="`[defaults]` publish"),
    Key("private_ok", FLAG, "publish it to a public target even though its registry needs credentials (a "
                            "warning at each publish)", default=False),
    Key("signature", SIGNATURE_KIND, 'its signature policy; "none" for none where `[defaults]` has one',
        default_doc="`[defaults]` signature"),
))

SIGNATURE = Table("image[n].signature", (
    Key("keys", STRINGS, "cosign public keys (PEM, ECDSA P-256); any of them may sign. Relative paths are taken "
                         "from the watchlist's directory", default_doc="required"),
    Key("identity", TEXT, 'what the signed reference must name: "repository", "exact" (with the tag), "any", or '
                          '"repository:<repo>" (a mirror\'s original)', default="repository"),
))

LIST_FORMATS = ("osg", "ducc")

LIST = Table("list[n]", (
    Key("path", PATH, "an image list as another tool reads it; read again at every cycle",
        default_doc="required"),
    Key("format", TEXT, '"osg" (cvmfs-singularity-sync\'s docker_images.txt) or "ducc" (a DUCC wishlist)',
        default_doc="required"),
    Key("dest", TEXT, "where each image's tags are published: a template of `$(registry)` (the host as the "
                      "list writes it; docker.io when it names none) and `$(repository)`",
        default_doc='osg: `"$(repository)"`; ducc: `"$(registry)/$(repository)"`'),
    Key("platforms", PLATFORMS, "the platforms its images are published for", default_doc="`[defaults]` platforms"),
    Key("interval", DURATION, "how often its images' tags are checked", default_doc="`[defaults]` interval"),
    Key("publish", TEXT, "the target of its images: a name of [publish.<name>]", default_doc="`[defaults]` publish"),
))

# The tables the reference documents, in the order the README shows them.
REFERENCE_TABLES: Tuple[Table, ...] = (PUBLISH, STATE, DEFAULTS, REGISTRY, SERVICE, WEBHOOK, IMAGE, SIGNATURE, LIST)
