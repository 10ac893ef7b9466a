// pgsched console: the interactive API reference (/ui/api). It reads the OpenAPI document with
// the session (/ui/api/openapi.json), lists every operation by tag with its parameters and body
// schema, and sends a request from a form with a pasted bearer token (the API knows no cookies,
// so no form here can act with the session: nothing for another site to forge). API text is put
// in the page as text nodes, never as HTML.
(function () {

"use strict";
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
  const token = document.getElementById("token").value.trim();
  if (!token) {
    out.textContent = "Paste an API token above to send requests (reading needs none).";
    return;
  }
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
async function load() {
  const status = document.getElementById("status");
  const answer = await fetch("/ui/api/openapi.json", { credentials: "same-origin" });
  if (answer.redirected || !answer.ok) {
    status.textContent = "The reference could not be read (" + answer.status + "): sign in again.";
    return;
  }
  doc = await answer.json();
  status.textContent = "";
  render(document.getElementById("reference"));
}
document.getElementById("send-token").addEventListener("submit", (event) => event.preventDefault());
load();
})();
