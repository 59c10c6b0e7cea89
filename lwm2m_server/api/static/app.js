// TinyMLaaS dashboard: one page, hash routes, the /api/v1 JSON API with the session
// cookie and the CSRF header, live updates from /api/v1/events/sse.
// Every value from the server goes into the DOM as text (textContent), never as HTML.
"use strict";

const API = "/api/v1";
const state = { csrf: null, source: null, listeners: new Set(), history: new Map(), timers: [] };
const $ = (id) => document.getElementById(id);

// -- DOM helpers ----------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const svg = ["svg", "polyline", "line", "text", "rect", "g"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = String(value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function table(headers, rows) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { class: x.endsWith(" ") ? "num" : null }, x.trim())))),
    h("tbody", {}, rows));
}

const pill = (text, kind) => h("span", { class: `pill s-${String(kind || text).replace(/\s+/g, "_")}` }, text);
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const bytes = (n) => (n === null || n === undefined ? "-" : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);
const show = (v) => (v === null || v === undefined || v === "" ? "-" : typeof v === "object" ? JSON.stringify(v) : String(v));

function flash(message, bad) {
  const el = $("flash");
  el.textContent = message;
  el.className = bad ? "flash bad" : "flash";
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, bad ? 6000 : 2500);
}

// -- the API ----------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body, raw) {
  const headers = {};
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf || "";
  let payload;
  if (raw !== undefined) { payload = raw; headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { payload = JSON.stringify(body); headers["Content-Type"] = "application/json"; }
  const response = await fetch(path.startsWith("/") && !path.startsWith(API) && !path.startsWith("/dashboard") ? API + path : path,
    { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401 && !path.startsWith("/dashboard/login")) { loggedOut(); throw new ApiFailure(401, "please log in"); }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!response.ok) throw new ApiFailure(response.status, (data && data.error) || `HTTP ${response.status}`);
  return data;
}

async function attempt(what, action) {
  try { return await action(); } catch (error) {
    if (error.status !== 401) flash(`${what}: ${error.message}`, true);
    return undefined;
  }
}

// -- login and the live stream ------------------------------------------------------------

function loggedIn(csrf) {
  state.csrf = csrf;
  $("login").hidden = true;
  $("nav").hidden = false;
  $("logout").hidden = false;
  openStream();
  route();
}

function loggedOut() {
  state.csrf = null;
  if (state.source) { state.source.close(); state.source = null; }
  stopTimers();
  $("nav").hidden = true;
  $("logout").hidden = true;
  $("live").hidden = true;
  $("page").replaceChildren();
  $("login").hidden = false;
  $("token").value = "";
  $("token").focus();
}

function openStream() {
  if (state.source) state.source.close();
  const source = new EventSource(`${API}/events/sse`);
  state.source = source;
  const live = $("live");
  live.hidden = false;
  source.onopen = () => { live.className = "live"; live.textContent = "live"; };
  source.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
  const deliver = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    for (const listener of state.listeners) listener(event);
  };
  for (const kind of ["registered", "updated", "deregistered", "expired", "registration_ended", "notification",
    "send", "queue", "rollout", "profile", "discovery_incomplete", "bootstrap"]) {
    source.addEventListener(kind, deliver);
  }
}

function listen(fn) { state.listeners.add(fn); }
function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }
function stopTimers() { state.timers.forEach(clearInterval); state.timers = []; state.listeners.clear(); }

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

// -- routing ------------------------------------------------------------------------------

const pages = {};

function route() {
  if (!state.csrf) return;
  stopTimers();
  const [, page = "fleet", ...rest] = (location.hash || "#/fleet").split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page || (page === "device" && link.dataset.page === "fleet"));
  }
  const root = $("page");
  root.replaceChildren();
  root.dataset.page = page;
  (pages[page] || pages.fleet)(root, rest.map(decodeURIComponent));
}

// -- fleet ----------------------------------------------------------------------------------

pages.fleet = (root) => {
  const filters = { device_class: "", status: "", security: "", text: "" };
  const counts = h("div", { class: "counts", id: "fleet-counts" });
  const selects = {};
  const toolbar = h("div", { class: "toolbar" });
  for (const [key, label] of [["device_class", "Device class"], ["status", "Status"], ["security", "Security"]]) {
    selects[key] = h("select", { id: `filter-${key}`, onchange: (e) => { filters[key] = e.target.value; draw(); } });
    toolbar.append(h("label", {}, label, selects[key]));
  }
  toolbar.append(h("label", {}, "Endpoint contains",
    h("input", { id: "filter-text", type: "search", oninput: (e) => { filters.text = e.target.value; draw(); } })));
  const body = h("div");
  root.append(h("h1", {}, "Fleet"), counts, toolbar, body);
  let devices = [];

  function fill(select, values) {
    const current = select.value;
    select.replaceChildren(h("option", { value: "" }, "all"), ...values.map((v) => h("option", { value: v }, v)));
    select.value = values.includes(current) ? current : "";
  }

  function draw() {
    const shown = devices.filter((d) =>
      (!filters.device_class || (d.device_class || "unknown") === filters.device_class)
      && (!filters.status || d.status === filters.status)
      && (!filters.security || d.security === filters.security)
      && (!filters.text || d.endpoint.includes(filters.text)));
    const tally = (key) => shown.reduce((m, d) => m.set(d[key] || "unknown", (m.get(d[key] || "unknown") || 0) + 1), new Map());
    counts.replaceChildren(h("div", { class: "count" }, h("b", {}, shown.length), h("span", {}, `of ${devices.length} devices shown`)));
    for (const key of ["status", "security", "device_class"]) {
      for (const [value, n] of tally(key)) counts.append(h("div", { class: "count" }, h("b", {}, n), h("span", {}, value)));
    }
    const rows = shown.map((d) => h("tr", { "data-endpoint": d.endpoint },
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.endpoint)}` }, d.endpoint)),
      h("td", { class: "mono" }, show(d.device_class)),
      h("td", {}, pill(d.status, d.status.split(" ")[0])),
      h("td", {}, d.security),
      h("td", {}, show(d.model)),
      h("td", {}, show(d.firmware_update)),
      h("td", {}, `${d.lwm2m_version} ${d.binding}`),
      h("td", {}, when(d.updated_at))));
    body.replaceChildren(shown.length ? table(["Endpoint", "Class", "Status", "Security", "Model", "Firmware update",
      "LwM2M", "Last update"], rows) : h("p", { class: "muted" }, devices.length ? "No device matches the filters." : "No device is registered."));
  }

  async function load() {
    const got = await attempt("fleet", () => api("GET", "/fleet"));
    if (!got) return;
    devices = got;
    const values = (key) => [...new Set(devices.map((d) => d[key] || "unknown"))].sort();
    fill(selects.device_class, values("device_class"));
    fill(selects.status, values("status"));
    fill(selects.security, values("security"));
    for (const key of ["device_class", "status", "security"]) filters[key] = selects[key].value;
    draw();
  }

  const reload = debounce(load, 400);
  listen((event) => { if (["registered", "updated", "deregistered", "expired", "registration_ended", "profile", "rollout"].includes(event.kind)) reload(); });
  every(15000, load);
  load();
};

// -- device ----------------------------------------------------------------------------------

const objectNames = new Map();
async function objectDef(id) {
  if (!objectNames.has(id)) objectNames.set(id, api("GET", `/objects/${id}`).catch(() => null));
  return objectNames.get(id);
}

pages.device = (root, [endpoint]) => {
  const enc = encodeURIComponent(endpoint);
  const facts = h("div", { class: "card" });
  const objects = h("div", { class: "card" });
  const results = h("div", { class: "card", id: "device-result" }, h("p", { class: "muted" }, "Read a path to see its values."));
  const liveBody = h("tbody");
  const live = h("div", { class: "card" }, h("h2", {}, "Live values (observations)"),
    h("table", { id: "live-values" }, h("thead", {}, h("tr", {}, ["Path", "Name", "Value", "At"].map((x) => h("th", {}, x)))), liveBody));
  const path = h("input", { id: "op-path", placeholder: "/3/0/0", size: 14 });
  const value = h("input", { id: "op-value", placeholder: "value or arguments", size: 18 });
  const ops = h("form", { class: "inline card", id: "device-ops", onsubmit: (e) => { e.preventDefault(); run("read"); } },
    h("label", {}, "Path", path), h("label", {}, "Value / args", value),
    h("button", { type: "submit", class: "primary", id: "op-read" }, "Read"),
    h("button", { type: "button", id: "op-write", onclick: () => run("write") }, "Write"),
    h("button", { type: "button", id: "op-execute", onclick: () => run("execute") }, "Execute"),
    h("button", { type: "button", id: "op-observe", onclick: () => run("observe") }, "Observe"),
    h("button", { type: "button", id: "op-cancel", onclick: () => run("cancel-observe") }, "Cancel observe"));
  root.append(h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), h("h1", {}, endpoint), ops,
    h("div", { class: "grid2" }, h("div", {}, facts, objects), h("div", {}, results, live)));

  function showResult(title, result) {
    const rows = (result.values || []).map((row) => h("tr", {},
      h("td", { class: "mono" }, row.path), h("td", {}, show(row.name)), h("td", { class: "mono" }, show(row.value)),
      h("td", {}, h("button", { type: "button", onclick: () => { path.value = row.path; run("observe"); } }, "Observe"))));
    results.replaceChildren(h("h2", {}, title),
      h("p", {}, pill(result.ok === false ? `failed ${result.code}` : `ok ${result.code || ""}`, result.ok === false ? "failed" : "done"),
        result.diagnostic ? ` ${result.diagnostic}` : ""),
      rows.length ? table(["Path", "Name", "Value", ""], rows) : h("p", { class: "muted" }, "No values."));
  }

  async function run(operation, at) {
    const target = at || path.value.trim();
    if (!target) { flash("give a path such as /3/0", true); return; }
    const body = { path: target };
    if (operation === "write") body.value = value.value;
    if (operation === "execute" && value.value) body.args = value.value;
    if (operation === "observe" || operation === "cancel-observe") { delete body.path; body.paths = [target]; }
    const result = await attempt(operation, () => api("POST", `/devices/${enc}/${operation}`, body));
    if (!result) return;
    if (result.queued) { flash(`queued (${result.queued}): the device sleeps`); return; }
    if (operation === "cancel-observe") { flash(`cancelled ${result.cancelled}`); loadFacts(); return; }
    showResult(`${operation} ${target}`, result);
    if (operation === "observe") { addLive(result.values || [], Date.now() / 1000); loadFacts(); }
    if (operation !== "read") flash(`${operation} ${target}: ${result.ok === false ? "failed " + result.code : "ok"}`, result.ok === false);
  }

  function addLive(values, time) {
    for (const row of values) {
      let tr = liveBody.querySelector(`tr[data-path="${CSS.escape(row.path)}"]`);
      if (!tr) { tr = h("tr", { "data-path": row.path }); liveBody.append(tr); }
      tr.replaceChildren(h("td", { class: "mono" }, row.path), h("td", {}, show(row.name)),
        h("td", { class: "mono" }, show(row.value)), h("td", {}, new Date(time * 1000).toLocaleTimeString()));
      tr.classList.remove("changed"); void tr.offsetWidth; tr.classList.add("changed");
    }
  }

  async function loadFacts() {
    const d = await attempt("device", () => api("GET", `/devices/${enc}`));
    if (!d) return;
    const p = d.profile || {};
    const t = p.tinyml;
    const list = (pairs) => h("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, show(v))]));
    facts.replaceChildren(h("h2", {}, "Device"), list([
      ["Class", d.device_class], ["Security", `${d.security}${d.identity ? ` (identity ${d.identity})` : ""}`],
      ["Address", d.address], ["LwM2M", `${d.lwm2m_version}, binding ${d.binding}${d.queue_mode ? ", queue mode" : ""}`],
      ["Registered", when(d.registered_at)], ["Last update", when(d.updated_at)], ["Expires", when(d.expires_at)],
      ["Manufacturer / model", `${p.manufacturer || "-"} / ${p.model || "-"}`],
      ["Firmware", p.firmware_version], ["Firmware update", d.firmware_update],
      ["Software packages", (p.software_packages || []).map((s) => `${s.name || "?"} ${s.version || ""} (state ${show(s.update_state)}${s.activated ? ", active" : ""})`).join("; ") || "-"],
      ["Installed model", t && t.active_model_id ? `${t.active_model_id}@${t.active_model_version}` : "none"],
      ["Runtime", t ? `${t.runtime} ${t.runtime_version}, arena budget ${bytes(t.arena_budget_bytes)}` : "-"],
      ["Observing", (d.observations || []).map((o) => o.join(", ")).join("; ") || "nothing"],
      ["Problems", (p.problems || []).join("; ") || "none"],
    ]));
    const ids = [...new Set(d.objects.map((o) => o.path.split("/")[1]))];
    const rows = [];
    for (const link of d.objects) {
      const id = link.path.split("/")[1];
      const def = await objectDef(id);
      rows.push(h("tr", {}, h("td", { class: "mono" }, link.path), h("td", {}, def ? def.name : "unknown object"),
        h("td", {}, h("button", { type: "button", class: "read-object", "data-path": link.path,
          onclick: () => { path.value = link.path; run("read", link.path); } }, "Read"))));
    }
    const inference = d.objects.some((o) => o.path === "/26241/0")
      ? h("p", {}, h("button", { type: "button", id: "read-inference", onclick: () => run("read", "/26241/0") },
        "Read the model's last inference results (/26241/0)")) : "";
    objects.replaceChildren(h("h2", {}, `Objects (${ids.length})`), inference, table(["Path", "Object", ""], rows));
  }

  listen((event) => {
    if (event.endpoint !== endpoint) return;
    if (event.kind === "notification" && event.result) addLive(event.result.values || [], event.time);
    if (event.kind === "send" && event.values) addLive(event.values.map((v) => ({ ...v, name: null })), event.time);
    if (["updated", "profile", "rollout"].includes(event.kind)) loadFacts();
  });
  loadFacts();
};

// -- models -------------------------------------------------------------------------------

pages.models = (root) => {
  const list = h("div");
  const file = h("input", { type: "file", id: "model-file", required: true });
  const name = h("input", { id: "model-name", required: true, placeholder: "kws", size: 12 });
  const version = h("input", { id: "model-version", required: true, placeholder: "1.0.0", size: 8 });
  const format = h("select", { id: "model-format" }, h("option", { value: "tflite" }, "tflite"), h("option", { value: "firmware" }, "firmware"));
  const upload = h("form", { class: "inline card", id: "model-upload", onsubmit: async (e) => {
    e.preventDefault();
    if (!file.files.length) return;
    const data = await file.files[0].arrayBuffer();
    const q = new URLSearchParams({ name: name.value, version: version.value, format: format.value });
    const record = await attempt("upload", () => api("POST", `/models?${q}`, undefined, data));
    if (record) { flash(`model ${record.name}@${record.version} registered`); upload.reset(); load(); }
  } }, h("label", {}, "Model file", file), h("label", {}, "Name", name), h("label", {}, "Version", version),
  h("label", {}, "Format", format), h("button", { type: "submit", class: "primary" }, "Upload"));

  const model = h("select", { id: "rollout-model" });
  const classes = h("input", { id: "rollout-classes", placeholder: "all classes (patterns, comma-separated)", size: 26 });
  const endpoints = h("input", { id: "rollout-endpoints", placeholder: "all endpoints (patterns)", size: 20 });
  const inFlight = h("input", { id: "rollout-in-flight", type: "number", min: 1, value: 10, size: 4 });
  const canary = h("input", { id: "rollout-canary", type: "number", min: 0, max: 1, step: 0.05, value: 0.1, size: 4 });
  const mode = h("select", { id: "rollout-mode" }, ["auto", "push", "pull"].map((m) => h("option", { value: m }, m)));
  const split = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);
  const start = h("form", { class: "inline card", id: "rollout-start", onsubmit: async (e) => {
    e.preventDefault();
    const body = { model: model.value, selector: { device_classes: split(classes.value), endpoints: split(endpoints.value) },
      strategy: { max_in_flight: Number(inFlight.value), canary_fraction: Number(canary.value), mode: mode.value } };
    const rollout = await attempt("rollout", () => api("POST", "/rollouts", body));
    if (rollout) { flash(`rollout ${rollout.id} started`); location.hash = `#/rollouts/${encodeURIComponent(rollout.id)}`; }
  } }, h("label", {}, "Model", model), h("label", {}, "Device classes", classes), h("label", {}, "Endpoints", endpoints),
  h("label", {}, "Max in flight", inFlight), h("label", {}, "Canary fraction", canary), h("label", {}, "Mode", mode),
  h("button", { type: "submit", class: "primary" }, "Start rollout"));

  root.append(h("h1", {}, "Models"), h("h2", {}, "Upload a model"), upload, h("h2", {}, "Start a rollout"), start,
    h("h2", {}, "Registered models"), list);

  async function modules(key, cell) {
    const got = await attempt("modules", () => api("GET", `/models/${encodeURIComponent(key)}/modules`));
    if (!got) return;
    const mods = got.modules.map((m) => h("tr", {}, h("td", { class: "mono" }, show(m.device_class)), h("td", {}, show(m.plugin)),
      h("td", { class: "num" }, bytes(m.size)), h("td", { class: "num" }, bytes(m.arena_bytes)), h("td", {}, show(m.package))));
    const why = got.incompatible.map((i) => h("tr", {}, h("td", { class: "mono" }, i.device_class), h("td", { class: "num" }, i.devices), h("td", {}, i.reason)));
    cell.replaceChildren(
      mods.length ? table(["Device class", "Plugin", "Size ", "Arena ", "Package"], mods) : h("p", { class: "muted" }, "Not compiled for any class yet (a rollout compiles it)."),
      why.length ? h("div", {}, h("h2", {}, "Incompatible classes"), table(["Device class", "Devices ", "Why"], why)) : "");
  }

  async function load() {
    const models = await attempt("models", () => api("GET", "/models"));
    if (!models) return;
    models.sort((a, b) => b.added_at - a.added_at);
    const chosen = model.value;
    model.replaceChildren(...models.map((m) => h("option", { value: `${m.name}@${m.version}` }, `${m.name}@${m.version}`)));
    if (chosen) model.value = chosen;
    const rows = [];
    for (const m of models) {
      const key = `${m.name}@${m.version}`;
      const detail = h("td", { colspan: 6 });
      const detailRow = h("tr", { hidden: true, "data-modules": key }, detail);
      rows.push(h("tr", { "data-model": key }, h("td", {}, m.name), h("td", {}, m.version), h("td", {}, m.format),
        h("td", { class: "num" }, bytes(m.size)), h("td", { class: "mono" }, m.digest.slice(0, 16)),
        h("td", {}, when(m.added_at), " ", h("button", { type: "button", class: "show-modules", onclick: () => {
          detailRow.hidden = !detailRow.hidden;
          if (!detailRow.hidden) modules(key, detail);
        } }, "Modules"))), detailRow);
    }
    list.replaceChildren(rows.length ? table(["Name", "Version", "Format", "Size ", "SHA-256", "Added"], rows)
      : h("p", { class: "muted" }, "No model is registered."));
  }
  load();
};

// -- rollouts -------------------------------------------------------------------------------

const IN_FLIGHT = ["in_flight", "retry_wait"];
function tallies(summary) {
  const c = summary.counts || {};
  return { done: c.done || 0, failed: (c.failed || 0) + (c.rolled_back || 0),
    in_flight: IN_FLIGHT.reduce((n, k) => n + (c[k] || 0), 0), incompatible: (c.incompatible || 0) + (c.superseded || 0),
    total: summary.total || 0 };
}

function progress(summary) {
  const t = tallies(summary);
  const bar = h("div", { class: "bar", title: `${t.done} done, ${t.failed} failed, ${t.in_flight} in flight, ${t.incompatible} incompatible/superseded of ${t.total}` });
  for (const key of ["done", "failed", "in_flight", "incompatible"]) {
    if (t[key] && t.total) bar.append(h("div", { class: `c-${key}`, "data-width": key }));
  }
  // widths through the CSSOM (no inline style attribute, which the CSP would refuse)
  for (const div of bar.children) div.style.width = `${(100 * t[div.dataset.width]) / t.total}%`;
  return bar;
}

function remember(rollout) {
  const t = tallies(rollout.summary);
  const series = state.history.get(rollout.id) || [];
  const last = series[series.length - 1];
  const now = Date.now() / 1000;
  if (!last || last.done !== t.done || last.failed !== t.failed || last.in_flight !== t.in_flight || now - last.time > 5) {
    series.push({ time: now, ...t });
    if (series.length > 600) series.shift();
  }
  state.history.set(rollout.id, series);
  return series;
}

function chart(series) {
  const width = 720, height = 180, left = 34, bottom = 20, top = 8, right = 8;
  const svg = h("svg", { class: "chart", id: "rollout-chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": "done, failed and in flight over time" });
  if (!series.length) return svg;
  const t0 = series[0].time, t1 = Math.max(series[series.length - 1].time, t0 + 1);
  const ymax = Math.max(1, ...series.map((s) => Math.max(s.done, s.failed, s.in_flight, s.total)));
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => height - bottom - (v / ymax) * (height - bottom - top);
  svg.append(h("line", { class: "axis", x1: left, y1: y(0), x2: width - right, y2: y(0) }),
    h("line", { class: "axis", x1: left, y1: top, x2: left, y2: y(0) }),
    h("text", { x: 2, y: y(ymax) + 8 }, ymax), h("text", { x: 2, y: y(0) }, 0),
    h("text", { x: left, y: height - 4 }, new Date(t0 * 1000).toLocaleTimeString()),
    h("text", { x: width - right - 60, y: height - 4 }, `${Math.round(t1 - t0)} s`));
  for (const key of ["done", "failed", "in_flight"]) {
    const points = series.map((s) => `${x(s.time).toFixed(1)},${y(s[key]).toFixed(1)}`).join(" ");
    svg.append(h("polyline", { class: `c-${key}`, points, "data-series": key }));
  }
  return svg;
}

const legend = () => h("div", { class: "legend" }, [["done", "done"], ["failed", "failed"], ["in_flight", "in flight"]]
  .map(([k, label]) => h("span", {}, h("i", { class: `c-${k}` }), label)));

pages.rollouts = (root, [id]) => (id ? rolloutPage(root, id) : rolloutList(root));

function rolloutList(root) {
  const body = h("div");
  root.append(h("h1", {}, "Rollouts"), h("p", { class: "muted" }, "Start one from the Models page."), body);
  async function load() {
    const rollouts = await attempt("rollouts", () => api("GET", "/rollouts"));
    if (!rollouts) return;
    rollouts.reverse();
    const rows = rollouts.map((r) => {
      remember(r);
      const t = tallies(r.summary);
      return h("tr", { "data-rollout": r.id }, h("td", {}, h("a", { href: `#/rollouts/${encodeURIComponent(r.id)}` }, r.id)),
        h("td", {}, r.model), h("td", {}, pill(r.state)), h("td", {}, progress(r.summary)),
        h("td", { class: "num" }, `${t.done} / ${t.failed} / ${t.in_flight} / ${t.incompatible} of ${t.total}`),
        h("td", {}, when(r.created_at)));
    });
    body.replaceChildren(rows.length ? table(["Rollout", "Model", "State", "Progress", "Done / failed / in flight / incompatible ", "Created"], rows)
      : h("p", { class: "muted" }, "No rollout yet."));
  }
  const reload = debounce(load, 300);
  listen((event) => { if (event.kind === "rollout") reload(); });
  every(3000, load);
  load();
}

function rolloutPage(root, id) {
  const enc = encodeURIComponent(id);
  const head = h("div", { class: "card" });
  const chartBox = h("div", { class: "card" });
  const devices = h("div");
  const buttons = {};
  for (const action of ["pause", "resume", "cancel"]) {
    buttons[action] = h("button", { type: "button", id: `rollout-${action}`, class: action === "cancel" ? "danger" : null,
      onclick: async () => {
        if (action === "cancel" && !confirm(`Cancel rollout ${id}?`)) return;
        const r = await attempt(action, () => api("POST", `/rollouts/${enc}/${action}`));
        if (r) { flash(`rollout ${id}: ${r.state}`); load(); }
      } }, action[0].toUpperCase() + action.slice(1));
  }
  root.append(h("p", {}, h("a", { href: "#/rollouts" }, "← Rollouts")), h("h1", {}, `Rollout ${id}`),
    h("div", { class: "toolbar" }, Object.values(buttons)), head, chartBox, h("h2", {}, "Devices"), devices);

  async function load() {
    const r = await attempt("rollout", () => api("GET", `/rollouts/${enc}`));
    if (!r) return;
    const t = tallies(r.summary);
    const final = r.state === "complete" || r.state === "cancelled";
    buttons.pause.disabled = final || r.state === "paused";
    buttons.resume.disabled = final || r.state !== "paused";
    buttons.cancel.disabled = final;
    head.replaceChildren(
      h("p", {}, "State ", h("span", { id: "rollout-state", "data-state": r.state }, pill(r.state)),
        r.paused_reason ? ` (${r.paused_reason})` : "", ` · model ${r.model} · created ${when(r.created_at)}`),
      progress(r.summary),
      h("div", { class: "counts", id: "rollout-counts" }, ["done", "failed", "in_flight", "incompatible", "total"].map((k) =>
        h("div", { class: "count", "data-count": k }, h("b", {}, t[k]), h("span", {}, k.replace("_", " "))))),
      h("p", { class: "muted" }, `Selector: classes ${r.selector.device_classes.join(", ") || "all"}, endpoints ${r.selector.endpoints.join(", ") || "all"} · `
        + `strategy: ${r.strategy.max_in_flight} in flight, canary ${r.strategy.canary_fraction}, mode ${r.strategy.mode}, `
        + `pause at ${r.strategy.failure_threshold} failed`));
    chartBox.replaceChildren(h("h2", {}, "Done, failed and in flight over time"), legend(), chart(remember(r)),
      h("p", { class: "muted" }, "Sampled while this dashboard is open."));
    const rows = (r.devices || []).map((d) => h("tr", { "data-endpoint": d.endpoint },
      h("td", {}, h("a", { href: `#/device/${encodeURIComponent(d.endpoint)}` }, d.endpoint)),
      h("td", {}, pill(d.status)), h("td", { class: "num" }, d.attempts), h("td", {}, d.canary ? "yes" : ""),
      h("td", {}, show(d.phase)), h("td", {}, show(d.mode)), h("td", {}, show(d.package)), h("td", {}, show(d.reason))));
    devices.replaceChildren(rows.length ? table(["Endpoint", "Status", "Attempts ", "Canary", "Phase", "Mode", "Package", "Reason"], rows)
      : h("p", { class: "muted" }, "No device matched yet."));
  }
  const reload = debounce(load, 250);
  listen((event) => { if (event.kind === "rollout" && event.rollout === id) reload(); });
  every(2000, load);
  load();
}

// -- credentials ------------------------------------------------------------------------------

pages.credentials = (root) => {
  const body = h("div");
  const endpoint = h("input", { id: "cred-endpoint", required: true, placeholder: "endpoint", size: 16 });
  const identity = h("input", { id: "cred-identity", placeholder: "identity (default: endpoint)", size: 20 });
  const key = h("input", { id: "cred-key", type: "password", required: true, autocomplete: "off", placeholder: "key as hex", size: 24 });
  const scope = h("select", { id: "cred-scope" }, h("option", { value: "server" }, "server"), h("option", { value: "bootstrap" }, "bootstrap"));
  const replace = h("input", { id: "cred-replace", type: "checkbox" });
  const add = h("form", { class: "inline card", id: "cred-add", autocomplete: "off", onsubmit: async (e) => {
    e.preventDefault();
    const payload = { key: key.value, scope: scope.value, replace: replace.checked };
    if (identity.value) payload.identity = identity.value;
    key.value = ""; // the key leaves the page with the request and is never shown again
    const stored = await attempt("add credential", () => api("PUT", `/credentials/${encodeURIComponent(endpoint.value)}`, payload));
    if (stored) { flash(`credential of ${stored.endpoint} stored`); add.reset(); load(); }
  } }, h("label", {}, "Endpoint", endpoint), h("label", {}, "PSK identity", identity), h("label", {}, "Key (hex)", key),
  h("label", {}, "Scope", scope), h("label", {}, "Replace", replace), h("button", { type: "submit", class: "primary" }, "Add PSK"));
  root.append(h("h1", {}, "Credentials"), h("p", { class: "muted" }, "Keys are write-only: the server never sends one back."), add, body);

  async function load() {
    const list = await attempt("credentials", () => api("GET", "/credentials"));
    if (!list) return;
    const rows = list.map((c) => {
      const mechanism = c.mechanism || "psk";
      return h("tr", { "data-endpoint": c.endpoint }, h("td", {}, c.endpoint), h("td", {}, mechanism), h("td", {}, c.scope),
        h("td", { class: "mono" }, show(c.identity)), h("td", {}, when(c.created)),
        h("td", {}, h("button", { type: "button", class: "danger", onclick: async () => {
          if (!confirm(`Remove the ${mechanism} ${c.scope} credential of ${c.endpoint}?`)) return;
          const q = new URLSearchParams({ scope: c.scope, mechanism });
          const done = await attempt("remove", () => api("DELETE", `/credentials/${encodeURIComponent(c.endpoint)}?${q}`));
          if (done !== undefined) { flash(`removed the credential of ${c.endpoint}`); load(); }
        } }, "Remove")));
    });
    body.replaceChildren(rows.length ? table(["Endpoint", "Mechanism", "Scope", "Identity", "Created", ""], rows)
      : h("p", { class: "muted" }, "No credential is stored."));
  }
  load();
};

// -- start ----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    try {
      const session = await api("POST", "/dashboard/login", { token: $("token").value });
      $("token").value = "";
      loggedIn(session.csrf);
    } catch (error) {
      $("login-error").textContent = error.status === 401 ? "Wrong token." : error.message;
    }
  });
  $("logout").addEventListener("click", async () => {
    await attempt("logout", () => api("POST", "/dashboard/logout"));
    loggedOut();
  });
  window.addEventListener("hashchange", route);
  try {
    const session = await api("GET", "/dashboard/session");
    loggedIn(session.csrf);
  } catch {
    loggedOut();
  }
});
