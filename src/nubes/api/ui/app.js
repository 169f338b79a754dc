// The nubes dashboard: plain ES modules, no build step. The token stays in sessionStorage
// (gone with the tab) and goes out only as a Bearer header to this same origin.
import { openConsole, closeConsole } from "./console.js";

const $ = (id) => document.getElementById(id);
let admin = false;

export async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem("nubes-token") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { const p = await resp.json(); detail = p.detail || p.title || detail; } catch (e) { /* text */ }
    throw new Error(`${method} ${path}: ${resp.status} ${detail}`);
  }
  return resp;
}

// every page of a list, following Link: <...>; rel="next"
async function list(path) {
  let items = [];
  let url = path;
  while (url) {
    const resp = await api("GET", url);
    items = items.concat(await resp.json());
    const next = /<([^>]+)>;\s*rel="next"/.exec(resp.headers.get("Link") || "");
    url = next ? next[1] : null;
  }
  return items;
}

function showError(err) { $("error").textContent = err ? String(err.message || err) : ""; }

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function fill(table, items, columns) {
  const body = $(table).tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.dataset.name = item.name || item.address || item.id;
    for (const col of columns) cell(row, typeof col === "function" ? col(item) : item[col]);
  }
  return body;
}

function options(select, items, keep) {
  const old = select.value;
  select.replaceChildren(...keep.map((o) => o.cloneNode(true)));
  for (const item of items) select.add(new Option(item.name, item.name));
  if (old) select.value = old;
}

function button(td, label, handler) {
  const b = document.createElement("button");
  b.textContent = label;
  b.className = "act-" + label.toLowerCase().replace(/\s+/g, "-");
  b.addEventListener("click", () => handler().catch(showError));
  td.append(b);
}

function renderServers(servers) {
  const body = $("servers").tBodies[0];
  body.replaceChildren();
  for (const s of servers) {
    const row = body.insertRow();
    row.dataset.name = s.name;
    row.dataset.id = s.id;
    row.dataset.status = s.status;
    cell(row, s.name, "name");
    cell(row, s.status, "status status-" + s.status);
    cell(row, s.task_state, "task");
    cell(row, s.host, "host");
    cell(row, Object.entries(s.addresses || {}).map(([n, a]) => `${n}: ${a.join(", ")}`).join("; "));
    const td = row.insertCell();
    button(td, "Start", () => action(s.id, "start"));
    button(td, "Stop", () => action(s.id, "stop"));
    button(td, "Delete", () => api("DELETE", `/v1/servers/${s.id}`).then(refreshServers));
    button(td, "Log", () => showLog(s));
    button(td, "Console", () => openConsole(s));
  }
}

async function action(id, name) {
  await api("POST", `/v1/servers/${id}/action`, { action: name });
  await refreshServers();
}

async function showLog(server) {
  const text = await (await api("GET", `/v1/servers/${server.id}/console-log?tail=200`)).text();
  $("log-name").textContent = server.name;
  $("log").textContent = text;
  $("log-section").hidden = false;
}

export async function refreshServers() { renderServers(await list("/v1/servers")); }

async function refreshAll() {
  const [images, flavors, networks, keys, fips] = await Promise.all([
    list("/v1/images"), list("/v1/flavors"), list("/v1/networks"), list("/v1/keypairs"),
    list("/v1/floating-ips"),
  ]);
  fill("images", images, ["name", "status", "disk_format", "size"]);
  fill("networks", networks, ["name", "cidr", "type"]);
  fill("floatingips", fips, ["address", "server"]);
  options($("create-image"), images.filter((i) => i.status === "active"), []);
  options($("create-flavor"), flavors, []);
  options($("create-network"), networks.filter((n) => !n.external), []);
  options($("create-key"), keys, [new Option("(none)", "")]);
  if (admin) {
    fill("hosts", await list("/v1/hosts"),
      ["name", "state", "address", (h) => `${h.used_vcpus}/${h.vcpus}`,
        (h) => `${h.used_ram_mb}/${h.ram_mb}`]);
  }
  await refreshServers();
}

// live updates: the server events stream (SSE over fetch, since EventSource sends no header);
// a dropped stream resumes after the last event it gave (Last-Event-ID)
async function followEvents() {
  let last = null;
  for (;;) {
    try {
      const headers = { Authorization: "Bearer " + sessionStorage.getItem("nubes-token") };
      if (last !== null) headers["Last-Event-ID"] = last;
      const resp = await fetch("/v1/events", { headers });
      if (resp.status === 401) return;
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let data = false;
          for (const line of block.split("\n")) {
            if (line.startsWith("id:")) last = line.slice(3).trim();
            if (line.startsWith("data:")) data = true;
          }
          if (data) await refreshServers().catch(showError);
        }
      }
    } catch (err) { /* dropped: open it again */ }
    if (!sessionStorage.getItem("nubes-token")) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function enter() {
  showError(null);
  await api("GET", "/v1/servers?limit=1");  // a bad token fails here, with the API's words
  admin = (await fetch("/v1/hosts?limit=1", {
    headers: { Authorization: "Bearer " + sessionStorage.getItem("nubes-token") },
  })).ok;
  $("who").textContent = admin ? "admin" : "project member";
  $("hosts-section").hidden = !admin;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  await refreshAll();
  followEvents();
}

$("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("nubes-token", $("token").value.trim());
  $("token").value = "";
  enter().catch((err) => { sessionStorage.removeItem("nubes-token"); showError(err); });
});

$("logout").addEventListener("click", () => {
  sessionStorage.removeItem("nubes-token");
  closeConsole();
  location.reload();
});

$("create-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = {
    name: $("create-name").value, image: $("create-image").value,
    flavor: $("create-flavor").value, network: $("create-network").value,
  };
  if ($("create-key").value) body.key_name = $("create-key").value;
  showError(null);
  api("POST", "/v1/servers", body).then(refreshServers).catch(showError);
});

$("log-close").addEventListener("click", () => { $("log-section").hidden = true; });
$("console-close").addEventListener("click", closeConsole);

if (sessionStorage.getItem("nubes-token")) enter().catch(showError);
