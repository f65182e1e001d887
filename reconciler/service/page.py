"""The status page (`GET /`): the service's state for a site admin, as HTML.

It is rendered from the same dictionary as `/status` (the JSON stays the
source of truth), here in Python, so every name, tag and error message that
came from an image or a registry is escaped in one place and the page reads
without JavaScript too. A few lines of inline script refresh it: every few
seconds they fetch the page again and swap its `<main>`, which keeps the
scroll position and, when the service is down, the last state with a note
(a meta refresh would replace the page with the browser's error page).
Everything is inline (no external assets); the layout turns the table into
one card per tag on narrow screens.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from html import escape
from typing import Any, Dict, List, Mapping, Optional, Sequence

REFRESH_SECONDS = 3

_SCRIPT = """
(function () {
  var lost = null;
  function refresh() {
    fetch(location.pathname, {cache: "no-store", headers: {"Accept": "text/html"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("status"), main = document.getElementById("status");
        if (fresh && main) { main.replaceWith(document.adoptNode(fresh)); document.title = doc.title; }
        lost = null;
        document.getElementById("conn").hidden = true;
      })
      .catch(function () {
        lost = lost || new Date();
        var conn = document.getElementById("conn");
        conn.textContent = "Cannot reach the service since " + lost.toISOString().slice(11, 19) +
          " UTC; this is the last state it showed.";
        conn.hidden = false;
      })
      .then(function () { setTimeout(refresh, %d); });
  }
  setTimeout(refresh, %d);
})();
""" % (REFRESH_SECONDS * 1000, REFRESH_SECONDS * 1000)

_STYLE = """
:root { --fg: #1b1f23; --muted: #5f6b76; --line: #d8dee4; --bad: #b00020; --bad-bg: #fdecee;
        --ok: #1a7f37; --bar: #0969da; --bg: #fff; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9aa7b2; --line: #30363d; --bad: #ff7b72; --bad-bg: #3a1618;
          --ok: #3fb950; --bar: #58a6ff; --bg: #0d1117; }
}
* { box-sizing: border-box; }
body { margin: 0; padding: 1rem; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; }
h2 { font-size: 1.05rem; margin: 1.25rem 0 .5rem; }
p { margin: .25rem 0; }
code, .digest { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
.muted { color: var(--muted); }
.bad { color: var(--bad); font-weight: 600; }
.ok { color: var(--ok); }
#conn { position: sticky; top: 0; padding: .5rem .75rem; background: var(--bad-bg); color: var(--bad);
        border: 1px solid var(--bad); border-radius: 6px; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; vertical-align: top; padding: .4rem .5rem; border-bottom: 1px solid var(--line); }
th { font-size: .85rem; color: var(--muted); font-weight: 600; white-space: nowrap; }
/* break-word keeps the short columns at their natural width on a wide screen; only
   the error column (long digests) may break anywhere. */
td { overflow-wrap: break-word; }
td.error { overflow-wrap: anywhere; min-width: 12rem; }
tr.failing td { background: var(--bad-bg); }
tr.failing td:first-child { box-shadow: inset 4px 0 var(--bad); }
td.error { color: var(--bad); white-space: pre-wrap; }
.progress { margin: .4rem 0; }
progress { width: 100%; max-width: 28rem; height: .8rem; accent-color: var(--bar); }
footer { margin-top: 1.5rem; font-size: .85rem; }
@media (max-width: 640px) {
  body { padding: .6rem; }
  thead { display: none; }
  table, tbody, tr, td { display: block; width: 100%; }
  tr { border: 1px solid var(--line); border-radius: 6px; margin: 0 0 .6rem; }
  tr.failing { border-color: var(--bad); }
  td { border: 0; padding: .2rem .6rem; }
  td::before { content: attr(data-label); display: inline-block; min-width: 6.5rem; color: var(--muted);
               font-size: .85rem; }
  td.error::before { display: block; }
  td.empty { display: none; }
  tr.failing td:first-child { box-shadow: none; }
}
"""

_SCRIPT_HASH = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()

# The page runs only its own inline script (by hash) and talks only to this
# service: even a name that slipped past escaping could not load or run anything.
PAGE_HEADERS: Dict[str, str] = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'unsafe-inline'; "
                                f"script-src 'sha256-{_SCRIPT_HASH}'; connect-src 'self'; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _e(value: object) -> str:
    """Escaped text (quotes too, so it is safe in attributes as well)."""
    return escape("" if value is None else str(value), quote=True)


def _parse(iso: Optional[str]) -> Optional[dt.datetime]:
    if not iso:
        return None
    try:
        return dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _span(seconds: float) -> str:
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def relative(iso: Optional[str], now: dt.datetime) -> str:
    """`4 min ago`, `just now`, `in 12 min`; `—` for no time."""
    when = _parse(iso)
    if when is None:
        return "—"
    delta = (when - now).total_seconds()
    if abs(delta) < 1:
        return "just now" if delta <= 0 else "now"
    return f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"


def _time(iso: Optional[str], now: dt.datetime, *, due: bool = False) -> str:
    """A <time> with the relative time as text and the exact one as its title."""
    if not iso:
        return '<span class="muted">—</span>'
    when = _parse(iso)
    text = "due now" if due and when is not None and when <= now else relative(iso, now)
    return f'<time datetime="{_e(iso)}" title="{_e(iso)}">{_e(text)}</time>'


def short_digest(digest: Optional[str]) -> str:
    """`sha256:` and the first 12 hex digits, as the logs and summaries print it."""
    return (digest or "")[:19]


def size(n: int) -> str:
    """Bytes for people: `512 B`, `3.4 kB`, `1.2 MB`, `2.0 GB` (powers of 1000, as the progress line)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _cycle_section(status: Mapping[str, Any], now: dt.datetime) -> str:
    cycle: Mapping[str, Any] = status.get("cycle") or {}
    parts: List[str] = ['<section id="cycle"><h2>Current cycle</h2>']
    if not cycle.get("running"):
        last = status.get("last_cycle")
        if last:
            parts.append(f'<p>Idle. The last cycle finished {_time(last, now)} '
                         f'<span class="muted">({_e(status.get("cycles_done", 0))} so far)</span>.</p>')
        else:
            parts.append("<p>Idle. No cycle has finished yet.</p>")
        return "".join(parts) + "</section>"
    entries = ", ".join(_e(e) for e in cycle.get("entries") or [])
    started = _parse(cycle.get("started"))
    since = (f'for {_span((now - started).total_seconds())} (since '
             f'<time datetime="{_e(cycle.get("started"))}">{started:%H:%M:%S} UTC</time>)' if started else "")
    parts.append(f'<p>Running {since}: {entries}</p>')
    images: Sequence[Mapping[str, Any]] = cycle.get("images") or []
    if not images:
        parts.append('<p class="muted">Checking tags; nothing is downloading or being applied.</p>')
    for p in images:
        if p.get("phase") == "apply":
            what = f'applying: {_e(p.get("files", 0))} files applied, {size(int(p.get("written", 0)))} written'
            bar = ""
        else:
            done, total = int(p.get("downloaded", 0)), int(p.get("to_download", 0))
            what = f"downloaded {size(done)} of {size(total)}"
            bar = f'<progress value="{min(done, total)}" max="{max(total, 1)}"></progress>'
        parts.append(f'<div class="progress"><code>{_e(p.get("image"))}</code> {what}{bar}</div>')
    return "".join(parts) + "</section>"


def _cell(label: str, html: str, cls: str = "") -> str:
    # An empty cell takes no line in the narrow (card) layout.
    cls = " ".join(c for c in (cls, "" if html else "empty") if c)
    cls_attr = f' class="{cls}"' if cls else ""
    return f'<td data-label="{_e(label)}"{cls_attr}>{html}</td>'


def _target(image: Mapping[str, Any]) -> str:
    """Where the entry publishes, whether anyone can read it, and whether its
    source repository was public when last probed."""
    public = bool(image.get("target_public"))
    html = (f'<code>{_e(image.get("target"))}</code> '
            + ('public' if public else '<span class="muted">restricted</span>'))
    seen = image.get("source_visibility")
    if public and seen and seen.get("public") is False:
        kind = "private source, private_ok" if image.get("private_ok") else "private source"
        html += f' <span class="bad" title="{_e(seen.get("reason"))}">{_e(kind)}</span>'
    return html


def _rows(image: Mapping[str, Any], now: dt.datetime) -> List[str]:
    rows: List[str] = []
    target = _target(image) if image.get("target") else ""
    next_poll = _time(image.get("next_poll"), now, due=True)
    error = image.get("error")
    if error:
        # The entry itself failed (its tag list, or the whole cycle): no tag row says so.
        rows.append(
            f'<tr class="failing entry" data-dest="{_e(image.get("dest"))}">'
            + _cell("Tag", f'<code>{_e(image.get("dest"))}</code> <span class="muted">(all tags)</span>')
            + _cell("Platform", "")
            + _cell("Published", '<span class="muted">—</span>')
            + _cell("Changed", '<span class="muted">—</span>')
            + _cell("Next poll", next_poll)
            + _cell("Target", target)
            + _cell("Error", f'{_e(error.get("reason"))} <span class="muted">({_time(error.get("at"), now)})</span>',
                    "error")
            + "</tr>")
    tags: Sequence[Mapping[str, Any]] = image.get("tags") or []
    if not tags and not error:
        rows.append(f'<tr data-dest="{_e(image.get("dest"))}">'
                    + _cell("Tag", f'<code>{_e(image.get("dest"))}</code>')
                    + _cell("Platform", "") + _cell("Published", '<span class="muted">no tags yet</span>')
                    + _cell("Changed", "") + _cell("Next poll", next_poll) + _cell("Target", target)
                    + _cell("Error", "") + "</tr>")
    for tag in tags:
        failing = tag.get("state") == "failing"
        published = tag.get("published")
        digest = (f'<span class="digest" title="{_e(published)}">{_e(short_digest(published))}</span>'
                  if published else '<span class="muted">not published</span>') + _signer(tag)
        if failing:
            err = (f'{_e(tag.get("last_error"))} <span class="muted">({_time(tag.get("last_failure"), now)}, '
                   f'{_e(tag.get("failures"))} in a row)</span>')
        else:
            err = ""
        rows.append(
            f'<tr class="tag{" failing" if failing else ""}" data-path="{_e(tag.get("path"))}">'
            + _cell("Tag", f'<code>{_e(tag.get("path"))}</code>')
            + _cell("Platform", _e(tag.get("platform")))
            + _cell("Published", digest)
            + _cell("Changed", _time(tag.get("last_changed"), now))
            + _cell("Next poll", next_poll)
            + _cell("Target", target)
            + _cell("Error", err, "error" if failing else "")
            + "</tr>")
    return rows


def _signer(tag: Mapping[str, Any]) -> str:
    """Under the published digest: who signed it (a key's fingerprint), or that no policy applies."""
    signer = tag.get("signed_by")
    if not signer:
        return ""
    if len(signer) == 64:  # a key's fingerprint
        where = tag.get("signed_where") or ""
        return (f' <span class="signer" title="key {_e(signer)} ({_e(where)})">signed by '
                f'<span class="digest">{_e(signer[:16])}</span></span>')
    return f' <span class="signer muted">{_e(signer)}</span>'


def render_page(status: Mapping[str, Any]) -> str:
    """The whole page for one `/status` dictionary (Service.status())."""
    now = _parse(status.get("now")) or dt.datetime.now(dt.timezone.utc)
    images: Sequence[Mapping[str, Any]] = status.get("images") or []
    tags = [t for i in images for t in i.get("tags") or []]
    failing = sum(1 for t in tags if t.get("state") == "failing") + sum(1 for i in images if i.get("error"))
    rows = [r for image in images for r in _rows(image, now)]
    summary = (f'{len(tags)} tag{"" if len(tags) == 1 else "s"} watched in {len(images)} '
               f'entr{"y" if len(images) == 1 else "ies"} · '
               + (f'<span class="bad">{failing} failing</span>' if failing else '<span class="ok">none failing</span>')
               + f' · <span class="muted">as of {_e(now.strftime("%H:%M:%S"))} UTC</span>')
    heads = "".join(f'<th scope="col">{h}</th>' for h in ("Tag", "Platform", "Published", "Changed", "Next poll",
                                                          "Target", "Error"))
    table = (f"<table><thead><tr>{heads}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
             if rows else '<p class="muted">The watchlist has no images.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{"(" + str(failing) + " failing) " if failing else ""}reconciler status</title>
<noscript><meta http-equiv="refresh" content="{REFRESH_SECONDS * 3}"></noscript>
<style>{_STYLE}</style>
</head>
<body>
<p id="conn" role="status" hidden></p>
<main id="status" data-failing="{failing}">
<header><h1>reconciler</h1><p>{summary}</p></header>
{_cycle_section(status, now)}
<section id="images"><h2>Watched tags</h2>{table}</section>
</main>
<footer class="muted">Refreshes every {REFRESH_SECONDS} s. The same data as JSON: <a href="status">/status</a>.</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""
