"""``GET /``: what this server is and what it is doing, for the operator who opens it first.

One snapshot (:func:`snapshot`) feeds both answers: JSON for ``Accept: application/json`` (and for
clients that do not ask for HTML, such as curl), an HTML page for browsers. The snapshot has the
version, the API generations, operations and codecs served, the allow-list and limits in force
(settings whose names suggest a secret are left out; TLS shows as on/off only), the uptime, and
live counters read from the app's Prometheus registry: requests by status, bytes read upstream
against bytes sent back, and the saving. The page is self-contained (inline CSS and JS, allowed by
hash in its Content-Security-Policy, nothing from other hosts) and refreshes its counters by
polling ``GET /`` for JSON, without reloading.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from .. import __version__
from ..request import COMPRESSION_IDS, FILTER_IDS

if TYPE_CHECKING:
    from .service import Service

#: settings never shown, whatever their value: names that suggest a secret or a key file.
SECRET_WORDS = ("secret", "password", "token", "key", "cert", "credential", "auth")
#: links on the page (and in the JSON).
LINKS = {"docs": "/docs", "redoc": "/redoc", "metrics": "/metrics", "healthz": "/healthz",
         "capabilities": "/capabilities", "openapi": "/openapi.json"}
REDUCTION_APIS = ("v1", "v2", "batch")


def install(app: FastAPI, server: "Service") -> None:
    """Register ``GET /`` on ``app``; the uptime counts from this call (the app's creation)."""
    started_wall, started = time.time(), time.monotonic()

    @app.get("/", response_class=Response, responses={200: {
        "description": "The server's status: JSON for Accept: application/json (and clients "
                       "that do not ask for text/html), else an HTML page that refreshes itself.",
        "content": {"application/json": {"example": EXAMPLE}, "text/html": {}}}})
    async def status(request: Request) -> Response:
        """Status: version, APIs, codecs, allow-list and limits, uptime, live counters."""
        snap = snapshot(server, started_wall, time.monotonic() - started)
        headers = {"cache-control": "no-store", "vary": "Accept"}
        if not wants_html(request.headers.get("accept", "")):
            return JSONResponse(snap, headers=headers)
        headers["content-security-policy"] = CSP
        return HTMLResponse(render_html(snap), headers=headers)


def wants_html(accept: str) -> bool:
    """True when ``accept`` prefers ``text/html`` to ``application/json`` (browsers do)."""
    q: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        weight = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    weight = float(p[2:])
                except ValueError:
                    weight = 0.0
        q[media.lower()] = max(weight, q.get(media.lower(), 0.0))
    return q.get("text/html", 0.0) > 0 and q.get("text/html", 0.0) >= q.get("application/json", 0.0)


def public_settings(server: "Service") -> dict[str, Any]:
    """The settings in force, without anything that could be a secret."""
    out: dict[str, Any] = {}
    for name in type(server.settings).model_fields:
        if any(w in name.lower() for w in SECRET_WORDS):
            continue
        v = getattr(server.settings, name)
        out[name] = list(v) if isinstance(v, tuple) else v
    out["tls"] = bool(getattr(server.settings, "tls_cert", None))
    return out


def _samples(server: "Service") -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for metric in server.metrics.collect():
        for s in metric.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def counters(server: "Service") -> dict[str, Any]:
    """Live counters from the app's metrics (every worker process's, see :mod:`.metrics`)."""
    s = _samples(server)
    by_status: dict[str, int] = {}
    by_api = {api: 0 for api in REDUCTION_APIS}
    other = 0
    for labels, value in s.get("activestorage_requests_total", ()):
        if labels.get("api") in by_api:
            by_api[labels["api"]] += int(value)
            by_status[labels["status"]] = by_status.get(labels["status"], 0) + int(value)
        else:
            other += int(value)

    def total(name: str) -> int:
        return int(sum(v for _l, v in s.get(name, ())))

    upstream = total("activestorage_upstream_bytes_total")
    sent = total("activestorage_reduction_response_bytes_total")
    return {
        "requests": sum(by_api.values()),
        "requests_by_status": dict(sorted(by_status.items())),
        "requests_by_api": by_api,
        "other_requests": other,
        "errors_by_kind": {labels["kind"]: int(v)
                           for labels, v in s.get("activestorage_errors_total", ())},
        "upstream_requests": total("activestorage_upstream_requests_total"),
        "bytes_upstream": upstream,
        "bytes_sent": sent,
        "bytes_saved": upstream - sent,
        "saving": (1 - sent / upstream) if upstream else None,
        "bytes_in_flight": total("activestorage_bytes_in_flight"),
        "chunk_cache": {"hits": total("activestorage_chunk_cache_hits_total"),
                        "misses": total("activestorage_chunk_cache_misses_total"),
                        "bytes": total("activestorage_chunk_cache_bytes")},
    }


def snapshot(server: "Service", started_wall: float, uptime: float) -> dict[str, Any]:
    """Everything ``GET /`` shows, as plain JSON-able data."""
    caps = server.capabilities()
    settings = public_settings(server)
    return {
        "name": "activestorage reduction server",
        "version": __version__,
        "api": caps.get("api", []),
        "extensions": {"batch": caps.get("batch", False), "fold": caps.get("fold", False)},
        "operations": caps.get("operations", []),
        "options": caps.get("options", []),
        "codecs": {"compression": list(COMPRESSION_IDS), "filters": list(FILTER_IDS)},
        "allow_upstream": settings.pop("allow_upstream", []),
        "limits": settings,
        "started": datetime.fromtimestamp(started_wall, timezone.utc).isoformat(timespec="seconds"),
        "uptime_seconds": round(uptime, 3),
        "pid": os.getpid(),
        "counters": counters(server),
        "links": LINKS,
    }


# ------------------------------------------------------------------------------------ the page

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1c2430;
background:#f5f7fa}
header{background:#1f3a5f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:2px 0 0;opacity:.85}main{padding:16px 24px;display:grid;gap:16px;
grid-template-columns:repeat(auto-fit,minmax(340px,1fr))}
section{background:#fff;border:1px solid #dde3ea;border-radius:6px;padding:12px 16px}
h2{font-size:15px;margin:0 0 8px;color:#1f3a5f}table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eef1f4;vertical-align:top}
th{font-weight:600;color:#4a5666;width:45%}td.n{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:26px;font-weight:600;color:#1b7f4b}nav a{margin-right:14px;color:#fff}
code{background:#eef1f4;padding:0 3px;border-radius:3px}#live{font-size:12px;opacity:.8}
"""

_SCRIPT = """
(function(){
  var p=new URLSearchParams(location.search);
  var every=Math.max(0.5,parseFloat(p.get("refresh")||"2"))*1000;
  function size(n){var u=["B","KiB","MiB","GiB","TiB"],i=0;
    while(n>=1024&&i<u.length-1){n/=1024;i++;}return (i?n.toFixed(1):n)+" "+u[i];}
  function dur(s){s=Math.floor(s);var d=Math.floor(s/86400),h=Math.floor(s%86400/3600),
    m=Math.floor(s%3600/60);return (d?d+"d ":"")+(d||h?h+"h ":"")+m+"m "+(s%60)+"s";}
  function put(id,v){var e=document.getElementById(id);if(e)e.textContent=v;}
  function rows(id,obj){var t=document.getElementById(id);if(!t)return;
    while(t.firstChild)t.removeChild(t.firstChild);
    Object.keys(obj).forEach(function(k){var r=t.insertRow(),a=r.insertCell(),b=r.insertCell();
      a.textContent=k;b.textContent=obj[k];b.className="n";});}
  function show(s){var c=s.counters;
    put("uptime",dur(s.uptime_seconds));put("requests",c.requests);
    put("other_requests",c.other_requests);put("upstream_requests",c.upstream_requests);
    put("bytes_upstream",size(c.bytes_upstream));put("bytes_sent",size(c.bytes_sent));
    put("bytes_saved",size(Math.max(0,c.bytes_saved)));put("bytes_in_flight",size(c.bytes_in_flight));
    put("saving",c.saving===null?"\\u2013":(100*c.saving).toFixed(2)+" %");
    rows("by_status",c.requests_by_status);rows("by_api",c.requests_by_api);
    rows("errors",c.errors_by_kind);}
  function tick(){fetch(location.pathname,{headers:{Accept:"application/json"},cache:"no-store"})
    .then(function(r){return r.json();})
    .then(function(s){show(s);put("live","live \\u00b7 updated "+new Date().toLocaleTimeString());})
    .catch(function(e){put("live","not updating: "+e);});}
  show(JSON.parse(document.getElementById("snapshot").textContent));
  setInterval(tick,every);
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: the page may run its own script and style only, and talk only to this server.
CSP = (f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
       "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")


def _size(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    x, i = float(n), 0
    while x >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{x:.1f} {units[i]}" if i else f"{n} B"


def _table(rows: dict[str, Any], ident: str = "") -> str:
    body = "".join(f"<tr><td>{html.escape(str(k))}</td><td class=n>{html.escape(str(v))}</td></tr>"
                   for k, v in rows.items())
    return f'<table><tbody{f" id={ident}" if ident else ""}>{body}</tbody></table>'


def render_html(snap: dict[str, Any]) -> str:
    """The status page for ``snap``; its script keeps the counters current."""
    e = html.escape
    c = snap["counters"]
    saving = "\u2013" if c["saving"] is None else f"{100 * c['saving']:.2f} %"
    limits = "".join(f"<tr><th>{e(k)}</th><td><code>{e(json.dumps(v))}</code></td></tr>"
                     for k, v in snap["limits"].items())
    links = " ".join(f'<a href="{e(u)}">{e(k)}</a>' for k, u in snap["links"].items())
    allow = ", ".join(f"<code>{e(h)}</code>" for h in snap["allow_upstream"]) or "(none)"
    workers = snap["limits"].get("workers", 1)
    per_worker = (f"<p>Counters are this worker's (pid {snap['pid']}) of {workers}.</p>"
                  if isinstance(workers, int) and workers > 1 else "")
    data = json.dumps(snap).replace("<", "\\u003c")  # safe inside <script>
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>activestorage {e(snap["version"])}: status</title>
<link rel="icon" href="/docs-assets/favicon.png">
<style>{_STYLE}</style></head>
<body><header><h1>{e(snap['name'])} {e(snap['version'])}</h1>
<p>up <span id="uptime">{e(str(snap['uptime_seconds']))} s</span> since {e(snap['started'])}
 &middot; <span id="live">live</span></p>
<nav>{links}</nav></header>
<main>
<section><h2>Traffic kept off the network</h2>
<div class="big" id="saving">{saving}</div>
<table>
<tr><th>read from stores</th><td class=n id="bytes_upstream">{_size(c['bytes_upstream'])}</td></tr>
<tr><th>sent back to clients</th><td class=n id="bytes_sent">{_size(c['bytes_sent'])}</td></tr>
<tr><th>saved</th><td class=n id="bytes_saved">{_size(max(0, c['bytes_saved']))}</td></tr>
<tr><th>range GETs to stores</th><td class=n id="upstream_requests">{c['upstream_requests']}</td></tr>
<tr><th>in flight now</th><td class=n id="bytes_in_flight">{_size(c['bytes_in_flight'])}</td></tr>
</table></section>
<section><h2>Reduction requests: <span id="requests">{c['requests']}</span></h2>
<h3>by status</h3>{_table(c['requests_by_status'], 'by_status')}
<h3>by API</h3>{_table(c['requests_by_api'], 'by_api')}
<h3>errors by kind</h3>{_table(c['errors_by_kind'], 'errors')}
<p>Other requests (this page, docs, metrics): <span id="other_requests">{c['other_requests']}</span>
</p>{per_worker}</section>
<section><h2>What it serves</h2><table>
<tr><th>API generations</th><td>{e(', '.join(snap['api']))}
 + batch{' with fold' if snap['extensions']['fold'] else ''}</td></tr>
<tr><th>operations</th><td>{e(', '.join(snap['operations']))}</td></tr>
<tr><th>compression</th><td>{e(', '.join(snap['codecs']['compression']))}</td></tr>
<tr><th>filters</th><td>{e(', '.join(snap['codecs']['filters']))}</td></tr>
<tr><th>options</th><td>{e(', '.join(snap['options']))}</td></tr>
<tr><th>upstream allow-list</th><td>{allow}</td></tr></table></section>
<section><h2>Limits in force</h2><table>{limits}</table></section>
</main>
<script type="application/json" id="snapshot">{data}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


#: the JSON answer's shape, for the OpenAPI document.
EXAMPLE: dict[str, Any] = {
    "name": "activestorage reduction server", "version": "0.1.0", "api": ["v1", "v2"],
    "extensions": {"batch": True, "fold": True},
    "operations": ["count", "min", "max", "sum", "select"], "options": ["option_wide_sum"],
    "codecs": {"compression": ["gzip", "zlib"], "filters": ["shuffle", "fletcher32"]},
    "allow_upstream": ["s3.example.org"],
    "limits": {"max_body_bytes": 1048576, "max_batch": 1024, "tls": True},
    "started": "2026-01-01T00:00:00+00:00", "uptime_seconds": 3600.0, "pid": 1234,
    "counters": {"requests": 3, "requests_by_status": {"200": 2, "400": 1},
                 "requests_by_api": {"v1": 0, "v2": 3, "batch": 0}, "other_requests": 5,
                 "errors_by_kind": {"validation": 1}, "upstream_requests": 2,
                 "bytes_upstream": 8000, "bytes_sent": 200, "bytes_saved": 7800,
                 "saving": 0.975, "bytes_in_flight": 0},
    "links": LINKS,
}
