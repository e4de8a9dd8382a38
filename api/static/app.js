// The control-room page: plain JavaScript, no build step. It logs in, loads the campus
// from the REST API, then follows the live stream (Server-Sent Events read with fetch, so
// the login token travels in a header and not in the URL). Every text from the server is
// put in the page with textContent, never as HTML.
"use strict";

// The Chinese words for states, statuses and names: the server's one label table
// (facility/labels.py), loaded once at start from GET /api/labels; the page keeps no copy.
let SEVERITY = {}, SEVERITY_RANK = {}, ALERT_STATE = {}, BOLLARD = {}, EV_STATUS = {};
let COMMAND_STATUS = {}, ACTION = {}, DELIVERY = {}, ROLE = {}, AVAILABILITY = {}, QUALITY = {};
let SEVERITY_ORDER = [], HISTORY_ACTION = {}, FAMILY = {}, VALUE = {}, DEVICE_STATE = {};
let EVENT = {}, DEVICE_KIND = {}, HTTP_STATUS = {}, AGGREGATE = {}, PLAN_STATE = {};
let INCIDENT_STATE = {}, CONNECTIVITY = {}, PUBLIC_BODY_KIND = {};
// Drills (演练): each scenario's name, and the marks a drill's texts carry (【演练】 shown,
// 演练，演练。 said).
let DRILL = {}, DRILL_PREFIX = "", DRILL_SPEECH_PREFIX = "";
const STALE_AFTER_MS = 35000; // the server sends something at least every 15 s

const state = {
  token: sessionStorage.getItem("token") || "",
  user: null,
  site: null,
  sites: [], // the sites this API serves (GET /api/sites)
  siteId: "", // the one shown, named on every request (?site=); "" for the API's first
  devices: new Map(), // id -> device view, with latest values
  alerts: new Map(), // id -> AlertMessage
  displays: new Map(),
  commands: new Map(), // bollard commands
  chargerCommands: new Map(), // OCPP charger commands (POST /api/chargers/{device}/commands)
  chargerParams: new Map(), // id -> the parameters of a charger command sent from this page
  approvals: new Map(),
  selected: new Set(),
  lastEventId: "",
  streamAbort: null,
  dirty: new Set(),
  manual: new Map(), // screen id -> its manual message (only these can be withdrawn)
  incidents: [],
  history: null, // closed alerts too, when the alert history is shown
  sounding: new Map(), // unacknowledged critical alerts: id -> alert
  silenced: new Set(),
  detail: null, // the device whose detail dialog is open
  pa: new Map(), // PA zone -> its last announcement and audio (GET /api/pa)
  paWaiting: new Map(), // PA zone -> the announcement whose audio is not rendered yet
  paPlay: new Map(), // PA zone -> what its play button did (markPlay)
  drills: new Map(), // drill id -> DrillView (GET /api/drills)
};

// --- small helpers ------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function time(ns) {
  if (!ns) return "";
  const d = new Date(Number(ns) / 1e6);
  return d.toLocaleTimeString("zh-CN", { hour12: false });
}

function fmt(value, digits = 1) {
  if (value === null || value === undefined || value === "") return "—";
  return typeof value === "number" ? value.toFixed(digits) : String(value);
}

function notice(text, error = false) {
  const box = $("notice");
  box.textContent = text;
  box.className = error ? "error" : "";
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { box.hidden = true; }, 8000);
}

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

// What the operator reads for a refusal: the label table's words for the status; the
// server's own detail only where it is already Chinese (it is written for the log).
function chinese(text) { return /[\u4e00-\u9fff]/.test(text || "") ? text : ""; }

function explain(error) {
  const head = HTTP_STATUS[String(error.status)] || HTTP_STATUS["500"] || "操作失败";
  const said = chinese(error.message);
  return said ? `${head}：${said}` : head;
}

// A source's name: a device's, or a place's or zone's (correlation alerts have those).
function deviceName(id) {
  const d = state.devices.get(id);
  return d ? d.name : named(id);
}

function placeName(id) {
  const p = state.site && state.site.places.find((x) => x.id === id);
  return p ? p.name : id;
}

function zoneName(id) {
  const z = state.site && state.site.zones.find((x) => x.id === id);
  return z ? z.name : id;
}

function valueName(key) { return VALUE[key] || key; }

// A text from the rules engine that still carries an id (a place, zone or device) reads
// with the name instead: the operator never meets a raw id where a name exists.
function named(text) {
  if (!text || !/[a-z][a-z0-9]*[-_][a-z0-9]/.test(text)) return text || "";
  if (!named.pattern) {
    const names = new Map();
    for (const p of state.site.places) names.set(p.id, p.name);
    for (const z of state.site.zones) if (!names.has(z.id)) names.set(z.id, z.name);
    for (const d of state.devices.values()) names.set(d.id, d.name);
    const ids = [...names.keys()].sort((a, b) => b.length - a.length)
      .map((id) => id.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    named.names = names;
    named.pattern = new RegExp(`(?<![A-Za-z0-9_-])(${ids.join("|")})(?![A-Za-z0-9_-])`, "g");
  }
  return text.replace(named.pattern, (id) => named.names.get(id) || id);
}

function showValue(key, v) {
  if (typeof v === "boolean") return v ? "是" : "否";
  if (key === "state" || key === "position" || key === "target") {
    return DEVICE_STATE[v] || BOLLARD[v] || v;
  }
  if (key === "status") return EV_STATUS[v] || v;
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : String(Number(v.toFixed(3)));
  return fmt(v, 2);
}

// Axis labels in 24-hour local time (uPlot's own are English, 1:48pm).
function axisTimes(u, splits) {
  const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const hm = d.toLocaleTimeString("zh-CN", span < 600
      ? { hour12: false } : { hour12: false, hour: "2-digit", minute: "2-digit" });
    return span > 2 * 86400 ? `${d.getMonth() + 1}月${d.getDate()}日 ${hm}` : hm;
  });
}

// May this user act on things of these zones (the API checks it again)?
function mayIn(role, zones) {
  if (!can(role)) return false;
  const mine = state.user.zones || [];
  if (mine.includes("*")) return true;
  return (zones || []).filter(Boolean).every((z) => mine.includes(z));
}

// Where the API serves several sites, every request names the one shown.
function withSite(path) {
  if (!state.siteId || !path.startsWith("/api/")) return path;
  const url = new URL(path, location.origin);
  if (!url.searchParams.has("site")) url.searchParams.set("site", state.siteId);
  return url.pathname + url.search;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(withSite(path), { method, headers,
                                    body: body === undefined ? undefined : JSON.stringify(body) });
  if (reply.status === 204) return null;
  const data = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    if (reply.status === 401 && path !== "/api/auth/login") logout("登录已失效，请重新登录");
    const detail = typeof data.detail === "string" ? data.detail
      : JSON.stringify(data.detail || data);
    throw new ApiError(reply.status, detail);
  }
  return data;
}

// --- login --------------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const reply = await api("POST", "/api/auth/login",
                            { username: $("username").value, password: $("password").value });
    state.token = reply.access_token;
    sessionStorage.setItem("token", state.token);
    $("password").value = "";
    await start();
  } catch (error) {
    $("login-error").textContent = error.status === 401 ? "用户名或密码错误" : explain(error);
  }
}

function logout(message) {
  state.token = "";
  sessionStorage.removeItem("token");
  if (state.streamAbort) state.streamAbort.abort();
  $("board").hidden = true;
  $("logout").hidden = true;
  $("user").textContent = "";
  $("login").hidden = false;
  state.sounding.clear();
  updateAlarm();
  setLive("unknown");
  if (message) $("login-error").textContent = message;
}

async function loadLabels() {
  const table = await api("GET", "/api/labels");
  ({ severity: SEVERITY, severity_rank: SEVERITY_RANK, alert_state: ALERT_STATE,
     bollard: BOLLARD, ev_status: EV_STATUS, command_status: COMMAND_STATUS,
     command_action: ACTION, delivery: DELIVERY, role: ROLE,
     availability: AVAILABILITY, quality: QUALITY, severity_order: SEVERITY_ORDER,
     history_action: HISTORY_ACTION, family: FAMILY, value: VALUE,
     device_state: DEVICE_STATE, event: EVENT, device_kind: DEVICE_KIND,
     http_status: HTTP_STATUS, aggregate: AGGREGATE, plan_state: PLAN_STATE,
     incident_state: INCIDENT_STATE, drill: DRILL, drill_prefix: DRILL_PREFIX,
     connectivity: CONNECTIVITY, public_body_kind: PUBLIC_BODY_KIND,
     drill_speech_prefix: DRILL_SPEECH_PREFIX } = table);
}

async function start() {
  if (!Object.keys(SEVERITY).length) await loadLabels();
  state.user = await api("GET", "/api/me");
  $("user").textContent = `${state.user.display_name || state.user.username}（${ROLE[state.user.role]}）`;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("board").hidden = false;
  state.sites = await api("GET", "/api/sites");
  const kept = sessionStorage.getItem("site");
  state.siteId = state.sites.length > 1 && state.sites.some((s) => s.id === kept) ? kept : "";
  buildSiteSwitch();
  state.site = await api("GET", "/api/site");
  $("site-name").textContent = state.site.name;
  document.title = `${state.site.name} · 监控中心`;
  buildFilters();
  await reload();
  buildPlan();
  follow();
  refreshEnergy();
  refreshIncidents();
  refreshPa();
  refreshDrills();
  if (state.sites.length > 1) refreshDistrict();
  offerSound();
}

// --- the district: the sites this API serves ------------------------------------------

function siteLabel(s) {
  return s.kind ? `${s.name}（${PUBLIC_BODY_KIND[s.kind] || s.kind}）` : s.name;
}

function shownSite() {
  return state.siteId || (state.sites.find((s) => s.home) || {}).id;
}

function buildSiteSwitch() {
  const many = state.sites.length > 1;
  $("site-switch-label").hidden = !many;
  $("district-panel").hidden = !many;
  if (!many) return;
  const select = $("site-switch");
  select.replaceChildren(...state.sites.map((s) => el("option", { value: s.id }, siteLabel(s))));
  select.value = shownSite();
}

// Another site: the page starts again for it (its devices, alerts, stream and alarm
// sound are that site's), in this tab, with the same login.
function switchSite(id) {
  if (id === shownSite()) return;
  sessionStorage.setItem("site", id);
  location.reload();
}

function severityCounts(s) {
  const shown = SEVERITY_ORDER.filter((sev) => s.alerts_by_severity[sev] > 0);
  if (!shown.length) return ["无"];
  return shown.map((sev) => el("span", { class: `sev sev-${sev}` },
                               `${SEVERITY[sev]} ${s.alerts_by_severity[sev]}`));
}

async function refreshDistrict() {
  clearTimeout(refreshDistrict.timer);
  if (!state.token) return;
  try {
    const view = await api("GET", "/api/district");
    const current = shownSite();
    $("district").tBodies[0].replaceChildren(...view.sites.map((s) => el("tr", {
      class: s.id === current ? "current" : "", dataset: { site: s.id } },
      el("td", {}, el("button", { type: "button", class: "link", title: "切换到此站点",
                                  onclick: () => switchSite(s.id) }, s.name)),
      el("td", {}, s.kind ? PUBLIC_BODY_KIND[s.kind] || s.kind : ""),
      el("td", {}, el("span", { class: `conn conn-${s.connectivity}` },
                      CONNECTIVITY[s.connectivity])),
      el("td", { class: "num" }, `${s.gateways.online}/${s.gateways.total}`),
      el("td", { class: "num" }, s.open_incident_count),
      el("td", {}, ...severityCounts(s)),
      el("td", { class: "num" }, s.unacknowledged),
      el("td", {}, s.open_incidents.slice(0, 2).map((i) => i.title).join("、")))));
    $("district-summary").textContent = `${view.sites.length} 个站点 · ` +
      `未关闭事件 ${view.open_incidents} 起 · 告警 ${view.open_alerts} 条`;
  } catch (error) {
    $("district-summary").textContent = explain(error);
  }
  refreshDistrict.timer = setTimeout(refreshDistrict, 15000);
}

function can(role) {
  const order = ["viewer", "operator", "supervisor", "admin"];
  return state.user && order.indexOf(state.user.role) >= order.indexOf(role);
}

// --- loading state ------------------------------------------------------------------

async function reload() {
  const [devices, alerts, displays, commands, approvals, manual, chargerCommands] =
    await Promise.all([
      api("GET", "/api/devices"), api("GET", "/api/alerts"), api("GET", "/api/displays"),
      api("GET", "/api/commands?hours=12"), api("GET", "/api/commands?pending=true"),
      api("GET", "/api/displays/manual"), api("GET", "/api/chargers/commands?hours=12"),
    ]);
  state.chargerCommands = new Map(chargerCommands.map((c) => [c.id, c]));
  state.manual = new Map(manual.map((m) => [m.display, m]));
  state.devices = new Map(devices.map((d) => [d.id, d]));
  state.alerts = new Map(alerts.map((a) => [a.id, a]));
  state.displays = new Map(displays.map((d) => [d.id, d]));
  state.commands = new Map(commands.map((c) => [c.id, c]));
  state.approvals = new Map(approvals.map((c) => [c.id, c]));
  for (const a of state.alerts.values()) considerAlarm(a, false);
  ["plan", "alerts", "bollards", "water", "ev", "displays", "commands"].forEach(mark);
  renderChargerCommands();
}

async function refreshEnergy() {
  refreshEnergy.last = Date.now();
  try {
    const energy = await api("GET", "/api/energy/today");
    const body = $("energy").tBodies[0];
    body.replaceChildren(...energy.buildings.map((b) => el("tr", {},
      el("td", {}, b.name), el("td", { class: "num" }, fmt(b.kwh, b.kwh < 10 ? 2 : 1)),
      el("td", { class: "num" }, fmt(b.kgce, b.kgce < 10 ? 2 : 1)))));
    $("energy-formula").textContent = energy.formula;
  } catch (error) {
    $("energy-formula").textContent = explain(error);
  }
  clearTimeout(refreshEnergy.timer);
  refreshEnergy.timer = setTimeout(refreshEnergy, 60000);
}

// --- the live stream ----------------------------------------------------------------

function setLive(how) {
  const live = $("live");
  live.className = `live-${how}`;
  live.textContent = how === "ok" ? "实时连接：正常" : how === "lost" ? "实时连接：已中断" : "实时连接：未连接";
  $("lost").hidden = how !== "lost";
}

async function follow() {
  let delay = 1000;
  while (state.token) {
    const abort = new AbortController();
    state.streamAbort = abort;
    let heard = Date.now();
    const watchdog = setInterval(() => {
      if (Date.now() - heard > STALE_AFTER_MS) abort.abort();
    }, 5000);
    try {
      const headers = { "Authorization": `Bearer ${state.token}`, "Accept": "text/event-stream" };
      if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
      const reply = await fetch(withSite("/api/stream"), { headers, signal: abort.signal });
      if (reply.status === 401) { logout("登录已失效，请重新登录"); return; }
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      setLive("ok");
      delay = 1000;
      const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        heard = Date.now();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          handleBlock(block);
        }
      }
    } catch (error) {
      // Aborted by the watchdog, or the network or server went away: reconnect below.
    } finally {
      clearInterval(watchdog);
    }
    if (!state.token) return;
    setLive("lost");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 15000);
  }
}

function handleBlock(block) {
  let id = "", kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") kind = value;
    else if (field === "data") data += value;
  }
  if (id) state.lastEventId = id;
  if (!data) return;
  const payload = JSON.parse(data);
  const handler = HANDLERS[kind];
  if (handler) handler(payload);
}

const HANDLERS = {
  reset() {
    // The server could not replay what was missed: reload; the open alerts follow.
    state.alerts.clear();
    mark("alerts");
    reload().catch((error) => notice(explain(error), true));
  },
  reading(r) {
    const device = state.devices.get(r.device);
    if (!device) return;
    device.latest = { ts: r.ts, quality: r.quality, values: r.values,
                      units: Object.assign({}, device.latest ? device.latest.units : {}, r.units),
                      errors: r.errors, source: "live" };
    markFamily(device.family);
  },
  status(s) {
    const device = state.devices.get(s.device);
    if (device) { device.online = s.state === "online"; device.status_reason = s.reason; }
    if (s.family === "bollard") {
      for (const d of state.devices.values()) {
        if (d.controller === s.device) d.online = s.state === "online";
      }
    }
    mark("plan"); mark("bollards");
  },
  alert(a) {
    const known = state.alerts.get(a.id);
    if (a.state === "normal") state.alerts.delete(a.id);
    else state.alerts.set(a.id, Object.assign({}, known || {}, a));
    considerAlarm(a, !known && a.transition !== "snapshot");
    if (a.drill && !state.drills.has(a.drill)) refreshDrills();
    if (state.history) state.history.set(a.id, Object.assign({}, state.history.get(a.id) || {}, a));
    mark("alerts"); mark("plan"); mark("bollards");
    clearTimeout(HANDLERS.alert.timer);
    HANDLERS.alert.timer = setTimeout(refreshIncidents, 1000);
  },
  display(d) {
    const view = state.displays.get(d.display);
    if (view) { view.shown = d; view.delivery = { message: d.id, status: "pending" }; }
    mark("displays");
    refreshManual();
  },
  display_ack(a) {
    const view = state.displays.get(a.endpoint);
    if (view && view.delivery && view.delivery.message === a.message) {
      view.delivery.status = a.status;
    }
    mark("displays");
  },
  broadcast(b) {
    if (b.manual) return;
    state.paWaiting.set(b.zone, b.id);
    schedulePa(500);
    const view = state.displays.get(b.zone);
    if (view) {
      view.shown = { text: b.text, kind: b.kind, priority: b.priority };
      view.delivery = { message: b.id, status: "pending" };
    }
    mark("displays");
  },
  command(c) {
    const charger = CHARGER_ACTIONS.some((a) => a.action === c.action);
    const book = charger ? state.chargerCommands : state.commands;
    const known = book.get(c.id);
    // A command's answer may overtake the reply to its POST: never go back from an outcome.
    if (known && known.final && !c.final) return;
    const news = !known || known.status !== c.status;
    book.set(c.id, c);
    if (charger) {
      renderChargerCommands();
    } else {
      if (c.status === "awaiting_approval") state.approvals.set(c.id, c);
      else state.approvals.delete(c.id);
      mark("commands");
    }
    if (news && c.final && c.requested_by === (state.user && state.user.username)) {
      const said = charger ? chargerAnswer(c).text : chinese(c.detail);
      notice(`指令 ${ACTION[c.action] || c.action}：${commandStatus(c)}` +
             (said && said !== commandStatus(c) ? `（${said}）` : ""), c.status !== "done");
    }
  },
};

// --- rendering, at most a few times a second ----------------------------------------

function mark(panel) {
  state.dirty.add(panel);
  if (!mark.pending) {
    mark.pending = true;
    setTimeout(() => { mark.pending = false; render(); }, 250);
  }
}

function markFamily(family) {
  mark("plan");
  // Meters count on: today's energy is fetched again, at most every 15 s.
  if (family === "energy" && Date.now() - (refreshEnergy.last || 0) > 15000) refreshEnergy();
  if (family === "bollard") mark("bollards");
  if (family === "drainage") mark("water");
  if (family === "ev_charger") mark("ev");
}

function render() {
  const dirty = state.dirty;
  state.dirty = new Set();
  if (dirty.has("plan")) renderPlan();
  if (dirty.has("alerts")) renderAlerts();
  if (dirty.has("bollards")) renderBollards();
  if (dirty.has("water")) renderWater();
  if (dirty.has("ev")) renderEv();
  if (dirty.has("displays")) renderDisplays();
  if (dirty.has("commands")) renderCommands();
}

const QUIET = ["shelved", "suppressed", "out_of_service"]; // not annunciated (ISA-18.2)

// The worst active alert of each device, whatever its state: a suppressed or shelved alarm
// is still an alarm on the plan (shown quieter), never "normal".
function alertsBySource() {
  const by = new Map();
  for (const a of state.alerts.values()) {
    if (a.active === false) continue;
    const worst = by.get(a.source);
    if (!worst || SEVERITY_RANK[a.severity] > SEVERITY_RANK[worst.severity]) by.set(a.source, a);
  }
  return by;
}

// What the device itself says, from its latest reading: a detector in ALARM is an alarm
// even where no alert is annunciated for it.
function readingState(device) {
  const v = device.latest ? device.latest.values : {};
  if (v.state === "alarm" || v.residual_current_alarm === true || v.temperature_alarm === true) {
    return "alarm";
  }
  if (v.state === "fault" || v.pump_fault === true || v.status === "faulted") return "fault";
  if (v.state === "pre_alarm") return "warn";
  return "";
}

const STATE_ORDER = ["unknown", "ok", "degraded", "offline", "fault", "warn", "alarm"];

function worse(a, b) { return STATE_ORDER.indexOf(a) >= STATE_ORDER.indexOf(b) ? a : b; }

function deviceState(device, alerts) {
  const alert = alerts.get(device.id);
  let s = "";
  if (alert) s = SEVERITY_RANK[alert.severity] >= 4 ? "alarm" : "warn";
  const said = readingState(device);
  if (said) s = s ? worse(s, said) : said;
  if (s) return s;
  if (device.online === false) return "offline";
  if (device.latest && device.latest.quality !== "good") return "degraded";
  if (device.latest || device.online === true) return "ok";
  return "unknown";
}

function quietOnly(device, alerts) {
  const alert = alerts.get(device.id);
  return Boolean(alert && QUIET.includes(alert.state));
}

// The plan: every place is a labelled chip at its plan coordinates holding the dots of its
// devices; chips are nudged apart so that no name is covered.
function buildPlan() {
  const plan = $("plan");
  plan.replaceChildren();
  const byPlace = new Map();
  for (const device of state.devices.values()) {
    if (device.controller && device.family === "bollard") continue; // the PLC stands for them
    if (!byPlace.has(device.place)) byPlace.set(device.place, []);
    byPlace.get(device.place).push(device);
  }
  for (const place of state.site.places) {
    if (!place.plan) continue;
    const ring = el("div", { class: "ring", dataset: { place: place.id }, hidden: "" });
    ring.style.left = `${place.plan.x}%`;
    ring.style.top = `${place.plan.y}%`;
    plan.append(ring);
    const devices = (byPlace.get(place.id) || []).sort((a, b) => a.id.localeCompare(b.id));
    const dots = el("span", { class: "dots" }, ...devices.map((d) => el("button", {
      type: "button", class: "dev state-unknown", dataset: { device: d.id },
      "aria-label": d.name, onclick: () => openDevice(d.id) })));
    const chip = el("div", { class: `place ${place.kind}`, dataset: { place: place.id } },
      el("span", { class: "place-name" }, place.name), dots,
      place.id === gatePlace() ? el("span", { class: "gate-state", "aria-live": "polite" }) : null);
    chip.style.left = `${place.plan.x}%`;
    chip.style.top = `${place.plan.y}%`;
    plan.append(chip);
  }
  layoutPlan();
  if (!buildPlan.observer) {
    buildPlan.observer = new ResizeObserver(() => layoutPlan());
    buildPlan.observer.observe(plan);
  }
  mark("plan");
}

function gatePlace() {
  const plc = [...state.devices.values()].find((d) => d.kind === "plc");
  return plc ? plc.place : "";
}

// Keep every chip's name readable: a chip that overlaps one placed before it moves by the
// least distance (up, down, then sideways) that frees it, staying inside the plan.
function layoutPlan() {
  const plan = $("plan");
  const box = plan.getBoundingClientRect();
  if (!box.width) return;
  const chips = [...plan.querySelectorAll(".place")];
  for (const chip of chips) { chip.style.marginTop = "0px"; chip.style.marginLeft = "0px"; }
  // Buildings first: they are the landmarks; then top to bottom.
  chips.sort((a, b) => (b.classList.contains("building") - a.classList.contains("building"))
    || (parseFloat(a.style.top) - parseFloat(b.style.top)));
  const placed = [];
  const moves = [[0, 0]];
  for (let d = 3; d <= 240; d += 3) moves.push([0, -d], [0, d]);
  for (let d = 6; d <= 240; d += 6) {
    for (let e = 0; e <= 120; e += 6) moves.push([-d, e], [d, e], [-d, -e], [d, -e]);
  }
  for (const chip of chips) {
    const r = chip.getBoundingClientRect();
    // Inside the plan first (a gate on the edge would stick out).
    const fx = Math.max(box.left + 1 - r.left, 0) - Math.max(r.right - (box.right - 1), 0);
    const fy = Math.max(box.top + 1 - r.top, 0) - Math.max(r.bottom - (box.bottom - 1), 0);
    let best = [fx, fy];
    for (const [mx, my] of moves) {
      const dx = fx + mx, dy = fy + my;
      const left = r.left + dx, right = r.right + dx, top = r.top + dy, bottom = r.bottom + dy;
      if (top < box.top || bottom > box.bottom || left < box.left || right > box.right) continue;
      const clash = placed.some((p) => left < p.right + 2 && right > p.left - 2
                                       && top < p.bottom + 2 && bottom > p.top - 2);
      if (!clash) { best = [dx, dy]; break; }
    }
    chip.style.marginLeft = `${best[0]}px`;
    chip.style.marginTop = `${best[1]}px`;
    placed.push({ left: r.left + best[0], right: r.right + best[0],
                  top: r.top + best[1], bottom: r.bottom + best[1] });
  }
}

// A red ring marks each place with an annunciated critical or major alert.
function renderRings() {
  const alarmed = new Set();
  for (const a of state.alerts.values()) {
    if (!QUIET.includes(a.state) && a.active !== false && SEVERITY_RANK[a.severity] >= 4) {
      alarmed.add(a.place);
    }
  }
  for (const ring of $("plan").querySelectorAll(".ring")) {
    ring.hidden = !alarmed.has(ring.dataset.place);
  }
}

function stateWord(s) { return PLAN_STATE[s] || s; }

function renderPlan() {
  const plan = $("plan");
  const alerts = alertsBySource();
  let live = 0, total = 0;
  for (const dot of plan.querySelectorAll(".dev")) {
    const device = state.devices.get(dot.dataset.device);
    if (!device) continue;
    let status = deviceState(device, alerts);
    let quiet = quietOnly(device, alerts);
    if (device.kind === "plc") status = worstBollard(status, alerts);
    if (status !== "alarm" && status !== "warn") quiet = false;
    dot.className = `dev state-${status}${quiet ? " quiet" : ""}`;
    dot.dataset.state = status;
    const text = `${device.name}：${stateWord(status)}${quiet ? "（告警已搁置/抑制）" : ""}\n${describe(device)}`;
    dot.title = text;
    dot.setAttribute("aria-label", text.replace("\n", "，"));
    total += 1;
    if (status !== "unknown") live += 1;
  }
  $("plan-summary").textContent = `${live}/${total} 台设备有数据`;
  const gate = plan.querySelector(".gate-state");
  if (gate) {
    const counts = bollardCounts();
    const parts = Object.entries(counts).map(([k, v]) => `${BOLLARD[k] || "无数据"} ${v}`);
    const said = `升降柱：${parts.join("，") || "无数据"}`;
    if (gate.textContent !== said) { gate.textContent = said; layoutPlan(); }
    gate.className = `gate-state ${counts.down || counts.fault ? "open" : ""}`;
    gate.dataset.down = String(counts.down || 0);
  }
  renderRings();
}

function bollardCounts() {
  const counts = {};
  for (const d of bollards()) {
    const s = d.latest ? d.latest.values.state || "unknown" : "unknown";
    counts[s] = (counts[s] || 0) + 1;
  }
  return counts;
}

function worstBollard(status, alerts) {
  let worst = status;
  for (const d of state.devices.values()) {
    if (d.family !== "bollard" || !d.controller) continue;
    let s = deviceState(d, alerts);
    if (d.latest && d.latest.values.state === "fault") s = "alarm";
    worst = worse(s, worst);
  }
  return worst;
}

function describe(device) {
  if (!device.latest) return device.online === false ? AVAILABILITY.offline : "暂无数据";
  const parts = Object.entries(device.latest.values).slice(0, 6).map(([k, v]) => {
    const unit = (device.latest.units || {})[k] || "";
    return `${valueName(k)} ${showValue(k, v)}${unit}`;
  });
  return `${parts.join("，")}（${time(device.latest.ts)}）`;
}

// --- alerts: filters, list, history -----------------------------------------------

function buildFilters() {
  const fill = (id, entries) => {
    const select = $(id);
    select.replaceChildren(el("option", { value: "" }, "全部"),
      ...entries.map(([value, text]) => el("option", { value }, text)));
  };
  fill("f-severity", SEVERITY_ORDER.map((s) => [s, SEVERITY[s]]));
  fill("f-zone", state.site.zones.map((z) => [z.id, z.name]));
  fill("f-family", Object.entries(FAMILY).filter(([k]) => k && k !== "gateway"));
  fill("f-state", Object.entries(ALERT_STATE));
}

async function toggleHistory() {
  if ($("f-history").checked) {
    try {
      const list = await api("GET", "/api/alerts?open=false&limit=500");
      state.history = new Map(list.map((a) => [a.id, a]));
    } catch (error) {
      notice(explain(error), true);
      $("f-history").checked = false;
    }
  } else {
    state.history = null;
  }
  mark("alerts");
}

function filtered(list) {
  const want = { severity: $("f-severity").value, zone: $("f-zone").value,
                 family: $("f-family").value, state: $("f-state").value };
  return list.filter((a) => (!want.severity || a.severity === want.severity)
    && (!want.zone || a.zone === want.zone) && (!want.family || a.family === want.family)
    && (!want.state || a.state === want.state));
}

function renderAlerts() {
  const body = $("alerts").tBodies[0];
  const source = state.history || state.alerts;
  // Annunciated first, then by severity, then newest; quiet ones stay visible, dimmed.
  const alerts = filtered([...source.values()]).sort((a, b) =>
    (QUIET.includes(a.state) - QUIET.includes(b.state))
    || (SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity]) || (b.raised_at - a.raised_at));
  body.replaceChildren(...alerts.map(alertRow));
  $("alert-count").textContent = `${alerts.length} 条${state.history ? "（含历史）" : ""}`;
  $("no-alerts").hidden = alerts.length > 0;
  $("no-alerts").textContent = source.size ? "没有符合筛选条件的告警" : "当前无告警";
}

// The alert's level and text as raised, and its current value beside them where the
// rules engine gives one (peak_severity, current_value: read if present).
function alertRow(a) {
  const actions = el("td", { class: "alert-actions" });
  if (mayIn("operator", [a.zone]) && a.state !== "normal") {
    if (!a.acknowledged) {
      actions.append(el("button", { type: "button", class: "ack", onclick: () => acknowledge(a) },
                        "确认"));
    }
    if (a.state === "shelved") {
      actions.append(el("button", { type: "button", class: "unshelve",
                                    onclick: () => operate(a, "unshelve", {}) }, "取消搁置"));
    } else if (a.active !== false) {
      actions.append(el("button", { type: "button", class: "shelve", onclick: () => shelve(a) },
                        "搁置"));
    }
  }
  const look = a.state === "active_unack" ? "unack" : QUIET.includes(a.state) ? "quiet"
    : a.state === "normal" ? "closed" : "";
  const peak = a.peak_severity && a.peak_severity !== a.severity ? a.peak_severity : "";
  const current = a.current_value !== undefined && a.current_value !== null ? a.current_value
    : peak && typeof a.value === "number" ? a.value : null;
  return el("tr", { class: `alert ${look}${a.drill ? " drill" : ""}`,
                    dataset: { alert: a.id, state: a.state, family: a.family || "",
                               rule: a.rule, source: a.source, severity: a.severity,
                               drill: a.drill || "" } },
    el("td", {}, el("span", { class: `sev sev-${peak || a.severity}` },
                    SEVERITY[peak || a.severity] || a.severity),
       peak ? el("small", { class: "now-sev" }, ` 现${SEVERITY[a.severity]}`) : ""),
    el("td", { class: "nowrap" }, time(a.raised_at)),
    el("td", {}, drillTag(a),
       el("button", { type: "button", class: "link", onclick: () => openAlert(a.id) },
          named(a.title)), el("br"), named(a.text),
       current !== null ? el("span", { class: "current" }, `（当前 ${fmt(current, 1)}${a.unit || ""}）`) : "",
       a.late_s ? el("span", { class: "late" }, `（迟到${a.late_s}秒）`) : ""),
    el("td", {}, state.devices.has(a.source)
      ? el("button", { type: "button", class: "link", onclick: () => openDevice(a.source) },
           deviceName(a.source)) : deviceName(a.source),
       el("br"), el("small", {}, placeName(a.place))),
    el("td", { class: "alert-state" }, ALERT_STATE[a.state] || a.state),
    actions);
}

// A drill's alert says so wherever it is shown: 【演练】 before its title.
function drillTag(a) {
  return a && a.drill ? el("span", { class: "drill-tag" }, DRILL_PREFIX) : "";
}

function drillText(a) { return a && a.drill ? DRILL_PREFIX : ""; }

async function operate(alert, action, body) {
  try {
    const result = await api("POST", `/api/alerts/${encodeURIComponent(alert.id)}/${action}`, body);
    if (result.alert) {
      const known = state.alerts.get(alert.id) || {};
      state.alerts.set(alert.id, Object.assign({}, known, result.alert));
      considerAlarm(result.alert, false);
      mark("alerts"); mark("plan");
    }
    return true;
  } catch (error) {
    notice(explain(error), true);
    return false;
  }
}

// A <dialog> that resolves with the button pressed ("ok" or "cancel").
function ask(dialog, check) {
  return new Promise((resolve) => {
    const form = dialog.querySelector("form");
    const onSubmit = (event) => {
      if (event.submitter && event.submitter.value === "ok" && check && !check()) {
        event.preventDefault();
        return;
      }
    };
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", () => {
      form.removeEventListener("submit", onSubmit);
      resolve(dialog.returnValue);
    }, { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

async function acknowledge(alert) {
  $("ack-alert").textContent = `${drillText(alert)}${SEVERITY[alert.severity] || ""} ` +
    `${named(alert.title)}：${named(alert.text)}`;
  $("ack-comment").value = "";
  if (await ask($("ack-dialog")) !== "ok") return false;
  return operate(alert, "acknowledge", { comment: $("ack-comment").value.trim() });
}

async function shelve(alert) {
  $("shelve-alert").textContent = `${named(alert.title)}：${named(alert.text)}`;
  $("shelve-reason").value = "";
  $("shelve-error").textContent = "";
  const answer = await ask($("shelve-dialog"), () => {
    if ($("shelve-reason").value.trim()) return true;
    $("shelve-error").textContent = "搁置需要填写原因";
    $("shelve-reason").focus();
    return false;
  });
  if (answer !== "ok") return;
  operate(alert, "shelve", { minutes: Number($("shelve-minutes").value),
                             comment: $("shelve-reason").value.trim() });
}

async function openAlert(id) {
  try {
    const a = await api("GET", `/api/alerts/${encodeURIComponent(id)}`);
    $("alert-title").textContent = `告警详情：${drillText(a)}${named(a.title)}`;
    $("alert-dialog").dataset.drill = a.drill || "";
    $("alert-summary").replaceChildren(el("p", {}, drillTag(a),
      el("span", { class: `sev sev-${a.severity}` }, SEVERITY[a.severity]), " ", named(a.text)),
      el("p", {}, `设备：${deviceName(a.source)}，位置：${placeName(a.place)}，状态：` +
                  `${ALERT_STATE[a.state] || a.state}，发生：${dateTime(a.raised_at)}` +
                  (a.cleared_at ? `，恢复：${dateTime(a.cleared_at)}` : "")));
    $("alert-history").replaceChildren(...[
      el("li", {}, `${dateTime(a.raised_at)} 告警发生`),
      ...a.history.map((h) => el("li", { dataset: { action: h.action } },
        `${dateTime(h.ts)} ${HISTORY_ACTION[h.action] || ALERT_STATE[h.to_state] || "状态变化"}`,
        h.by ? ` · ${h.by}` : "", h.to_state ? ` → ${ALERT_STATE[h.to_state] || h.to_state}` : "",
        chinese(h.comment) || (h.comment && h.by ? h.comment : "") ? `：${h.comment}` : ""))]);
    $("alert-dialog").showModal();
  } catch (error) {
    notice(explain(error), true);
  }
}

function dateTime(ns) {
  if (!ns) return "";
  return new Date(Number(ns) / 1e6).toLocaleString("zh-CN", { hour12: false });
}

// --- incidents ----------------------------------------------------------------------

async function refreshIncidents() {
  try {
    const since = new Date(Date.now() - 24 * 3600e3).toISOString();
    state.incidents = await api("GET", `/api/incidents?open=false&since=${encodeURIComponent(since)}&limit=50`);
  } catch (error) {
    return;
  }
  const list = state.incidents;
  // An incident of a drill's alerts says so too (the incident itself does not carry it).
  const drilled = new Map([...state.alerts.values()].filter((a) => a.incident && a.drill)
    .map((a) => [a.incident, a]));
  $("incidents").tBodies[0].replaceChildren(...list.map((i) => el("tr", {
    class: i.active ? "" : "quiet", dataset: { incident: i.id } },
    el("td", {}, el("span", { class: `sev sev-${i.severity}` }, SEVERITY[i.severity])),
    el("td", { class: "nowrap" }, time(i.opened_at)),
    el("td", {}, drillTag(drilled.get(i.id)),
       el("button", { type: "button", class: "link", onclick: () => openIncident(i.id) },
          named(i.title))),
    el("td", {}, (i.zones.length ? i.zones : [i.zone]).map(zoneName).join("、")),
    el("td", {}, INCIDENT_STATE[i.closed_at ? "closed" : i.active ? "active" : "cleared"]))));
  $("incident-count").textContent = `${list.length} 起`;
  $("no-incidents").hidden = list.length > 0;
}

async function openIncident(id) {
  try {
    const t = await api("GET", `/api/incidents/${encodeURIComponent(id)}/timeline`);
    $("incident-title").textContent = `事件详情：${named(t.incident.title)}`;
    $("incident-summary").textContent = `${SEVERITY[t.incident.severity]} · 开始 ` +
      `${dateTime(t.incident.opened_at)}` +
      (t.incident.cleared_at ? ` · 恢复 ${dateTime(t.incident.cleared_at)}` : "") +
      ` · ${t.alerts.length} 条告警`;
    $("incident-timeline").replaceChildren(...t.entries.map((e) => el("li", {
      dataset: { action: e.action } },
      `${dateTime(e.ts)} ${e.action === "raised" ? "告警发生" : HISTORY_ACTION[e.action]
        || (ALERT_STATE[e.to_state] ? `转为${ALERT_STATE[e.to_state]}` : "状态变化")}：${named(e.title)}`,
      e.by ? ` · ${e.by}` : "", chinese(e.comment) ? `（${e.comment}）` : "")));
    $("cap-count").textContent = `${t.cap_documents.length} 份`;
    $("incident-cap").textContent = t.cap_documents.length
      ? t.cap_documents[t.cap_documents.length - 1] : "尚未生成";
    $("incident-dialog").showModal();
  } catch (error) {
    notice(explain(error), true);
  }
}

// --- device detail and trends -------------------------------------------------------

async function openDevice(id) {
  const dialog = $("device-dialog");
  dialog.dataset.device = id;
  try {
    const [d, activity] = await Promise.all([
      api("GET", `/api/devices/${encodeURIComponent(id)}`),
      api("GET", `/api/devices/${encodeURIComponent(id)}/activity?hours=168`)]);
    openDevice.activity = activity;
    $("device-title").textContent = `${d.name}（${DEVICE_KIND[d.kind] || FAMILY[d.family] || ""}）`;
    $("device-where").textContent = `位置：${d.place_name} · 区域：${d.zone_name} · 状态：` +
      `${d.online === null ? "未知" : d.online ? AVAILABILITY.online : AVAILABILITY.offline}` +
      (d.latest ? ` · 数据质量：${QUALITY[d.latest.quality] || d.latest.quality} · ` +
                  `更新于 ${dateTime(d.latest.ts)}` : " · 暂无数据");
    const values = d.latest ? Object.entries(d.latest.values) : [];
    $("device-values").tBodies[0].replaceChildren(...values.map(([k, v]) => el("tr", {},
      el("th", { scope: "row" }, valueName(k)),
      el("td", { class: "num" }, `${showValue(k, v)} ${(d.latest.units || {})[k] || ""}`))),
      ...Object.entries(d.latest ? d.latest.errors : {}).map(([k]) => el("tr", {},
        el("th", { scope: "row" }, valueName(k)), el("td", { class: "q-bad" }, "读取失败"))));
    const numeric = d.value_names.filter((k) => !d.latest || typeof d.latest.values[k] === "number"
      || d.latest.values[k] === undefined);
    const field = $("trend-field");
    field.replaceChildren(...numeric.map((k) => el("option", { value: k }, valueName(k))));
    $("device-events").replaceChildren(...(activity.events.length ? activity.events.map((e) =>
      el("li", {}, `${dateTime(e.ts)} ${EVENT[e.name] || "事件"}`, chinese(e.text) ? `：${e.text}` : ""))
      : [el("li", { class: "empty" }, activity.events_error ? "事件暂不可读" : "无")]));
    $("device-alerts").replaceChildren(...(activity.alerts.length ? activity.alerts.map((a) =>
      el("li", {}, drillTag(a), el("span", { class: `sev sev-${a.severity}` }, SEVERITY[a.severity]),
         ` ${dateTime(a.raised_at)} ${named(a.title)} · ${ALERT_STATE[a.state] || a.state}`))
      : [el("li", { class: "empty" }, "无")]));
    $("device-commands").replaceChildren(...(activity.commands.length ? activity.commands.map(
      (c) => el("li", {}, commandText(c))) : [el("li", { class: "empty" }, "无")]));
    state.detail = d;
    $("charger-panel").hidden = !isOcppCharger(d);
    if (!dialog.open) dialog.showModal();
    if (isOcppCharger(d)) openCharger(d);
    drawTrend();
  } catch (error) {
    notice(explain(error), true);
  }
}

async function drawTrend() {
  const id = $("device-dialog").dataset.device;
  const field = $("trend-field").value;
  const box = $("trend-chart");
  const hours = Number($("trend-range").value);
  if (drawTrend.chart) { drawTrend.chart.destroy(); drawTrend.chart = null; }
  box.replaceChildren();
  $("trend-marks").replaceChildren();
  if (!field) { $("trend-status").textContent = "该设备没有数值型数据"; return; }
  $("trend-status").textContent = "加载中……";
  const end = new Date(), start = new Date(end.getTime() - hours * 3600e3);
  let data;
  try {
    data = await api("GET", `/api/devices/${encodeURIComponent(id)}/history?field=${field}` +
      `&start=${encodeURIComponent(start.toISOString())}&end=${encodeURIComponent(end.toISOString())}&points=400`);
  } catch (error) {
    $("trend-status").textContent = explain(error);
    return;
  }
  const xs = data.points.map((p) => p.t / 1000);
  const ys = data.points.map((p) => (typeof p.v === "number" ? p.v : null));
  // The alerts of this device within the range: raise and clear marked on the chart.
  const marks = [];
  for (const a of (openDevice.activity || { alerts: [] }).alerts) {
    if (a.raised_at / 1e6 >= start.getTime()) marks.push({ t: a.raised_at / 1e9, kind: "raise", a });
    if (a.cleared_at && a.cleared_at / 1e6 >= start.getTime()) {
      marks.push({ t: a.cleared_at / 1e9, kind: "clear", a });
    }
  }
  $("trend-marks").replaceChildren(...marks.map((m) => el("li", { dataset: { kind: m.kind } },
    el("i", { class: `mark-${m.kind}` }), `${dateTime(m.t * 1e9)} ${m.kind === "raise" ? "告警发生" : "告警恢复"}：${named(m.a.title)}`)));
  const unit = ((state.devices.get(id) || {}).latest || { units: {} }).units[field] || "";
  $("trend-status").textContent = xs.length
    ? `${xs.length} 个点，每 ${data.interval_s} 秒${AGGREGATE[data.aggregate] || ""}`
    : "该时间范围内没有数据";
  if (!xs.length) return;
  const width = Math.max(300, box.getBoundingClientRect().width || 600);
  const marker = {
    hooks: {
      draw: [(u) => {
        const ctx = u.ctx;
        ctx.save();
        for (const m of marks) {
          const x = u.valToPos(m.t, "x", true);
          if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
          ctx.strokeStyle = m.kind === "raise" ? "#ff5a52" : "#4cd07d";
          ctx.lineWidth = 2 * devicePixelRatio;
          ctx.setLineDash(m.kind === "raise" ? [] : [6, 4]);
          ctx.beginPath();
          ctx.moveTo(x, u.bbox.top);
          ctx.lineTo(x, u.bbox.top + u.bbox.height);
          ctx.stroke();
        }
        ctx.restore();
      }],
    },
  };
  const axis = { stroke: "#c8d3de", grid: { stroke: "#2a3b4d" }, ticks: { stroke: "#2a3b4d" } };
  const lo = Math.min(xs[0], ...marks.map((m) => m.t)), hi = Math.max(xs[xs.length - 1], ...marks.map((m) => m.t));
  drawTrend.chart = new uPlot({
    width, height: 260, plugins: [marker], legend: { show: true },
    scales: { x: { time: true, range: () => [lo - 1, hi + 1] } },
    axes: [Object.assign({ values: axisTimes }, axis), Object.assign({ label: unit }, axis)],
    series: [{ label: "时间", value: (u, v) => (v == null ? "—" : dateTime(v * 1e9)) },
             { label: `${valueName(field)}${unit ? `（${unit}）` : ""}`, stroke: "#5aa9ff",
               width: 2, spanGaps: false,
               value: (u, v) => (v == null ? "—" : showValue(field, v)) }],
  }, [xs, ys], box);
  box.dataset.points = String(xs.length);
}

// --- OCPP chargers: remote commands from the device dialog -------------------------

// What the API allows (api/routes/chargers.py checks it again): the role each action
// needs and the parameters it takes. The charger's zone decides as for everything else.
const CHARGER_ACTIONS = [
  { action: "remote_start_transaction", role: "operator", connector: 1,
    what: "用控制室的卡号在所选充电枪上启动充电（车辆须已插枪）。" },
  { action: "remote_stop_transaction", role: "operator", connector: 1,
    what: "停止所选充电枪上正在进行的充电。" },
  { action: "unlock_connector", role: "operator", connector: 1,
    what: "解锁所选充电枪，以便拔出；若该枪正在充电，充电桩会先结束充电。" },
  { action: "trigger_message", role: "operator", connector: "optional",
    messages: ["StatusNotification", "MeterValues", "Heartbeat", "BootNotification",
               "DiagnosticsStatusNotification", "FirmwareStatusNotification"],
    what: "请充电桩立即上报所选信息（充电枪号留空：整桩）。" },
  { action: "get_configuration", role: "operator", key: "optional",
    what: "读取充电桩的配置项（多个用英文逗号分隔，留空读取全部）。" },
  { action: "change_availability", role: "supervisor", connector: 0,
    types: ["inoperative", "operative"],
    what: "停用或恢复充电枪（0 号为整桩）；正在充电时，充电桩在充电结束后执行。" },
  { action: "reset", role: "supervisor", types: ["soft", "hard"],
    what: "重启充电桩。" },
  { action: "change_configuration", role: "supervisor", key: "required", value: true,
    what: "修改充电桩的一个配置项（配置项名称以充电桩厂家文档为准）。" },
];

function isOcppCharger(d) {
  if (d.family !== "ev_charger" || !state.site) return false;
  const gateway = state.site.gateways.find((g) => g.id === d.gateway);
  return Boolean(gateway && gateway.kind === "ocpp");
}

// Why this user may not send this action to this charger ("" if they may).
function chargerRefusal(d, spec) {
  if (!can("operator")) return `${ROLE[state.user.role]}只能查看，不能下发指令`;
  if (!mayIn("operator", [d.zone])) return `${d.zone_name}不在您的负责区域内`;
  if (!can(spec.role)) return `需要${ROLE[spec.role]}权限`;
  return "";
}

async function openCharger(d) {
  $("charger-panel").hidden = false;
  renderChargerCommands(); // what is known already; the recent ones are fetched below
  const buttons = CHARGER_ACTIONS.map((spec) => {
    const why = chargerRefusal(d, spec);
    const button = el("button", { type: "button", dataset: { action: spec.action },
                                  onclick: () => chargerCommand(d, spec) },
                      ACTION[spec.action] || spec.action);
    button.disabled = Boolean(why);
    if (why) button.title = why;
    return button;
  });
  $("charger-actions").replaceChildren(...buttons);
  const supervisorOnly = CHARGER_ACTIONS.filter((a) => a.role === "supervisor")
    .map((a) => ACTION[a.action]).join("、");
  const hint = !can("operator") || !mayIn("operator", [d.zone])
    ? `${chargerRefusal(d, CHARGER_ACTIONS[0])}。`
    : can("supervisor") ? "" : `${supervisorOnly}需要${ROLE.supervisor}权限。`;
  $("charger-hint").textContent = hint + (d.online === false ? "充电桩当前离线，指令无法送达。" : "");
  try {
    const recent = await api("GET", "/api/chargers/commands?hours=168");
    for (const c of recent) {
      const known = state.chargerCommands.get(c.id);
      if (!known || !known.final) state.chargerCommands.set(c.id, c);
    }
  } catch (error) {
    $("charger-hint").textContent = `${hint}指令记录暂不可读：${explain(error)}`;
  }
  renderChargerCommands();
}

// The charge point's answer in the label table's words ("ocpp:<answer>"; the central
// system's own reasons are matched at the start of the detail).
function ocppWord(detail) {
  if (!detail) return "";
  const exact = COMMAND_STATUS[`ocpp:${detail}`];
  if (exact) return exact;
  const bare = detail.replace(/^\d+\s+/, "");
  let best = "";
  for (const key of Object.keys(COMMAND_STATUS)) {
    if (key.startsWith("ocpp:") && bare.startsWith(key.slice(5)) && key.length > best.length) {
      best = key;
    }
  }
  return best ? COMMAND_STATUS[best] : chinese(detail);
}

function chargerAnswer(c) {
  if (!c.final) return { text: "", good: false };
  const detail = c.detail || (c.results[0] || {}).detail || "";
  if (c.action === "get_configuration" && c.status === "done") {
    try {
      const answer = JSON.parse(detail);
      const known = Object.entries(answer.configuration || {}).map(([k, v]) =>
        `${VALUE[k] ? `${VALUE[k]}（${k}）` : k} = ${v === null ? "—" : v}`);
      const unknown = (answer.unknown || []).length
        ? [`充电桩没有的配置项：${answer.unknown.join("、")}`] : [];
      return { text: [...known, ...unknown].join("；") || "无配置项", good: true };
    } catch (error) { /* not JSON: read as any other answer */ }
  }
  return { text: ocppWord(detail), good: c.status === "done" };
}

function chargerParamsText(c) {
  const p = state.chargerParams.get(c.id);
  if (!p) return "";
  const parts = [];
  if (p.connector !== undefined) parts.push(p.connector === 0 ? "整桩" : `${p.connector}号枪`);
  if (p.type) parts.push(ACTION[`${c.action}:${p.type}`] || p.type);
  if (p.message) parts.push(ACTION[`trigger_message:${p.message}`] || p.message);
  if (p.key) parts.push(`${VALUE[p.key] || p.key}${p.value !== undefined ? ` = ${p.value}` : ""}`);
  return parts.length ? `（${parts.join("，")}）` : "";
}

// The open dialog's charger: its commands, newest first, with state and answer (live).
function renderChargerCommands() {
  const dialog = $("device-dialog");
  const d = state.detail;
  if (!dialog.open || !d || d.id !== dialog.dataset.device || !isOcppCharger(d)) return;
  const mine = [...state.chargerCommands.values()].filter((c) => c.targets.includes(d.id))
    .sort((a, b) => b.requested_at - a.requested_at).slice(0, 30);
  const line = (c) => {
    const answer = chargerAnswer(c);
    const status = commandStatus(c);
    return [`${dateTime(c.requested_at)} ${ACTION[c.action] || c.action}${chargerParamsText(c)}` +
      ` · ${c.requested_by} · `, el("span", { class: "state" }, status),
      answer.text && answer.text !== status
        ? el("span", { class: "answer" }, ` · 充电桩应答：${answer.text}`) : null];
  };
  const look = (c) => ({ command: c.id, status: c.status, final: String(c.final),
                         outcome: c.final ? (chargerAnswer(c).good ? "good" : "bad") : "" });
  $("device-commands").replaceChildren(...(mine.length ? mine.map((c) => el("li", {
    dataset: look(c), title: `原因：${c.reason}` }, ...line(c), el("br"),
    el("small", {}, `原因：${c.reason}`))) : [el("li", { class: "empty" }, "无")]));
  // The newest one also beside the buttons, where the guard's eyes are.
  const last = $("charger-last");
  last.replaceChildren(...(mine.length ? ["最近指令：", ...line(mine[0])] : []));
  Object.assign(last.dataset, mine.length ? look(mine[0]) : { command: "", status: "", final: "", outcome: "" });
}

function chooseOptions(select, values, label) {
  select.replaceChildren(...values.map((v) => el("option", { value: v }, label(v))));
}

async function chargerCommand(d, spec) {
  const dialog = $("charger-dialog");
  $("charger-title").textContent = `${ACTION[spec.action]}：${d.name}`;
  $("charger-what").textContent = spec.what;
  const connector = $("charger-connector");
  $("charger-connector-field").hidden = spec.connector === undefined;
  connector.min = spec.connector === 1 ? "1" : "0";
  connector.value = spec.connector === "optional" ? "" : spec.connector === 0 ? "0" : "1";
  $("charger-connector-hint").hidden = spec.connector === undefined;
  $("charger-connector-hint").textContent = spec.connector === 0 ? "0：整桩；1、2……：各充电枪"
    : spec.connector === "optional" ? "留空：整桩" : "充电枪编号见桩体标识（1、2……）";
  $("charger-type-field").hidden = !spec.types;
  if (spec.types) chooseOptions($("charger-type"), spec.types, (t) => ACTION[`${spec.action}:${t}`] || t);
  $("charger-message-field").hidden = !spec.messages;
  if (spec.messages) {
    chooseOptions($("charger-message"), spec.messages, (m) => ACTION[`trigger_message:${m}`] || m);
  }
  $("charger-key-field").hidden = !spec.key;
  $("charger-key").value = "";
  $("charger-value-field").hidden = !spec.value;
  $("charger-value").value = "";
  $("charger-reason").value = "";
  $("charger-error").textContent = "";
  let params = {};
  const check = () => {
    const fail = (text, field) => { $("charger-error").textContent = text; field.focus(); return false; };
    params = {};
    if (spec.connector !== undefined && connector.value.trim() !== "") {
      const n = Number(connector.value);
      if (!Number.isInteger(n) || n < Number(connector.min) || n > 16) {
        return fail(`充电枪号应为 ${connector.min} 至 16 的整数`, connector);
      }
      params.connector = n;
    } else if (spec.connector !== undefined && spec.connector !== "optional") {
      return fail("请填写充电枪号", connector);
    }
    if (spec.types) params.type = $("charger-type").value;
    if (spec.messages) params.message = $("charger-message").value;
    const key = $("charger-key").value.trim();
    if (spec.key === "required" && !key) return fail("请填写配置项", $("charger-key"));
    if (spec.key && key) params.key = key;
    if (spec.value) params.value = $("charger-value").value;
    if ($("charger-reason").value.trim().length < 2) {
      return fail("请填写指令原因（至少两个字）", $("charger-reason"));
    }
    return true;
  };
  if (await ask(dialog, check) !== "ok") return;
  const body = { id: newId(), action: spec.action, reason: $("charger-reason").value.trim(),
                 ...params };
  state.chargerParams.set(body.id, params);
  try {
    const view = await sendOnce(`/api/chargers/${encodeURIComponent(d.id)}/commands`, body);
    HANDLERS.command(view);
    // The answer may have come over the live stream first: then its notice stands.
    if (!state.chargerCommands.get(view.id).final) {
      notice(`${ACTION[spec.action]} 已发送，等待充电桩应答`);
    }
  } catch (error) {
    notice(explain(error), true);
  }
}

// A command whose answer was lost on the way (the network, not the API) is sent again
// with the same id: the API executes an id at most once and returns the first command.
async function sendOnce(path, body) {
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await api("POST", path, body);
    } catch (error) {
      if (error instanceof ApiError) throw error;
      if (attempt >= 3) throw new ApiError(0, "");
      await new Promise((resolve) => setTimeout(resolve, 1000 * attempt));
    }
  }
}

// --- the alarm: heard and seen until acknowledged or silenced ----------------------

function considerAlarm(a, fresh) {
  const critical = a.severity === "critical" && a.state === "active_unack" && a.active !== false;
  if (critical) {
    if (!state.sounding.has(a.id) && fresh) { notify(a); if (a.drill) sayDrill(); }
    state.sounding.set(a.id, a);
  } else {
    state.sounding.delete(a.id);
  }
  updateAlarm();
}

function updateAlarm() {
  const loud = [...state.sounding.values()].filter((a) => !state.silenced.has(a.id));
  const banner = $("alarm-banner");
  const newest = [...state.sounding.values()].sort((a, b) => b.raised_at - a.raised_at)[0];
  banner.hidden = !newest;
  if (newest) {
    $("alarm-text").textContent = `${drillText(newest)}紧急告警：${named(newest.title)}` +
      `（${placeName(newest.place)}）` +
      (state.sounding.size > 1 ? `，共 ${state.sounding.size} 条未确认` : "");
    banner.dataset.alert = newest.id;
    banner.dataset.drill = newest.drill || "";
    $("alarm-ack").hidden = !mayIn("operator", [newest.zone]);
    $("alarm-silence").hidden = !loud.length;
  }
  // A drill's alarm sounds apart from a real one (lower, slower); a real one wins.
  if (loud.length) tone.start(loud.every((a) => a.drill) ? "drill" : "real"); else tone.stop();
  document.body.dataset.alarm = loud.length ? "sounding" : newest ? "silenced" : "";
}

// A two-tone alarm made with WebAudio (no sound file): 880/660 Hz, alternating twice a
// second; a drill's alone: 523/392 Hz, once a second, so nobody takes it for a real one.
const TONES = { real: { high: 880, low: 660, every: 500, wave: "square" },
                drill: { high: 523, low: 392, every: 1000, wave: "triangle" } };
const tone = {
  ctx: null, osc: null, gain: null, timer: null, kind: "",
  start(kind = "real") {
    if (this.osc && this.kind === kind) return;
    if (this.osc) this.stop();
    const sound = TONES[kind];
    this.kind = kind;
    $("alarm-banner").dataset.soundKind = kind;
    try {
      this.ctx = this.ctx || new AudioContext();
      if (this.ctx.state === "suspended") this.ctx.resume().catch(() => {});
      this.osc = this.ctx.createOscillator();
      this.gain = this.ctx.createGain();
      this.osc.type = sound.wave;
      this.osc.frequency.value = sound.high;
      this.gain.gain.value = 0.15;
      this.osc.connect(this.gain).connect(this.ctx.destination);
      this.osc.start();
      let high = true;
      this.timer = setInterval(() => {
        high = !high;
        this.osc.frequency.setValueAtTime(high ? sound.high : sound.low, this.ctx.currentTime);
      }, sound.every);
    } catch (error) {
      this.osc = null;
    }
    $("alarm-banner").dataset.sound = this.ctx ? this.ctx.state : "none";
  },
  stop() {
    clearInterval(this.timer);
    if (this.osc) { this.osc.stop(); this.osc.disconnect(); }
    this.osc = null;
    this.kind = "";
    $("alarm-banner").dataset.sound = "off";
  },
};

function notify(a) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  try {
    const n = new Notification(`${drillText(a)}紧急告警：${named(a.title)}`, {
      body: `${named(a.text)}（${placeName(a.place)}）`, tag: a.id, requireInteraction: true });
    n.onclick = () => { window.focus(); openAlert(a.id); };
  } catch (error) {
    // a browser without page notifications: the banner and the sound remain
  }
}

// A drill's alarm also says so aloud (演练，演练。), where the browser can speak Chinese.
function sayDrill() {
  document.body.dataset.drillSaid = DRILL_SPEECH_PREFIX;
  if (!("speechSynthesis" in window)) return;
  try {
    const words = new SpeechSynthesisUtterance(DRILL_SPEECH_PREFIX);
    words.lang = "zh-CN";
    speechSynthesis.speak(words);
  } catch (error) { /* no speech: the banner and the tone say it */ }
}

// Sound and notifications need the operator's permission (one click, once per login).
function offerSound() {
  const need = ("Notification" in window && Notification.permission === "default")
    || (tone.ctx === null && navigator.userActivation && !navigator.userActivation.hasBeenActive);
  $("enable-sound").hidden = !need;
}

function enableSound() {
  try { tone.ctx = tone.ctx || new AudioContext(); tone.ctx.resume(); } catch (error) { /* none */ }
  if ("Notification" in window && Notification.permission === "default") {
    Notification.requestPermission().finally(offerSound);
  }
  $("enable-sound").hidden = true;
}

// --- bollards -------------------------------------------------------------------------

function bollards() {
  return [...state.devices.values()].filter((d) => d.family === "bollard" && d.controller)
    .sort((a, b) => a.id.localeCompare(b.id));
}

function wireCommandButtons() {
  $("raise-selected").addEventListener("click", () => command("raise"));
  $("lower-selected").addEventListener("click", () => command("lower"));
  $("raise-all").addEventListener("click", () => command("raise_all"));
  $("lower-all").addEventListener("click", () => command("lower_all"));
  $("emergency").addEventListener("click", async () => {
    if (await ask($("emergency-dialog")) === "ok") command("emergency_rise", "紧急升起");
  });
}

function renderBollards() {
  const grid = $("bollards");
  const list = bollards();
  const alerts = alertsBySource();
  grid.replaceChildren(...list.map((d) => {
    const values = d.latest ? d.latest.values : {};
    const s = values.state || "unknown";
    const n = Number(d.id.replace(/\D+/g, ""));
    const cell = el("button", {
      type: "button",
      class: `bollard b-${BOLLARD[s] ? s : "unknown"} ${state.selected.has(d.id) ? "selected" : ""}`,
      dataset: { bollard: d.id, state: s },
      "aria-pressed": state.selected.has(d.id) ? "true" : "false",
      title: `${d.name}：${BOLLARD[s] || "无数据"}，液压 ${fmt(values.hydraulic_pressure)} bar` +
             (alerts.get(d.id) ? "，有告警" : ""),
      onclick: () => {
        if (state.selected.has(d.id)) state.selected.delete(d.id); else state.selected.add(d.id);
        mark("bollards");
      },
    }, el("b", {}, n), BOLLARD[s] || "—");
    return cell;
  }));
  const counts = bollardCounts();
  const summary = Object.entries(counts).map(([k, v]) => `${BOLLARD[k] || "无数据"} ${v}`);
  $("bollard-summary").textContent = summary.join("，");
  const zones = [...new Set(list.map((d) => d.zone))];
  const allowed = mayIn("operator", zones.length ? zones : ["south-gate"]);
  for (const id of ["raise-selected", "lower-selected", "raise-all", "lower-all", "emergency"]) {
    $(id).disabled = !allowed;
  }
  $("reason").disabled = !allowed;
}

function newId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function command(action, defaultReason) {
  const reason = ($("reason").value || defaultReason || "").trim();
  if (reason.length < 2) { notice("请填写指令原因", true); $("reason").focus(); return; }
  const body = { id: newId(), action, reason };
  if (action === "raise" || action === "lower") {
    body.bollards = [...state.selected].sort();
    if (!body.bollards.length) { notice("请先在图中选择升降柱", true); return; }
  }
  try {
    const view = await api("POST", "/api/commands", body);
    HANDLERS.command(view);
    notice(view.status === "awaiting_approval"
      ? `${ACTION[action]} 已提交，等待另一名值班长审批`
      : `${ACTION[action]} 已发送`);
    state.selected.clear();
    $("reason").value = "";
    mark("bollards");
  } catch (error) {
    notice(explain(error), true);
  }
}

async function decide(view, approve) {
  try {
    const result = await api("POST", `/api/commands/${encodeURIComponent(view.id)}/${approve ? "approve" : "reject"}`, { comment: "" });
    HANDLERS.command(result);
  } catch (error) {
    notice(explain(error), true);
  }
}

function commandStatus(c) {
  const charger = CHARGER_ACTIONS.some((a) => a.action === c.action);
  return (charger && COMMAND_STATUS[`charger:${c.status}`]) || COMMAND_STATUS[c.status] || c.status;
}

function commandText(c) {
  const targets = c.targets.length === 1 ? ` ${deviceName(c.targets[0])}`
    : `（${c.targets.length} 个目标）`;
  const said = chinese(c.detail);
  return `${time(c.requested_at)} ${ACTION[c.action] || c.action}${targets} · ${c.requested_by}` +
    (c.approval.decided_by ? ` · 审批 ${c.approval.decided_by}` : "") +
    ` · ${COMMAND_STATUS[c.status] || c.status}` + (said ? `（${said}）` : "");
}

function renderCommands() {
  const now = Date.now() * 1e6;
  const pending = [...state.approvals.values()].filter((c) => c.approval.expires_at > now);
  $("approvals").replaceChildren(...(pending.length ? pending.map((c) => el("li", {},
    `${time(c.requested_at)} ${c.requested_by} 申请「${ACTION[c.action] || c.action}」：${c.reason} `,
    mayIn("supervisor", c.zones) && c.requested_by !== state.user.username
      ? el("button", { type: "button", onclick: () => decide(c, true) }, "批准") : null,
    " ",
    mayIn("supervisor", c.zones) || c.requested_by === state.user.username
      ? el("button", { type: "button", onclick: () => decide(c, false) }, "驳回") : null,
  )) : [el("li", { class: "empty" }, "无")]));
  const recent = [...state.commands.values()].sort((a, b) => b.requested_at - a.requested_at)
    .slice(0, 20);
  $("commands").replaceChildren(...recent.map((c) => el("li", { dataset: { command: c.id } },
    commandText(c))));
}

// Water levels, pumps and the rain gauge.
function renderWater() {
  const rows = [...state.devices.values()].filter((d) => d.family === "drainage");
  const alerts = alertsBySource();
  $("water").tBodies[0].replaceChildren(...rows.map((d) => {
    const v = d.latest ? d.latest.values : {};
    let value = "—", bar = null;
    if (d.kind === "water_level") {
      value = `${fmt(v.water_level, 0)} cm`;
      const level = Math.max(0, Math.min(100, Number(v.water_level || 0)));
      const inner = el("i");
      inner.style.width = `${level}%`;
      bar = el("div", { class: `bar ${alerts.get(d.id) ? "high" : ""}`, role: "img",
                        "aria-label": `水位 ${fmt(v.water_level, 0)} 厘米` }, inner);
    } else if (d.kind === "rain_gauge") {
      value = `${fmt(v.rain_rate, 1)} mm/h`;
    } else if (d.kind === "sump_pump") {
      value = v.pump_fault ? "故障" : v.pump_running ? `运行 ${fmt(v.pump_current, 1)} A` : "停止";
    }
    const quality = d.latest && d.latest.quality !== "good"
      ? QUALITY[d.latest.quality] || d.latest.quality : "";
    return el("tr", { dataset: { device: d.id } },
              el("td", {}, el("button", { type: "button", class: "link", onclick: () => openDevice(d.id) }, d.name)),
              el("td", { class: "num" }, value), el("td", {}, bar),
              el("td", { class: "q-bad" }, d.online === false ? AVAILABILITY.offline : quality));
  }));
}

function renderEv() {
  const rows = [...state.devices.values()].filter((d) => d.family === "ev_charger");
  $("ev").tBodies[0].replaceChildren(...rows.map((d) => {
    const v = d.latest ? d.latest.values : {};
    return el("tr", { dataset: { device: d.id } },
              el("td", {}, el("button", { type: "button", class: "link", onclick: () => openDevice(d.id) }, d.name)),
              el("td", {}, EV_STATUS[v.status] || (d.online === false ? AVAILABILITY.offline : "—")),
              el("td", { class: "num" }, `${fmt(v.power, 1)} kW`),
              el("td", { class: "num" }, `${fmt(v.connector_temperature, 0)} °C`));
  }));
}

// Screens, terminals and PA zones; 发布 and 撤回 only where this user may, 撤回 only
// where a manual message is.
function displayZones(d) { return d.zone ? [d.zone] : d.covers; }

async function refreshManual() {
  clearTimeout(refreshManual.timer);
  refreshManual.timer = setTimeout(async () => {
    try {
      const manual = await api("GET", "/api/displays/manual");
      state.manual = new Map(manual.map((m) => [m.display, m]));
      mark("displays");
    } catch (error) { /* shown at the next reload */ }
  }, 300);
}

function renderDisplays() {
  const rows = [...state.displays.values()];
  $("displays").tBodies[0].replaceChildren(...rows.map((d) => {
    const shown = d.shown || {};
    const delivery = d.delivery ? d.delivery.status : "";
    const actions = el("td", { class: "display-actions" });
    if (d.kind !== "pa_zone" && mayIn("operator", displayZones(d))) {
      actions.append(el("button", { type: "button", class: "publish", onclick: () => setMessage(d) }, "发布"));
      if (state.manual.has(d.id)) {
        actions.append(" ", el("button", { type: "button", class: "withdraw",
                                           onclick: () => withdraw(d) }, "撤回"));
      }
    }
    return el("tr", { class: `d-${shown.kind || "normal"}`, dataset: { display: d.id } },
      el("td", {}, d.name),
      el("td", { class: "display-text" }, shown.text || "（无内容）",
         state.manual.has(d.id) && state.manual.get(d.id).text !== shown.text
           ? el("small", { class: "waiting" }, `（人工信息排队中：${state.manual.get(d.id).text}）`) : ""),
      el("td", { class: `delivery-${delivery}` }, DELIVERY[delivery] || ""),
      actions);
  }));
  const select = $("pa-zone");
  if (!select.options.length) {
    const mine = rows.filter((d) => d.kind === "pa_zone" && mayIn("operator", displayZones(d)));
    select.append(...mine.map((d) => el("option", { value: d.id }, d.name)));
    const none = !mine.length;
    $("pa-none").hidden = !none;
    for (const node of $("broadcast-form").querySelectorAll("select, input, button")) {
      node.disabled = none;
    }
  }
}

async function setMessage(display) {
  $("message-display").textContent = `在「${display.name}」发布`;
  $("message-text").value = "";
  const answer = await ask($("message-dialog"), () => Boolean($("message-text").value.trim()));
  if (answer !== "ok") return;
  try {
    const view = await api("PUT", `/api/displays/${encodeURIComponent(display.id)}/message`,
                           { text: $("message-text").value.trim(),
                             priority: Number($("message-priority").value) });
    state.displays.set(view.id, view);
    mark("displays");
    refreshManual();
  } catch (error) {
    notice(explain(error), true);
  }
}

async function withdraw(display) {
  try {
    const view = await api("DELETE", `/api/displays/${encodeURIComponent(display.id)}/message`);
    state.displays.set(view.id, view);
    state.manual.delete(display.id);
    mark("displays");
    refreshManual();
  } catch (error) {
    notice(explain(error), true);
  }
}

async function broadcast(event) {
  event.preventDefault();
  try {
    await api("POST", "/api/broadcasts", {
      zones: [$("pa-zone").value], text: $("pa-text").value,
      priority: Number($("pa-priority").value),
    });
    notice("广播已发出");
    $("pa-text").value = "";
  } catch (error) {
    notice(explain(error), true);
  }
}

// --- the PA zones' last announcements, played from the API -----------------------

// Refresh soon; again while an announcement heard of on the live stream has no audio yet
// (the simulated PA renders it to speech after it confirms), for at most 30 tries.
function schedulePa(delay) {
  clearTimeout(schedulePa.timer);
  schedulePa.timer = setTimeout(refreshPa, delay);
}

async function refreshPa() {
  const status = $("pa-last-status");
  try {
    const zones = await api("GET", "/api/pa");
    state.pa = new Map(zones.map((z) => [z.zone, z]));
    status.hidden = true;
  } catch (error) {
    // 409: the PA's player is not where the API looks; the texts are in the list above.
    state.pa.clear();
    status.textContent = explain(error);
    status.hidden = false;
  }
  for (const [zone, id] of state.paWaiting) {
    const z = state.pa.get(zone);
    if (!z || (z.audio && z.audio.broadcast === id)) state.paWaiting.delete(zone);
  }
  refreshPa.tries = state.paWaiting.size ? (refreshPa.tries || 0) + 1 : 0;
  if (state.paWaiting.size && refreshPa.tries < 30) schedulePa(1000);
  else state.paWaiting.clear();
  renderPa();
}

function renderPa() {
  const zones = [...state.pa.values()];
  $("pa-last").hidden = !zones.length;
  $("pa-last").tBodies[0].replaceChildren(...zones.map((z) => {
    let audio;
    if (z.audio) {
      audio = $("pa-play").content.firstElementChild.cloneNode(true);
      audio.dataset.zone = z.zone;
      audio.dataset.broadcast = z.audio.broadcast;
      audio.setAttribute("aria-label", `${audio.querySelector(".word").textContent}：${z.name}`);
      audio.addEventListener("click", () => playPa(z));
      showPlay(audio, z.zone);
    } else {
      audio = $("pa-no-audio").content.firstElementChild.cloneNode(true);
    }
    return el("tr", { dataset: { zone: z.zone, audio: z.audio ? z.audio.broadcast : "" } },
      el("td", {}, z.name), el("td", { class: "pa-text" }, named(z.text) || "（无内容）"),
      el("td", { class: "nowrap" }, audio,
         z.audio ? el("small", {}, ` ${fmt(z.audio.duration_s, 0)} 秒`) : ""));
  }));
}

// The WAV needs the login header, so it is fetched (not given to <audio> as a URL) and
// played from a blob: URL (the CSP allows media from 'self' and blob:).
async function playPa(zone) {
  const broadcast = zone.audio.broadcast;
  if (playPa.audio) { playPa.audio.pause(); URL.revokeObjectURL(playPa.audio.src); }
  markPlay(zone.zone, { broadcast, state: "loading", fetched: "" });
  try {
    const reply = await fetch(withSite(zone.audio.url), {
      headers: { "Authorization": `Bearer ${state.token}` }, cache: "no-store" });
    if (!reply.ok) {
      const data = await reply.json().catch(() => ({}));
      throw new ApiError(reply.status, typeof data.detail === "string" ? data.detail : "");
    }
    const blob = await reply.blob();
    markPlay(zone.zone, { fetched: String(blob.size) });
    const audio = new Audio(URL.createObjectURL(blob));
    playPa.audio = audio;
    audio.addEventListener("ended", () => {
      markPlay(zone.zone, { state: "ended" });
      URL.revokeObjectURL(audio.src);
    });
    await audio.play();
    markPlay(zone.zone, { state: "playing" });
  } catch (error) {
    markPlay(zone.zone, { state: "error" });
    notice(explain(error), true);
  }
}

// What the play button of a zone did (loading, playing, ended, error; the bytes fetched),
// kept across re-renders of the list for as long as that announcement is the zone's last.
function markPlay(zone, changes) {
  const now = Object.assign(state.paPlay.get(zone) || {}, changes);
  state.paPlay.set(zone, now);
  const button = $("pa-last").querySelector(`button.pa-play[data-zone="${zone}"]`);
  if (button) showPlay(button, zone);
}

function showPlay(button, zone) {
  const play = state.paPlay.get(zone);
  if (!play || play.broadcast !== button.dataset.broadcast) return;
  button.dataset.state = play.state;
  if (play.fetched) button.dataset.fetched = play.fetched; else delete button.dataset.fetched;
}

// --- drills (演练): a supervisor starts one; everyone sees them ----------------------

const DRILL_SCENARIOS = ["fire", "rainstorm", "gateway-loss", "bollard-fault"];

// What each scenario can be run at, by name (facility/drills.py checks it again): a place
// with fire detectors, a drain with a level sensor, a Modbus gateway, a bollard.
function drillPlaces(scenario) {
  const devices = [...state.devices.values()];
  const places = (kinds) => [...new Set(devices.filter((d) => kinds.includes(d.kind))
    .map((d) => d.place))].map((id) => [id, placeName(id)]);
  let out;
  if (scenario === "fire") out = places(["smoke_detector", "heat_detector"]);
  else if (scenario === "rainstorm") out = places(["water_level"]);
  else if (scenario === "gateway-loss") {
    out = state.site.gateways.filter((g) => g.kind === "modbus").map((g) => [g.id, g.name]);
  } else out = bollards().map((d) => [d.id, d.name]);
  return scenario === "bollard-fault" ? out : out.sort((a, b) => a[1].localeCompare(b[1], "zh-CN"));
}

function fillDrillPlaces() {
  chooseOptions($("drill-place"), drillPlaces($("drill-scenario").value).map(([id]) => id),
                (id) => (drillPlaces.names.get(id) || id));
}

async function startDrill() {
  if (!can("supervisor")) return;
  drillPlaces.names = new Map(DRILL_SCENARIOS.flatMap(drillPlaces));
  if (!$("drill-scenario").options.length) {
    chooseOptions($("drill-scenario"), DRILL_SCENARIOS, (s) => DRILL[s] || s);
  }
  fillDrillPlaces();
  if (await ask($("drill-dialog"), () => Boolean($("drill-place").value)) !== "ok") return;
  const scenario = $("drill-scenario").value, place = $("drill-place").value;
  const duration = $("drill-duration");
  $("drill-confirm-scenario").textContent = DRILL[scenario] || scenario;
  $("drill-confirm-place").textContent = drillPlaces.names.get(place) || place;
  $("drill-confirm-duration").textContent = duration.options[duration.selectedIndex].text;
  if (await ask($("drill-confirm-dialog")) !== "ok") return;
  const body = { scenario, place };
  if (duration.value) body.duration_s = Number(duration.value);
  try {
    const view = await api("POST", "/api/drills", body);
    state.drills.set(view.id, view);
    renderDrills();
    notice(`${DRILL.started}：${view.name}（${view.place_name}）`);
  } catch (error) {
    notice(explain(error), true);
  }
}

async function refreshDrills() {
  clearTimeout(refreshDrills.timer);
  try {
    const list = await api("GET", "/api/drills");
    state.drills = new Map(list.map((d) => [d.id, d]));
  } catch (error) { /* the list stays as it was; the button still follows the role */ }
  renderDrills();
}

function renderDrills() {
  const now = Date.now() * 1e6;
  const list = [...state.drills.values()].sort((a, b) => b.ts - a.ts);
  $("drills").replaceChildren(...(list.length ? list.map((d) => el("li", {
    class: d.ends_at > now ? "running" : "", dataset: { drill: d.id, scenario: d.scenario } },
    el("span", { class: "drill-tag" }, DRILL_PREFIX),
    `${d.name} · ${d.place_name} · ${d.by} · ${dateTime(d.ts)} – ${time(d.ends_at)} · `,
    el("span", { class: "state" }, d.ends_at > now ? DRILL.started : DRILL.ended)))
    : [el("li", { class: "empty" }, "无")]));
  const running = list.filter((d) => d.ends_at > now);
  $("drill-count").textContent = running.length ? `${DRILL.started} ${running.length}` : "";
  // Once the newest running drill ends, its line says so.
  const next = Math.min(...running.map((d) => d.ends_at));
  clearTimeout(renderDrills.timer);
  if (running.length) renderDrills.timer = setTimeout(renderDrills, (next - now) / 1e6 + 500);
  const boss = can("supervisor");
  $("drill-start").disabled = !boss;
  $("drill-hint").hidden = boss;
}

// --- start --------------------------------------------------------------------------

function tick() {
  $("clock").textContent = new Date().toLocaleString("zh-CN", { hour12: false });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => { enableSound(); login(event); });
  $("logout").addEventListener("click", () => logout(""));
  $("broadcast-form").addEventListener("submit", broadcast);
  $("enable-sound").addEventListener("click", enableSound);
  $("alarm-silence").addEventListener("click", () => {
    for (const id of state.sounding.keys()) state.silenced.add(id);
    updateAlarm();
  });
  $("alarm-ack").addEventListener("click", () => {
    const a = state.alerts.get($("alarm-banner").dataset.alert);
    if (a) acknowledge(a);
  });
  $("alert-filters").addEventListener("change", (event) => {
    if (event.target.id === "f-history") toggleHistory(); else mark("alerts");
  });
  $("trend-field").addEventListener("change", drawTrend);
  $("trend-range").addEventListener("change", drawTrend);
  for (const name of ["device", "alert", "incident"]) {
    $(`${name}-close`).addEventListener("click", () => $(`${name}-dialog`).close());
  }
  $("device-dialog").addEventListener("close", () => {
    if (drawTrend.chart) { drawTrend.chart.destroy(); drawTrend.chart = null; }
  });
  wireCommandButtons();
  $("drill-start").addEventListener("click", startDrill);
  $("drill-scenario").addEventListener("change", fillDrillPlaces);
  $("site-switch").addEventListener("change", (event) => switchSite(event.target.value));
  tick();
  setInterval(tick, 1000);
  if (state.token) start().catch(() => logout(""));
});
