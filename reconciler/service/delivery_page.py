"""The status page's "Delivery" section: per recently published image, the
time from the registry's push to the published revision and to each stratum 1
serving it; a stratum 1 lagging past `[publish] replica_lag_max` in red.
Rendered from the `delivery` part of `/status` (service/delivery.py)."""

from __future__ import annotations

from html import escape
from typing import Any, List, Mapping, Optional, Sequence

SHOWN = 20  # the newest deliveries on the page; /status has them all


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    for unit, size in (("h", 3600), ("min", 60)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.1f} s"


def _replica_cell(r: Optional[Mapping[str, Any]]) -> str:
    """One image at one stratum 1: how long after publish (and push) it served it, or not yet."""
    if r is None:
        return '<td><span class="muted">—</span></td>'
    if r.get("served"):
        push = r.get("after_push_seconds")
        return (f'<td>{_seconds(r.get("after_publish_seconds"))} after publish'
                + (f", {_seconds(push)} after push" if push is not None else "") + "</td>")
    if r.get("lagging"):
        return '<td class="lagging"><span class="bad">not yet</span></td>'
    return '<td class="waiting"><span class="muted">not yet</span></td>'


def delivery_section(delivery: Optional[Mapping[str, Any]]) -> str:
    """The section, or nothing when no image was published since the start and no stratum 1 is followed."""
    if not delivery:
        return ""
    replicas: Sequence[Mapping[str, Any]] = delivery.get("replicas") or []
    images: Sequence[Mapping[str, Any]] = delivery.get("images") or []
    if not replicas and not images:
        return ""
    parts: List[str] = ['<section id="delivery"><h2>Delivery</h2>']
    for r in replicas:
        state = (f'<span class="bad">lagging: not serving a revision published {_e(r.get("behind_since"))}</span>'
                 if r.get("lagging") else
                 f'<span class="bad">{_e(r.get("error"))}</span>' if r.get("error") else
                 '<span class="ok">up to date</span>' if not r.get("behind_since") else
                 f'<span class="muted">catching up (behind since {_e(r.get("behind_since"))})</span>')
        parts.append(f'<p class="replica{" lagging" if r.get("lagging") else ""}" data-url="{_e(r.get("url"))}">'
                     f'Stratum 1 <code>{_e(r.get("url"))}</code>: revision {_e(r.get("revision"))} · {state}</p>')
    if images:
        urls = [str(r.get("url")) for r in replicas]
        heads = "".join(f'<th scope="col">{_e(h)}</th>' for h in ["Image", "Revision", "Push → publish",
                                                                  "Seen → publish"] + [f"→ {u}" for u in urls])
        rows = []
        for d in images[:SHOWN]:
            cells = [f'<td><code>{_e(d.get("image"))}</code></td>', f'<td>{_e(d.get("revision"))}</td>',
                     f'<td>{_seconds(d.get("push_to_publish_seconds"))}</td>',
                     f'<td>{_seconds(d.get("seen_to_publish_seconds"))}</td>']
            by_url = {r.get("url"): r for r in d.get("replicas") or []}
            for url in urls:
                cells.append(_replica_cell(by_url.get(url)))
            rows.append(f'<tr data-path="{_e(d.get("path"))}">' + "".join(cells) + "</tr>")
        parts.append(f"<table><thead><tr>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    parts.append("</section>")
    return "".join(parts)
