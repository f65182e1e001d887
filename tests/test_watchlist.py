"""watchlist.toml: every mistake names the file, the entry and the key."""

from __future__ import annotations

import pytest

from reconciler.cli import main
from reconciler.errors import ConfigError
from reconciler.registry.manifest import Platform
from reconciler.watchlist import load_watchlist, parse_duration

GOOD = '''
[publish]
backend = "local"
root = "./publish"

[state]
dir = "./.reconciler"
blob_cache_max = "1.5GiB"

[defaults]
interval = "15m"
platforms = ["linux/amd64"]

[registries."127.0.0.1:5000"]
insecure = true
username = "robot"
password_env = "RECONCILER_TEST_PW"
max_concurrency = 2

[service]
listen = "127.0.0.1:8080"

[webhooks.distribution]
token_env = "RECONCILER_HOOK_TOKEN"

[[image]]
source = "docker.io/library/alpine"
tags = ["3.20", "3.21"]

[[image]]
source = "127.0.0.1:5000/team/app"
tag_pattern = "^v?\\\\d+\\\\.\\\\d+\\\\.\\\\d+$"
semver = ">=1.2,<2"
newest = 5
dest = "team/app"
platforms = ["linux/amd64", "linux/arm64/v8"]
interval = "5m"
'''


def write(tmp_path, text):
    path = tmp_path / "watchlist.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads(tmp_path):
    wl = load_watchlist(write(tmp_path, GOOD))
    assert wl.publish.root == tmp_path / "publish"
    assert wl.state_dir == tmp_path / ".reconciler"
    assert wl.blob_cache_max == int(1.5 * 2**30)
    alpine, app = wl.images
    assert alpine.source.name == "docker.io/library/alpine" and alpine.tags == ("3.20", "3.21")
    assert alpine.dest == "docker.io/library/alpine" and alpine.interval == 900
    assert app.platforms == (Platform("linux", "amd64"), Platform("linux", "arm64", "v8"))
    assert app.interval == 300 and app.newest == 5 and app.lists_tags
    assert wl.registry("127.0.0.1:5000").insecure and wl.registry("ghcr.io").insecure is False


def test_shipped_watchlist_loads():
    from pathlib import Path
    load_watchlist(Path(__file__).resolve().parent.parent / "watchlist.toml")


MISTAKES = [
    ('[publish]\nbackend = "nfs"\n', r"watchlist.toml: publish.backend: expected one of 'local', 'cvmfs'"),
    ('[publish]\nbackend = "cvmfs"\n', r"publish.repository: required for backend \"cvmfs\""),
    ('[publish]\nlease_path = "x"\n', r"publish.lease_path: only meaningful with backend"),
    ('[publish]\nbackend = "cvmfs"\nrepository = "r.org"\nlease_path = "../x"\n', r"publish.lease_path: expected a relative sub-path"),
    ('[publish]\nroot = 5\n', r"publish.root: expected str, got int 5"),
    ('[publsh]\nroot = "x"\n', r'^watchlist.toml: unknown key "publsh" \(did you mean "publish"\?\)$'),
    ('[publish]\nbind_points = ["../x"]\n', r"publish.bind_points: expected directory names"),
    ('[publish]\nbind_points = "cvmfs"\n', r"publish.bind_points: expected a list of strings"),
    ('[state]\nblob_cache_max = "lots"\n', r"state.blob_cache_max: expected a size such as"),
    ('[state]\ndirectory = "x"\n', r'state: unknown key "directory" \(known keys here: blob_cache_max, dir\)'),
    ('[defaults]\ninterval = "15 minutes"\n', r"defaults.interval: expected a duration"),
    ('[defaults]\nplatforms = ["amd64"]\n', r"defaults.platforms: platform 'amd64' must look like os/architecture"),
    ('[registries."r.io"]\ninsecure = "yes"\n', r'registries."r.io".insecure: expected true or false'),
    ('[registries."r.io"]\nusername = "u"\n', r'registries."r.io".username: needs password_file or password_env'),
    ('[registries."r.io"]\npassword_env = "X"\n', r'registries."r.io".username: required when a password'),
    ('[registries."r.io"]\nmax_concurrency = 0\n', r'registries."r.io".max_concurrency: expected at least 1'),
    ('[registries."r.io"]\nmirror = "mirror:5000"\n', r'registries."r.io".mirror: expected a URL'),
    ('[registries."r.io"]\npasword_file = "x"\n', r'registries."r.io": unknown key "pasword_file" \(did you mean "password_file"\?\)'),
    ('[service]\nlisten = "8080"\n', r"service.listen: expected HOST:PORT"),
    ('[webhooks.bitbucket]\ntoken_env = "X"\n', r"webhooks.bitbucket: unknown provider"),
    ('[[image]]\ntags = ["1"]\n', r"image\[1\].source: required"),
    ('[[image]]\nsource = "Alpine"\ntags = ["1"]\n', r"image\[1\].source: invalid image reference 'Alpine'.*lowercase"),
    ('[[image]]\nsource = "alpine:3.20"\ntags = ["1"]\n', r"image\[1\].source: give the repository only"),
    ('[[image]]\nsource = "alpine"\n', r"image\[1\] \(docker.io/library/alpine\).tags: required"),
    ('[[image]]\nsource = "alpine"\ntags = "3.20"\n', r"image\[1\] \(docker.io/library/alpine\).tags: expected a list of strings"),
    ('[[image]]\nsource = "alpine"\ntags = [3]\n', r"image\[1\] \(docker.io/library/alpine\).tags: expected a list of strings"),
    ('[[image]]\nsource = "alpine"\ntags = []\n', r"tags: expected at least one tag"),
    ('[[image]]\nsource = "alpine"\ntags = ["bad tag"]\n', r"tags: 'bad tag' is not a valid tag"),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\nnewest = 2\n', r"tags: give either exact `tags` or a selection"),
    ('[[image]]\nsource = "alpine"\ntag_pattern = "(["\n', r"tag_pattern: not a valid regular expression"),
    ('[[image]]\nsource = "alpine"\nsemver = "about 2"\n', r"semver: not a version range"),
    ('[[image]]\nsource = "alpine"\nsemver = ">=1"\nnewest = 0\n', r"newest: expected at least 1"),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\ndest = "../etc"\n', r"dest: expected a relative path"),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\ndest = "a/b:c"\n', r"dest: expected a relative path"),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\ntag = "2"\n', r'image\[1\] \(docker.io/library/alpine\): unknown key "tag" \(did you mean "tags"\?\)'),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\n[[image]]\nsource = "ghcr.io/x/y"\ntags = ["1"]\ndest = "docker.io/library/alpine"\n',
     r"image\[2\] \(ghcr.io/x/y\).dest: 'docker.io/library/alpine' is already the destination of image\[1\]"),
    ('image = "alpine"\n', r"image: expected a list of \[\[image\]\] tables"),
    ('[publish\n', r"watchlist.toml: TOML syntax error: .*line 1"),
]


@pytest.mark.parametrize("text,message", MISTAKES, ids=[m[1][:40] for m in MISTAKES])
def test_each_mistake_has_its_message(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_watchlist(write(tmp_path, text))


def test_cli_exits_2_on_a_bad_watchlist_and_touches_nothing(tmp_path, capsys):
    path = write(tmp_path, '[[image]]\nsource = "alpine"\ntags = "3.20"\n[publish]\nroot = "pub"\n[state]\ndir = "st"\n')
    assert main(["--once", "--watchlist", str(path)]) == 2
    assert "image[1] (docker.io/library/alpine).tags: expected a list of strings" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["watchlist.toml"]


def test_cli_missing_watchlist(tmp_path, capsys):
    assert main(["--once", "--watchlist", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read the watchlist" in capsys.readouterr().err


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("15m", 900), ("1h30m", 5400), ("2d", 172800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


# --- unknown keys first, with a close match; mistakes that used to be tracebacks ---

UNKNOWN_FIRST = [
    ('[[image]]\nsource = "host.example/repo"\ntagz = ["1"]\n',
     r'^watchlist.toml: image\[1\] \(host.example/repo\): unknown key "tagz" \(did you mean "tags"\?\)$'),
    # An unknown key anywhere comes before a wrong value in an earlier table...
    ('[publish]\nbackend = "nfs"\n[[image]]\nsource = "alpine"\ntagz = ["1"]\n',
     r'image\[1\] \(docker.io/library/alpine\): unknown key "tagz" \(did you mean "tags"\?\)'),
    # ...and before a wrong value in its own table.
    ('[publish]\nbackend = "nfs"\nrooot = "x"\n', r'^watchlist.toml: publish: unknown key "rooot" \(did you mean "root"\?\)$'),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\ncolour = "red"\n',
     r'image\[1\] \(docker.io/library/alpine\): unknown key "colour" \(known keys here: dest, interval, newest, '
     r'platforms, .*source, tag_glob, tag_pattern, tags\)'),
    ('[[image]]\nsource = "Alpine"\ntagz = ["1"]\n', r'^watchlist.toml: image\[1\]: unknown key "tagz"'),
    ('[[image]]\nsource = "alpine"\ntags = ["1"]\n[[image]]\nsorce = "ghcr.io/x/y"\ntags = ["1"]\n',
     r'image\[2\]: unknown key "sorce" \(did you mean "source"\?\)'),
    ('images = []\n', r'^watchlist.toml: unknown key "images" \(did you mean "image"\?\)$'),
    ('[defaults]\nintervall = "5m"\n', r'defaults: unknown key "intervall" \(did you mean "interval"\?\)'),
    ('[service]\nlsten = "127.0.0.1:8080"\n', r'service: unknown key "lsten" \(did you mean "listen"\?\)'),
    ('[webhooks.github]\ntoken_envv = "X"\n', r'webhooks.github: unknown key "token_envv" \(did you mean "token_env"\?\)'),
    ('[webhooks.githb]\ntoken_env = "X"\n', r'webhooks.githb: unknown provider "githb" \(did you mean "github"\?\)'),
]


@pytest.mark.parametrize("text,message", UNKNOWN_FIRST, ids=[f"unknown-{n}" for n in range(len(UNKNOWN_FIRST))])
def test_unknown_keys_are_reported_first_with_a_close_match(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_watchlist(write(tmp_path, text))


NO_TRACEBACK = [
    ('[image]\nsource = "alpine"\ntags = ["1"]\n', r"image: expected a list of \[\[image\]\] tables: write \[\[image\]\], "
                                                   r"with double brackets"),
    ('[[publish]]\nroot = "x"\n', r"publish: expected a \[publish\] table, or \[publish.<name>\] tables, got list"),
    ('registries = ["r.io"]\n', r'registries: expected a table of \[registries."host"\] tables, got list'),
    ('[registries]\n"r.io" = true\n', r'registries."r.io": expected a table, got bool True'),
    ('[registries."https://r.io"]\ninsecure = true\n', r'registries."https://r.io": expected a registry host'),
    ('[registries."docker.io"]\ninsecure = true\n[registries."index.docker.io"]\ninsecure = true\n',
     r'registries."index.docker.io": the same registry as registries."docker.io" \(both mean docker.io\)'),
    ('[webhooks.github]\ntoken_env = "X"\ntoken_file = "f"\n', r"webhooks.github.token_env: give token_env or token_file, not both"),
    ('[service]\nlisten = "127.0.0.1:99999"\n', r"service.listen: port '99999' is not a number from 1 to 65535"),
    ('[service]\nlisten = "127.0.0.1:0"\n', r"service.listen: port '0' is not a number from 1 to 65535"),
    ('[service]\nlisten = "::1:8080"\n', r"service.listen: put an IPv6 address in brackets"),
    ('[state]\ndir = "~no-such-user-here/x"\n', r"state.dir: cannot expand '~no-such-user-here/x': no such user"),
    ('[publish]\nroot = "a\\u0000b"\n', r"publish.root: 'a\\x00b' contains a NUL character"),
    ('[defaults]\ninterval = "' + "9" * 400 + 'd"\n', r"defaults.interval: '9+'\.\.\. is too long"),
    ('[state]\nblob_cache_max = "' + "9" * 400 + 'GB"\n', r"state.blob_cache_max: '9+'\.\.\. is too large"),
]


@pytest.mark.parametrize("text,message", NO_TRACEBACK, ids=[f"mistake-{n}" for n in range(len(NO_TRACEBACK))])
def test_more_mistakes_are_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_watchlist(write(tmp_path, text))


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), ("0.0.0.0:65535", ("0.0.0.0", 65535)), ("localhost:1", ("localhost", 1)),
    ("[::1]:8080", ("::1", 8080)), ("[::]:80", ("::", 80)),
])
def test_parse_listen_accepts(text, expected):
    from reconciler.watchlist import parse_listen
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text,message", [
    ("8080", "expected HOST:PORT"), (":8080", "expected HOST:PORT"), ("host:", "port '' is not a number"),
    ("host:0", "from 1 to 65535"), ("host:65536", "from 1 to 65535"), ("host:80x", "port '80x'"),
    ("host:+80", "port '\\+80'"), ("::1:8080", "in brackets"), ("[nope]:80", "not an IPv6 address"),
    ("my host:80", "not a host name"),
])
def test_parse_listen_refuses(text, message):
    from reconciler.watchlist import parse_listen
    with pytest.raises(ValueError, match=message):
        parse_listen(text)


def test_token_realms_allow_private_token_services_per_registry(tmp_path):
    path = tmp_path / "watchlist.toml"
    path.write_text('[registries."reg.internal:5000"]\ntoken_realms = ["10.0.0.5:5001", "auth.internal"]\n'
                    '[[image]]\nsource = "reg.internal:5000/team/app"\ntags = ["v1"]\n')
    watchlist = load_watchlist(path)
    assert watchlist.registry("reg.internal:5000").token_realms == ("10.0.0.5:5001", "auth.internal")
    path.write_text('[registries."reg.internal:5000"]\ntoken_realms = ["https://10.0.0.5/auth"]\n'
                    '[[image]]\nsource = "reg.internal:5000/team/app"\ntags = ["v1"]\n')
    with pytest.raises(ConfigError, match=r'token_realms: expected hosts such as'):
        load_watchlist(path)
