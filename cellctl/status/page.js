// The status page: one EventSource, the whole state on every message, the DOM rebuilt
// with textContent only (never innerHTML), so nothing a device or config sends is markup.
"use strict";

const token = new URLSearchParams(window.location.search).get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function shown(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number" && !Number.isInteger(value)) return String(Math.round(value * 1000) / 1000);
  return String(value);
}

function when(ms) {
  return ms ? new Date(ms).toLocaleTimeString() : "";
}

function deviceCard(dev) {
  const down = dev.available === false && dev.known;
  const badge = down
    ? el("span", { class: "badge down" }, "down")
    : dev.degraded ? el("span", { class: "badge warn" }, "degraded")
    : dev.available ? el("span", { class: "badge" }, "online")
    : el("span", { class: "badge warn" }, "waiting");
  const card = el("article", {
    class: "device", "data-device": dev.id, "data-available": String(dev.available), "data-degraded": String(Boolean(dev.degraded)),
  }, el("h3", {}, el("span", {}, dev.id), badge));
  card.append(el("div", { class: "label" }, `${dev.driver} · ${dev.profile}`));
  if (down && dev.reason) card.append(el("div", { class: "reason" }, dev.reason));
  if (dev.degraded) card.append(el("div", { class: "reason" }, dev.degraded));
  const m = dev.machine;
  if (m) {
    card.append(el("div", { class: "machine", "data-item-state": m.item_state },
      `${m.item_state} / ${m.operation_mode} / ${m.execution}`, m.raw_state !== null ? ` (raw ${m.raw_state})` : ""));
    if (m.reason) card.append(el("div", { class: "reason" }, m.reason));
    if (m.alarms && m.alarms.length) {
      card.append(el("div", { class: "alarms" }, "alarms: " + m.alarms.map((a) => `${a.code} ${a.text}`).join(", ")));
    }
    if (m.program && (m.program.name || m.program.progress !== null)) {
      const pct = typeof m.program.progress === "number" ? ` ${Math.round(m.program.progress * 100)} %` : "";
      card.append(el("div", { class: "job" }, `job: ${m.program.name || "?"}${pct}`));
    }
    const counters = Object.entries(m.counters || {});
    if (counters.length) card.append(el("div", { class: "machine" }, counters.map(([k, v]) => `${k} ${v}`).join(" · ")));
  }
  if (dev.job) {
    const j = dev.job;
    card.append(el("div", { class: "job" },
      `job ${j.job_id} (${j.state}): ${j.produced} made, ${j.good} good, ${j.scrap} scrap`));
  }
  if (dev.oee) {
    const pct = (x) => (typeof x === "number" ? `${Math.round(x * 100)} %` : "–");
    const o = dev.oee;
    card.append(el("div", { class: "machine oee" },
      `OEE this hour ${pct(o.oee)} · availability ${pct(o.availability)} · performance ${pct(o.performance)} · quality ${pct(o.quality)}`));
  }
  const table = el("table", {});
  for (const p of dev.points) {
    // a point that is bad because the device is: the card says why, once
    const why = p.reason && p.reason !== dev.reason ? `: ${p.reason}` : "";
    table.append(el("tr", { "data-device": dev.id, "data-point": p.id, "data-quality": p.q },
      el("td", {}, p.id),
      el("td", { class: p.q === "good" ? "value" : "value stale" }, shown(p.v)),
      el("td", {}, p.unit || ""),
      el("td", { class: `q-${p.q}`, title: p.reason || "" }, p.q === "good" ? "" : `${p.q}${why}`)));
  }
  card.append(table);
  return card;
}

function render(state) {
  const id = state.cell.identity;
  document.getElementById("cell").textContent = [id.enterprise, id.site, id.area, id.line, id.cell].join(" / ");
  document.getElementById("version").textContent = `cellctl ${state.version}`;
  document.getElementById("broker").textContent = state.broker
    .map((b) => `${b.format} ${b.host} ${b.connected ? "connected" : "NOT CONNECTED"}`).join(", ") || "none";
  const ob = state.outbox;
  document.getElementById("outbox").textContent = ob
    ? `${ob.messages} waiting, ${ob.bytes} bytes, ${ob.dropped_total} dropped` : "?";
  document.getElementById("updated").textContent = when(state.ts);
  document.getElementById("devices").replaceChildren(...state.devices.map(deviceCard));
  document.getElementById("events").replaceChildren(...state.events.map((e) => {
    const { ts, event, ...rest } = e;
    const details = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
    return el("li", {}, `${when(ts)} ${event} ${details}`);
  }));
}

function connect() {
  const link = document.getElementById("link");
  const source = new EventSource(withToken("events"));
  source.onopen = () => { link.textContent = "live"; link.className = "badge"; link.dataset.state = "live"; };
  source.onmessage = (msg) => render(JSON.parse(msg.data));
  source.onerror = () => { link.textContent = "reconnecting"; link.className = "badge down"; link.dataset.state = "lost"; };
}

connect();
