// The control-room page: plain JavaScript, no build step. It logs in, loads the campus
// from the REST API, then follows the live stream (Server-Sent Events read with fetch, so
// the login token travels in a header and not in the URL). Every text from the server is
// put in the page with textContent, never as HTML.
"use strict";

// The Chinese words for states, statuses and names: the server's one label table
// (facility/labels.py), loaded once at start from GET /api/labels; the page keeps no copy.
let SEVERITY = {}, SEVERITY_RANK = {}, ALERT_STATE = {}, BOLLARD = {}, EV_STATUS = {};
let COMMAND_STATUS = {}, ACTION = {}, DELIVERY = {}, ROLE = {}, AVAILABILITY = {}, QUALITY = {};
const STALE_AFTER_MS = 35000; // the server sends something at least every 15 s

const state = {
  token: sessionStorage.getItem("token") || "",
  user: null,
  site: null,
  devices: new Map(), // id -> device view, with latest values
  alerts: new Map(), // id -> AlertMessage
  displays: new Map(),
  commands: new Map(),
  approvals: new Map(),
  selected: new Set(),
  lastEventId: "",
  streamAbort: null,
  dirty: new Set(),
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

function explain(error) {
  const words = { 401: "登录已失效", 403: "无权限", 404: "不存在", 409: "与当前状态冲突",
                  422: "输入有误", 429: "尝试次数过多", 503: "服务暂不可用（指令未发出）",
                  504: "规则引擎未响应" };
  const head = words[error.status] || "操作失败";
  return `${head}：${error.message}`;
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (state.token) headers["Authorization"] = `Bearer ${state.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const reply = await fetch(path, { method, headers,
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
  setLive("unknown");
  if (message) $("login-error").textContent = message;
}

async function loadLabels() {
  const table = await api("GET", "/api/labels");
  ({ severity: SEVERITY, severity_rank: SEVERITY_RANK, alert_state: ALERT_STATE,
     bollard: BOLLARD, ev_status: EV_STATUS, command_status: COMMAND_STATUS,
     command_action: ACTION, delivery: DELIVERY, role: ROLE,
     availability: AVAILABILITY, quality: QUALITY } = table);
}

async function start() {
  if (!Object.keys(SEVERITY).length) await loadLabels();
  state.user = await api("GET", "/api/me");
  $("user").textContent = `${state.user.display_name || state.user.username}（${ROLE[state.user.role]}）`;
  $("logout").hidden = false;
  $("login").hidden = true;
  $("board").hidden = false;
  state.site = await api("GET", "/api/site");
  $("site-name").textContent = state.site.name;
  buildPlan();
  await reload();
  follow();
  refreshEnergy();
}

function can(role) {
  const order = ["viewer", "operator", "supervisor", "admin"];
  return state.user && order.indexOf(state.user.role) >= order.indexOf(role);
}

// --- loading state ------------------------------------------------------------------

async function reload() {
  const [devices, alerts, displays, commands, approvals] = await Promise.all([
    api("GET", "/api/devices"), api("GET", "/api/alerts"), api("GET", "/api/displays"),
    api("GET", "/api/commands?hours=12"), api("GET", "/api/commands?pending=true"),
  ]);
  state.devices = new Map(devices.map((d) => [d.id, d]));
  state.alerts = new Map(alerts.map((a) => [a.id, a]));
  state.displays = new Map(displays.map((d) => [d.id, d]));
  state.commands = new Map(commands.map((c) => [c.id, c]));
  state.approvals = new Map(approvals.map((c) => [c.id, c]));
  ["plan", "alerts", "bollards", "water", "ev", "displays", "commands"].forEach(mark);
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
      const reply = await fetch("/api/stream", { headers, signal: abort.signal });
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
    if (a.state === "normal") state.alerts.delete(a.id);
    else state.alerts.set(a.id, a);
    mark("alerts"); mark("plan"); mark("bollards");
  },
  display(d) {
    const view = state.displays.get(d.display);
    if (view) { view.shown = d; view.delivery = { message: d.id, status: "pending" }; }
    mark("displays");
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
    const view = state.displays.get(b.zone);
    if (view) {
      view.shown = { text: b.text, kind: b.kind, priority: b.priority };
      view.delivery = { message: b.id, status: "pending" };
    }
    mark("displays");
  },
  command(c) {
    state.commands.set(c.id, c);
    if (c.status === "awaiting_approval") state.approvals.set(c.id, c);
    else state.approvals.delete(c.id);
    mark("commands");
    if (c.final && c.requested_by === (state.user && state.user.username)) {
      notice(`指令 ${ACTION[c.action] || c.action}：${COMMAND_STATUS[c.status] || c.status}` +
             (c.detail ? `（${c.detail}）` : ""), c.status !== "done");
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

function alertsBySource() {
  const by = new Map();
  for (const a of state.alerts.values()) {
    if (QUIET.includes(a.state)) continue;
    const worst = by.get(a.source);
    if (!worst || SEVERITY_RANK[a.severity] > SEVERITY_RANK[worst]) by.set(a.source, a.severity);
  }
  return by;
}

function deviceState(device, alerts) {
  const severity = alerts.get(device.id);
  if (severity === "critical" || severity === "major") return "alarm";
  if (severity) return "warn";
  if (device.online === false) return "offline";
  if (device.latest && device.latest.quality !== "good") return "degraded";
  if (device.latest || device.online === true) return "ok";
  return "unknown";
}

// The plan: places at their coordinates; devices in a small spiral around their place.
function buildPlan() {
  const plan = $("plan");
  plan.replaceChildren();
  for (const place of state.site.places) {
    if (!place.plan) continue;
    const ring = el("div", { class: "ring", dataset: { place: place.id }, hidden: "" });
    ring.style.left = `${place.plan.x}%`;
    ring.style.top = `${place.plan.y}%`;
    plan.append(ring);
    if (!["building", "gate", "car_park", "ebike_shed"].includes(place.kind)) continue;
    const name = place.kind === "ebike_shed" ? place.name.replace("电动自行车停车棚", "车棚")
      .replace("电动自行车停放点", "车棚") : place.name;
    const label = el("div", { class: `place ${place.kind}` }, name);
    label.style.left = `${place.plan.x}%`;
    label.style.top = `${place.plan.y}%`;
    plan.append(label);
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

function renderPlan() {
  const plan = $("plan");
  const alerts = alertsBySource();
  const around = new Map();
  let live = 0, total = 0;
  for (const device of state.devices.values()) {
    if (device.controller && device.family === "bollard") continue; // the PLC stands for them
    if (!device.plan) continue;
    const key = `${device.plan.x},${device.plan.y}`;
    const n = around.get(key) || 0;
    around.set(key, n + 1);
    let dot = plan.querySelector(`[data-device="${CSS.escape(device.id)}"]`);
    if (!dot) {
      dot = el("div", { class: "dev", dataset: { device: device.id } });
      const angle = n * 2.4, radius = n === 0 ? 0 : 1.6 + 0.7 * Math.sqrt(n);
      dot.style.left = `${Math.min(99, Math.max(1, device.plan.x + radius * Math.cos(angle)))}%`;
      dot.style.top = `${Math.min(99, Math.max(1, device.plan.y + radius * Math.sin(angle) * 1.3))}%`;
      plan.append(dot);
    }
    let status = deviceState(device, alerts);
    if (device.kind === "plc") status = worstBollard(status, alerts);
    dot.className = `dev state-${status}`;
    dot.title = `${device.name}（${device.place_name}）\n${describe(device)}`;
    total += 1;
    if (status !== "unknown") live += 1;
  }
  $("plan-summary").textContent = `${live}/${total} 台设备有数据`;
  renderRings();
}

function worstBollard(status, alerts) {
  const order = ["unknown", "ok", "degraded", "offline", "warn", "alarm"];
  let worst = status;
  for (const d of state.devices.values()) {
    if (d.family !== "bollard" || !d.controller) continue;
    let s = deviceState(d, alerts);
    if (d.latest && d.latest.values.state === "fault") s = "alarm";
    if (order.indexOf(s) > order.indexOf(worst)) worst = s;
  }
  return worst;
}

function describe(device) {
  if (!device.latest) return device.online === false ? AVAILABILITY.offline : "暂无数据";
  const parts = Object.entries(device.latest.values).slice(0, 6).map(([k, v]) => {
    const unit = (device.latest.units || {})[k] || "";
    return `${k} ${fmt(v, 2)}${unit}`;
  });
  return `${parts.join("，")}（${time(device.latest.ts)}）`;
}

const QUIET = ["shelved", "suppressed", "out_of_service"]; // not annunciated (ISA-18.2)

function renderAlerts() {
  const body = $("alerts").tBodies[0];
  // Annunciated first, then by severity, then newest; quiet ones stay visible, dimmed.
  const alerts = [...state.alerts.values()].sort((a, b) =>
    (QUIET.includes(a.state) - QUIET.includes(b.state))
    || (SEVERITY_RANK[b.severity] - SEVERITY_RANK[a.severity]) || (b.raised_at - a.raised_at));
  body.replaceChildren(...alerts.map(alertRow));
  $("alert-count").textContent = `${alerts.length} 条`;
  $("no-alerts").hidden = alerts.length > 0;
}

function alertRow(a) {
  const actions = el("td", {});
  if (can("operator")) {
    if (!a.acknowledged && a.state !== "normal") {
      actions.append(el("button", { type: "button", class: "ack", onclick: () => acknowledge(a) },
                        "确认"));
    }
    if (a.state === "shelved") {
      actions.append(el("button", { type: "button", onclick: () => operate(a, "unshelve", {}) },
                        "取消搁置"));
    } else {
      actions.append(el("button", { type: "button", onclick: () => shelve(a) }, "搁置"));
    }
  }
  const place = (state.site.places.find((p) => p.id === a.place) || {}).name || a.place;
  const look = a.state === "active_unack" ? "unack" : QUIET.includes(a.state) ? "quiet" : "";
  return el("tr", { class: `alert ${look}`,
                    dataset: { alert: a.id, state: a.state, family: a.family || "",
                               rule: a.rule } },
    el("td", {}, el("span", { class: `sev sev-${a.severity}` }, SEVERITY[a.severity] || a.severity)),
    el("td", {}, time(a.raised_at)),
    el("td", {}, el("b", {}, a.title), el("br"), a.text,
       a.late_s ? el("span", { class: "late" }, `（迟到${a.late_s}秒）`) : ""),
    el("td", {}, place),
    el("td", { class: "alert-state" }, ALERT_STATE[a.state] || a.state),
    actions);
}

async function operate(alert, action, body) {
  try {
    const result = await api("POST", `/api/alerts/${encodeURIComponent(alert.id)}/${action}`, body);
    if (result.alert) {
      const known = state.alerts.get(alert.id) || {};
      state.alerts.set(alert.id, Object.assign({}, known, result.alert));
      mark("alerts");
    }
  } catch (error) {
    notice(explain(error), true);
  }
}

function acknowledge(alert) { return operate(alert, "acknowledge", { comment: "" }); }

function shelve(alert) {
  const minutes = Number(prompt("搁置多少分钟？（到期自动恢复）", "30"));
  if (!minutes || minutes <= 0) return;
  const comment = prompt("搁置原因（必填）", "");
  if (!comment) { notice("搁置需要填写原因", true); return; }
  operate(alert, "shelve", { minutes, comment });
}

// The bollards: a grid of the 42, with their state; click to select.
function bollards() {
  return [...state.devices.values()].filter((d) => d.family === "bollard" && d.controller)
    .sort((a, b) => a.id.localeCompare(b.id));
}

function wireCommandButtons() {
  $("raise-selected").addEventListener("click", () => command("raise"));
  $("lower-selected").addEventListener("click", () => command("lower"));
  $("raise-all").addEventListener("click", () => command("raise_all"));
  $("lower-all").addEventListener("click", () => command("lower_all"));
  $("emergency").addEventListener("click", () => {
    if (confirm("确认紧急升起南门全部升降柱？")) command("emergency_rise", "紧急升起");
  });
}

function renderBollards() {
  const grid = $("bollards");
  const list = bollards();
  const counts = {};
  const alerts = alertsBySource();
  grid.replaceChildren(...list.map((d) => {
    const values = d.latest ? d.latest.values : {};
    const s = values.state || "unknown";
    counts[s] = (counts[s] || 0) + 1;
    const n = Number(d.id.replace(/\D+/g, ""));
    const cell = el("button", {
      type: "button",
      class: `bollard b-${BOLLARD[s] ? s : "unknown"} ${state.selected.has(d.id) ? "selected" : ""}`,
      dataset: { bollard: d.id, state: s },
      title: `${d.name}：${BOLLARD[s] || "无数据"}，液压 ${fmt(values.hydraulic_pressure)} bar` +
             (alerts.get(d.id) ? "，有告警" : ""),
      onclick: () => {
        if (state.selected.has(d.id)) state.selected.delete(d.id); else state.selected.add(d.id);
        mark("bollards");
      },
    }, el("b", {}, n), BOLLARD[s] || "—");
    return cell;
  }));
  const summary = Object.entries(counts).map(([k, v]) => `${BOLLARD[k] || "无数据"} ${v}`);
  $("bollard-summary").textContent = summary.join("，");
  const allowed = can("operator");
  for (const id of ["raise-selected", "lower-selected", "raise-all", "lower-all", "emergency"]) {
    $(id).disabled = !allowed;
  }
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

function renderCommands() {
  const now = Date.now() * 1e6;
  const pending = [...state.approvals.values()].filter((c) => c.approval.expires_at > now);
  $("approvals").replaceChildren(...(pending.length ? pending.map((c) => el("li", {},
    `${time(c.requested_at)} ${c.requested_by} 申请「${ACTION[c.action] || c.action}」：${c.reason} `,
    can("supervisor") && c.requested_by !== state.user.username
      ? el("button", { type: "button", onclick: () => decide(c, true) }, "批准") : null,
    " ",
    can("supervisor") || c.requested_by === state.user.username
      ? el("button", { type: "button", onclick: () => decide(c, false) }, "驳回") : null,
  )) : [el("li", { class: "empty" }, "无")]));
  const recent = [...state.commands.values()].sort((a, b) => b.requested_at - a.requested_at)
    .slice(0, 20);
  $("commands").replaceChildren(...recent.map((c) => el("li", { dataset: { command: c.id } },
    `${time(c.requested_at)} ${ACTION[c.action] || c.action}`,
    c.targets.length === 1 ? ` ${c.targets[0]}` : `（${c.targets.length} 个目标）`,
    ` · ${c.requested_by}`, c.approval.decided_by ? ` · 审批 ${c.approval.decided_by}` : "",
    ` · ${COMMAND_STATUS[c.status] || c.status}`, c.detail ? `（${c.detail}）` : "")));
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
      bar = el("div", { class: `bar ${alerts.get(d.id) ? "high" : ""}` }, inner);
    } else if (d.kind === "rain_gauge") {
      value = `${fmt(v.rain_rate, 1)} mm/h`;
    } else if (d.kind === "sump_pump") {
      value = v.pump_fault ? "故障" : v.pump_running ? `运行 ${fmt(v.pump_current, 1)} A` : "停止";
    }
    const quality = d.latest && d.latest.quality !== "good"
      ? QUALITY[d.latest.quality] || d.latest.quality : "";
    return el("tr", { dataset: { device: d.id } }, el("td", {}, d.name),
              el("td", { class: "num" }, value), el("td", {}, bar),
              el("td", { class: "q-bad" }, d.online === false ? AVAILABILITY.offline : quality));
  }));
}

function renderEv() {
  const rows = [...state.devices.values()].filter((d) => d.family === "ev_charger");
  $("ev").tBodies[0].replaceChildren(...rows.map((d) => {
    const v = d.latest ? d.latest.values : {};
    return el("tr", { dataset: { device: d.id } }, el("td", {}, d.name),
              el("td", {}, EV_STATUS[v.status] || (d.online === false ? AVAILABILITY.offline : "—")),
              el("td", { class: "num" }, `${fmt(v.power, 1)} kW`),
              el("td", { class: "num" }, `${fmt(v.connector_temperature, 0)} °C`));
  }));
}

// Screens, terminals and PA zones.
function renderDisplays() {
  const rows = [...state.displays.values()];
  $("displays").tBodies[0].replaceChildren(...rows.map((d) => {
    const shown = d.shown || {};
    const delivery = d.delivery ? d.delivery.status : "";
    const actions = el("td", { class: "display-actions" });
    if (can("operator") && d.kind !== "pa_zone") {
      actions.append(
        el("button", { type: "button", onclick: () => setMessage(d) }, "发布"), " ",
        el("button", { type: "button", onclick: () => withdraw(d) }, "撤回"));
    }
    return el("tr", { class: `d-${shown.kind || "normal"}`, dataset: { display: d.id } },
      el("td", {}, d.name),
      el("td", { class: "display-text" }, shown.text || "（无内容）"),
      el("td", { class: `delivery-${delivery}` }, DELIVERY[delivery] || ""),
      actions);
  }));
  const select = $("pa-zone");
  if (!select.options.length) {
    select.append(...rows.filter((d) => d.kind === "pa_zone")
      .map((d) => el("option", { value: d.id }, d.name)));
  }
}

async function setMessage(display) {
  const text = prompt(`在「${display.name}」发布的内容（紧急告警仍会优先显示）`, "");
  if (!text) return;
  try {
    const view = await api("PUT", `/api/displays/${encodeURIComponent(display.id)}/message`, { text });
    state.displays.set(view.id, view);
    mark("displays");
  } catch (error) {
    notice(explain(error), true);
  }
}

async function withdraw(display) {
  try {
    const view = await api("DELETE", `/api/displays/${encodeURIComponent(display.id)}/message`);
    state.displays.set(view.id, view);
    mark("displays");
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

// --- start --------------------------------------------------------------------------

function tick() {
  $("clock").textContent = new Date().toLocaleString("zh-CN", { hour12: false });
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("broadcast-form").addEventListener("submit", broadcast);
  wireCommandButtons();
  tick();
  setInterval(tick, 1000);
  if (state.token) start().catch(() => logout(""));
});
