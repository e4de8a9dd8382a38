// The duty page: who is on duty, the roster, the notifications sent, the work orders with
// their timeline. Plain JavaScript; the login is the control-room page's (its token in
// sessionStorage, same origin). Server text goes in with textContent, never as HTML; the
// Chinese words come from GET /api/duty/labels (facility/labels.py), no copy here.
"use strict";

const token = sessionStorage.getItem("token") || "";
let L = {};

async function api(path, options = {}) {
  const headers = { "Authorization": `Bearer ${token}`, "Content-Type": "application/json" };
  const reply = await fetch(path, { ...options, headers });
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) throw new Error(body.detail || `HTTP ${reply.status}`);
  return body;
}

function word(table, key) {
  return (L[table] && L[table][key]) || key;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function time(value) {
  const date = typeof value === "number" ? new Date(value) : new Date(value);
  return date.toLocaleString("zh-CN", { hour12: false });
}

function say(text) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.hidden = !text;
}

async function showNow() {
  const teams = await api("/api/duty/now");
  document.getElementById("now").replaceChildren(...teams.map(
    (t) => row([t.name, t.people.map((p) => p.name).join("、") || "—"])));
}

async function showShifts() {
  const since = new Date().toISOString();
  const until = new Date(Date.now() + 48 * 3600e3).toISOString();
  const shifts = await api(`/api/duty/shifts?since=${encodeURIComponent(since)}` +
                           `&until=${encodeURIComponent(until)}`);
  document.getElementById("shifts").replaceChildren(...shifts.map(
    (s) => row([time(s.start), time(s.end), word("teams", s.team), s.name])));
}

async function showNotices() {
  const notices = await api("/api/duty/notifications?limit=100");
  document.getElementById("notices").replaceChildren(...notices.map((n) => row([
    time(n.ts_ns / 1e6), n.name, word("event", n.event),
    n.channel ? word("channel", n.channel) : "未送达", n.title])));
}

function actions(order) {
  const box = document.createElement("span");
  const add = (text, action, ask) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = text;
    button.addEventListener("click", async () => {
      const body = {};
      if (ask) {
        const answer = window.prompt(ask);
        if (!answer) return;
        body.assignee = answer;
      }
      try {
        await api(`/api/workorders/${encodeURIComponent(order.id)}/${action}`,
                  { method: "POST", body: JSON.stringify(body) });
        say("");
      } catch (error) {
        say(error.message); // the refusal's reason, in Chinese, from the duty service
      }
      await showOrders();
    });
    box.append(button);
  };
  if (order.state === "open") add("派单", "assign", "维修人员编号");
  if (order.state === "assigned") add("开始维修", "start");
  if (order.state === "in_progress") add("已修复", "resolve");
  return box;
}

async function showOrders() {
  const orders = await api("/api/workorders?open=false");
  const rows = [];
  for (const o of orders.reverse()) {
    rows.push(row([o.number ? `${o.id}（12345：${o.number}）` : o.id,
                   word("workorder_state", o.state), word("priority", String(o.priority)),
                   `${o.place} ${o.device} ${o.fault}`, o.assignee || "—", actions(o)]));
    const steps = o.timeline.map(
      (t) => `${time(t.ts * 1000)} ${word("workorder_state", t.action)} ${t.by} ${t.detail}`);
    const line = row(["", "", "", steps.join("；"), "", ""]);
    line.className = "timeline";
    rows.push(line);
  }
  document.getElementById("orders").replaceChildren(...rows);
}

async function start() {
  if (!token) {
    say("请先在监控中心页面登录");
    return;
  }
  try {
    L = await api("/api/duty/labels");
    const teams = await api("/api/duty/now");
    L.teams = Object.fromEntries(teams.map((t) => [t.team, t.name]));
    await Promise.all([showNow(), showShifts(), showNotices(), showOrders()]);
  } catch (error) {
    say(error.message);
  }
  setInterval(() => { showNow(); showNotices(); showOrders(); }, 30000);
}

start();
