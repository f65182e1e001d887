"""The watchlist (watchlist.py `load_watchlist`): an operator's file, but
every mistake in it must come back as a ConfigError that names the file and
key, never as a traceback."""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import tempfile
from pathlib import Path
from typing import Any, List

import tomli_w
from hypothesis import event, example, given
from hypothesis import strategies as st

from reconciler.config.watchlist_keys import DEFAULTS, IMAGE, PUBLISH, REGISTRY, SERVICE, STATE, WEBHOOK
from reconciler.errors import ConfigError
from reconciler.watchlist import MAX_DURATION_S, Watchlist, load_watchlist, parse_duration, parse_listen, parse_size
from tests.fuzz.budget import budget

# Values an operator might plausibly write, and some no one would.
PLAUSIBLE_STRINGS = [
    "local", "cvmfs", "publish", "/tmp/x", "~", "~nosuchuser/x", "a\0b", "", " ", "..", "../x", "/",
    "15m", "1h30m", "2d", "0s", "0m", "1s", "3650d", "3651d", "1000000000d", "9" * 400 + "s", "٣m", "50GiB", "1e309GiB", "9" * 400 + "MB", "500 MB",
    "linux/amd64", "linux/arm64/v8", "linux", "a/b/c/d", "//",
    "127.0.0.1:8080", "[::1]:8080", "[::1]", "0.0.0.0:0", "host:99999", "::1:80", "[zz]:1", "h:٨٠",
    "docker.io/library/alpine", "alpine", "ghcr.io/a/b:tag", "reg.example.org:5000/a/b", "A/B", "a@sha256:x",
    "v1", "-bad", "latest", "^v[0-9]+$", "(", "[", "a{99999999999}", "(?P<x>", "*", ">=1.2,<2", "~=1", "==",
    "containers.example.org", "ligo", "/abs", "a/../b", "PASSWORD_ENV", "http://mirror:5000", "ftp://x",
    "registry.example.org", "auth.internal", "10.0.0.5:5001", "github", "generic", "nosuch",
]
strings = st.one_of(st.sampled_from(PLAUSIBLE_STRINGS), st.text(max_size=12))
scalars = st.one_of(
    strings, st.integers(min_value=-(2**63), max_value=2**63 - 1), st.booleans(),
    st.floats(allow_nan=True), st.just(math.inf),
    st.datetimes(), st.dates(), st.times(), st.just(datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)


def table(keys, extra=True):
    """A table of (mostly) known keys with plausible or arbitrary values."""
    key = st.one_of(st.sampled_from(keys), st.text(max_size=8)) if extra else st.sampled_from(keys)
    return st.dictionaries(key, st.one_of(strings, values, st.lists(strings, max_size=3)), max_size=len(keys))


image = table(list(IMAGE.names))
hosts = st.one_of(st.sampled_from(["registry.example.org", "127.0.0.1:5000", "docker.io", "index.docker.io",
                                   "https://x", "[::1]:5000", "a b", ""]), st.text(max_size=10))
document = st.fixed_dictionaries({}, optional={
    "publish": table(list(PUBLISH.names)),
    "state": table(list(STATE.names)),
    "defaults": table(list(DEFAULTS.names)),
    "registries": st.dictionaries(hosts, table(list(REGISTRY.names), extra=False), max_size=2),
    "service": table(list(SERVICE.names)),
    "webhooks": st.dictionaries(st.sampled_from(["github", "generic", "gitlab", "nosuch"]),
                                table(list(WEBHOOK.names), extra=False), max_size=2),
    "image": st.one_of(st.lists(image, max_size=3), image),
    "extra": values,
})


def load(text: str) -> None:
    """Load `text` as a watchlist: a Watchlist or a ConfigError, nothing else."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "watchlist.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            watchlist = load_watchlist(path)
        except ConfigError as exc:
            assert str(exc), "a ConfigError says what is wrong"
            event("ConfigError")
            return
        event("loaded")
        assert isinstance(watchlist, Watchlist)
        check_usable(watchlist)


def check_usable(watchlist: Watchlist) -> None:
    """What loads can be used: intervals the scheduler can add to a date (and
    that are not 0: a poll a second), a grace period a date can be moved by."""
    now = datetime.datetime.now(datetime.timezone.utc)
    for seconds in [watchlist.interval] + [entry.interval for entry in watchlist.images]:
        assert seconds >= 1, seconds
        now + datetime.timedelta(seconds=seconds)
    now - datetime.timedelta(seconds=watchlist.publish.gc_grace)
    # Values become file names, command arguments and headers: none can hold a NUL.
    for value in strings_in(watchlist):
        assert "\0" not in value, value


def strings_in(value: Any) -> List[str]:
    """Every string inside a loaded watchlist (dataclasses, tuples, dicts, paths)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Path):
        return [str(value)]
    if dataclasses.is_dataclass(value):
        return [s for f in dataclasses.fields(value) for s in strings_in(getattr(value, f.name))]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings_in(k) + strings_in(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in strings_in(v)]
    return []


@given(document)
@budget(400)
@example({"image": [{"source": "alpine", "tag_pattern": "a{99999999999}"}]})  # OverflowError
@example({"image": [{"source": "alpine", "tag_pattern": "(" * 5000 + ")" * 5000}]})  # RecursionError
@example({"image": [{"source": "alpine", "semver": "~=1"}]})
@example({"state": {"blob_cache_max": "9" * 400 + "MB"}})
@example({"defaults": {"interval": "9" * 5000 + "s"}})  # more digits than int() converts
@example({"defaults": {"interval": "1000000000d"}})  # over timedelta's range: OverflowError in the scheduler
@example({"publish": {"gc_grace": "99999999999999999d"}})
@example({"image": [{"source": "alpine", "tags": ["v1"], "interval": "0s"}]})  # polled every second
@example({"defaults": {"interval": "٣m"}})  # Arabic-Indic 3: \d is Unicode
@example({"publish": {"root": "~nosuchuser/x"}})
@example({"image": [{"source": "alpine", "tags": ["v1"], "dest": "a/b:c"}]})
@example({"registries": {"registry.example.org": {"username": "u", "password_env": "P", "token_realms": ["[zz]"]}}})
@example({"service": {"listen": "h:٨٠"}})
@example({"image": [{"source": "alpine", "tags": ["v1"], "dest": "a\0b"}]})  # NUL: ValueError in every os call
@example({"publish": {"bind_points": ["cvmfs\0"]}})
@example({"publish": {"backend": "cvmfs", "repository": "r\0.example.org"}})
def test_generated_watchlists_load_or_raise_config_error(doc: dict) -> None:
    load(tomli_w.dumps(doc))


@given(st.one_of(st.text(max_size=300), st.text(st.sampled_from('[]="\n.abimgesourctag=\\ 1,{}\'#'), max_size=200)))
@budget(200)
@example("[[image]]\nsource = 'alpine'\ntags = ['v1']\n[image]\n")
@example("a = 1\na = 2\n")
@example("x = \"\\ud800\"\n")
def test_any_text_loads_or_raises_config_error(text: str) -> None:
    load(text)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "watchlist.toml"
    path.write_bytes(b"[publish]\nroot = \"\xff\"\n")
    try:
        load_watchlist(path)
    except ConfigError as exc:
        assert "UTF-8" in str(exc)
    else:
        raise AssertionError("a file that is not UTF-8 was accepted")


ASCII_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
duration_like = st.one_of(st.text(max_size=20), st.text(st.sampled_from("0123456789dhms \n\u0663\u00b2"), max_size=14))


@given(duration_like)
@budget(300)
@example("\u0663m")  # an Arabic-Indic 3 was read as 3 minutes
@example("15m\n")
@example("3650d")
@example("3651d")
def test_durations_are_ascii_and_bounded(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        m = ASCII_DURATION.fullmatch(text.strip())
        assert not m or not any(m.groups()) or sum(
            int(g or 0) * unit for g, unit in zip(m.groups(), (86400, 3600, 60, 1))) > MAX_DURATION_S
        return
    assert ASCII_DURATION.fullmatch(text.strip()) and 0 <= seconds <= MAX_DURATION_S


@given(st.one_of(st.text(max_size=20), st.text(st.sampled_from("0123456789.KMGTiB \u0663"), max_size=12)))
@budget(200)
@example("\u0663GiB")
def test_sizes_are_ascii(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError:
        return
    assert re.fullmatch(r"\s*[0-9]+(?:\.[0-9]+)?\s*(?:B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)\s*", text) and size >= 0


@given(st.one_of(st.text(max_size=30), st.text(st.sampled_from("0123456789.:[]abf \u0663%"), max_size=20)))
@budget(200)
@example("[::1]:80")
@example("[fe80::1%eth0]:80")
@example("h:\u0668\u0660")
def test_listen_addresses_parse_or_raise_value_error(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ValueError:
        return
    written_port = text.rpartition(":")[2]
    assert re.fullmatch(r"[0-9]{1,5}", written_port) and int(written_port) == port and 1 <= port <= 65535
    assert host and host in text


# Valid watchlists, generated from the documented grammar: they must load, and
# load to what was written.
from tests.fuzz.test_fuzz_reference import domain, path_component, tag  # noqa: E402

valid_duration = st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 99), st.sampled_from("smhd"))
valid_platform = st.sampled_from(["linux/amd64", "linux/arm64", "linux/arm64/v8", "linux/arm/v7", "linux/ppc64le"])
valid_source = st.builds(lambda host, parts: f"{host}/{'/'.join(parts)}", domain,
                         st.lists(path_component, min_size=1, max_size=3))
valid_image = st.fixed_dictionaries(
    {"source": valid_source},
    optional={"interval": valid_duration, "platforms": st.lists(valid_platform, min_size=1, max_size=2)},
).flatmap(lambda table: st.one_of(
    st.lists(tag, min_size=1, max_size=3).map(lambda tags: {**table, "tags": tags}),
    st.sampled_from(["^v[0-9]+$", ".*", "latest"]).map(lambda p: {**table, "tag_pattern": p}),
    st.builds(lambda spec, newest: {**table, "semver": spec, **({"newest": newest} if newest else {})},
              st.sampled_from([">=1.2,<2", "~=1.4", "==3.*"]), st.none() | st.integers(1, 9)),
))
valid_document = st.fixed_dictionaries(
    {"image": st.lists(valid_image, min_size=1, max_size=3, unique_by=lambda t: t["source"].lower())},
    optional={
        "defaults": st.fixed_dictionaries({}, optional={"interval": valid_duration,
                                                        "platforms": st.lists(valid_platform, min_size=1, max_size=2)}),
        "publish": st.fixed_dictionaries({}, optional={"root": st.sampled_from(["publish", "/srv/images", "out/x"]),
                                                       "gc_grace": valid_duration.map(lambda d: d.replace("d", "h"))}),
        "service": st.fixed_dictionaries({"listen": st.sampled_from(["127.0.0.1:8080", "[::1]:9000", "localhost:1"])}),
    },
)


@given(valid_document)
@budget(200)
def test_valid_watchlists_load_to_what_was_written(doc: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "watchlist.toml"
        path.write_text(tomli_w.dumps(doc), encoding="utf-8")
        watchlist = load_watchlist(path)
    check_usable(watchlist)
    default_interval = parse_duration(doc.get("defaults", {}).get("interval", "15m"))
    assert watchlist.interval == default_interval
    assert len(watchlist.images) == len(doc["image"])
    for entry, table in zip(watchlist.images, doc["image"]):
        assert f"{entry.source.registry}/{entry.source.repository}".lower().endswith(
            table["source"].split("/", 1)[1]), (entry.source, table["source"])
        assert entry.tags == tuple(table.get("tags", ()))
        assert entry.tag_pattern == table.get("tag_pattern") and entry.semver == table.get("semver")
        assert entry.newest == table.get("newest")
        assert entry.interval == (parse_duration(table["interval"]) if "interval" in table else default_interval)
        assert entry.dest == entry.source.name
        if "platforms" in table:
            assert [str(p) for p in entry.platforms] == table["platforms"]
