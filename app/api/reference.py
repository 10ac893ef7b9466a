"""`/docs`: an interactive API reference that works offline, built on /schema/openapi.json.

Litestar's own reference UIs (Swagger UI, ReDoc, RapiDoc, Scalar, Stoplight) load their code
from a CDN, and pgsched runs where none is reachable (ADR 0029). This page is one small HTML
document with its script inline: paste a token, it reads the OpenAPI document with it, lists
every operation by tag with its parameters and body schema, and sends a request from a form,
showing the answer. It holds nothing about the API itself, so it is served without a token
(a browser cannot send a bearer header when it opens a page); the document and every request
it sends need one, as any client's do. The token stays in the page's memory (no storage, no
cookie). API text is put in the page as text nodes, never as HTML, and a Content-Security-
Policy allows only this page's own script and style (by hash) and requests to this origin.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

from litestar import Response, get

from pgsched.app.api.common import PUBLIC

_STYLE: Final = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; }
header { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
input, textarea, button, select { font: inherit; }
input[type=password] { width: 28rem; max-width: 100%; }
details { border: 1px solid #ccd; border-radius: 4px; margin: .3rem 0; padding: .2rem .6rem; }
summary { cursor: pointer; }
.m { display: inline-block; width: 4.5rem; font-weight: 600; text-transform: uppercase; }
.get { color: #05f; } .post { color: #080; } .patch { color: #a60; } .delete { color: #c00; }
table { border-collapse: collapse; margin: .3rem 0; }
td, th { border-bottom: 1px solid #eee; padding: .15rem .5rem; text-align: left; }
textarea { width: 100%; min-height: 6rem; font-family: ui-monospace, monospace; }
pre { background: #f6f7f9; padding: .5rem; overflow: auto; max-height: 24rem; }
.muted { color: #667; }
"""

_SCRIPT: Final = r"""
"use strict";
let token = "";
let doc = null;
const $ = (tag, attrs = {}, ...kids) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const kid of kids) node.append(kid);  // strings become text nodes, never markup
  return node;
};
const resolve = (schema) => {
  if (schema && schema.allOf && schema.allOf.length === 1) schema = schema.allOf[0];
  const ref = schema && schema.$ref;
  if (!ref) return schema || {};
  return ref.split("/").slice(1).reduce((node, key) => node[key], doc);
};
const typeOf = (schema) => {
  schema = resolve(schema);
  if (schema.enum) return schema.enum.join(" | ");
  if (schema.oneOf || schema.anyOf) return (schema.oneOf || schema.anyOf).map(typeOf).join(" | ");
  if (schema.type === "array") return typeOf(schema.items) + "[]";
  return schema.type || schema.title || "object";
};
const example = (op) => {
  const content = op.requestBody && op.requestBody.content["application/json"];
  if (!content) return null;
  const examples = content.examples ? Object.values(content.examples) : [];
  if (examples.length) return examples[0].value;
  if (content.schema.examples && content.schema.examples.length) return content.schema.examples[0];
  const props = resolve(content.schema).properties || {};
  const required = resolve(content.schema).required || [];
  return Object.fromEntries(required.map((k) => [k, props[k] && props[k].default || null]));
};
async function send(method, path, op, form, out) {
  let url = path;
  const query = new URLSearchParams();
  const headers = { Authorization: "Bearer " + token };
  for (const p of op.parameters || []) {
    const value = form.elements["p-" + p.in + "-" + p.name].value;
    if (value === "") continue;
    if (p.in === "path") url = url.replace("{" + p.name + "}", encodeURIComponent(value));
    else if (p.in === "query") value.split(",").forEach((v) => query.append(p.name, v.trim()));
    else if (p.in === "header") headers[p.name] = value;
  }
  const init = { method: method.toUpperCase(), headers };
  if (form.elements.body) {
    init.body = form.elements.body.value;
    headers["Content-Type"] = "application/json";
  }
  const text = [...query].length ? url + "?" + query : url;
  out.textContent = init.method + " " + text + " ...";
  try {
    const answer = await fetch(text, init);
    const body = await answer.text();
    let shown = body;
    try { shown = JSON.stringify(JSON.parse(body), null, 2); } catch (e) { /* not JSON */ }
    out.textContent = answer.status + " " + answer.statusText + "\n\n" + shown;
  } catch (e) {
    out.textContent = "the request failed: " + e;
  }
}
function operation(path, method, op) {
  const form = $("form");
  const rows = (op.parameters || []).map((p) =>
    $("tr", {}, $("td", {}, p.name + (p.required ? " *" : "")), $("td", {}, p.in),
      $("td", {}, typeOf(p.schema)), $("td", {}, $("input", { name: "p-" + p.in + "-" + p.name })),
      $("td", { class: "muted" }, p.description || "")));
  if (rows.length) form.append($("table", {}, ...rows));
  const body = example(op);
  if (body !== null) {
    const area = $("textarea", { name: "body" });
    area.value = JSON.stringify(body, null, 2);
    form.append($("div", { class: "muted" }, "JSON body: " + typeOf(
      op.requestBody.content["application/json"].schema)), area);
  }
  const out = $("pre");
  form.append($("button", { type: "submit" }, "Send"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(method, path, op, form, out);
  });
  const responses = Object.entries(op.responses || {}).map(([code, r]) => code + " " +
    (r.description || "")).join("; ");
  return $("details", {},
    $("summary", {}, $("span", { class: "m " + method }, method), path + "  ",
      $("span", { class: "muted" }, op.summary || "")),
    $("p", {}, op.description || ""), $("p", { class: "muted" }, "Answers: " + responses),
    form, out);
}
function render(root) {
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op !== "object" || !op.responses) continue;
      const tag = (op.tags || ["other"])[0];
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(path, method, op));
    }
  }
  root.replaceChildren($("h2", {}, doc.info.title + " " + doc.info.version),
    $("p", {}, doc.info.description || ""));
  for (const [tag, ops] of byTag) root.append($("h3", {}, tag), ...ops);
}
document.getElementById("load").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  const status = document.getElementById("status");
  const auth = { Authorization: "Bearer " + token };
  const answer = await fetch("/schema/openapi.json", { headers: auth });
  if (!answer.ok) {
    status.textContent = answer.status + ": " + (await answer.text());
    return;
  }
  doc = await answer.json();
  status.textContent = "";
  render(document.getElementById("reference"));
});
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGE: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pgsched API reference</title>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>pgsched API</h1>
<form id="load">
<input id="token" type="password" autocomplete="off" placeholder="API token (pgs_...)" required>
<button type="submit">Load the reference</button>
<span id="status" class="muted"></span>
</form>
</header>
<p class="muted">The OpenAPI 3.1 document is <code>/schema/openapi.json</code> (any valid token).
Requests sent from here act with the token's role, and are audited as that token.</p>
<main id="reference"></main>
<script>{_SCRIPT}</script>
</body>
</html>
"""

CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; script-src {_hash(_SCRIPT)}; style-src {_hash(_STYLE)}; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)


@get(
    "/docs",
    operation_id="getApiReference",
    summary="The interactive API reference (an offline HTML page)",
    tags=["system"],
    opt=PUBLIC,
    security=[{}],
    include_in_schema=False,
    media_type="text/html",
)
async def reference() -> Response[str]:
    """The page (see the module docstring): static, no API data in it."""
    return Response(
        PAGE,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-cache",
        },
    )
