// The CartWise dashboard: a client of the hub's REST API (same origin, session cookie) and of
// its change stream (GET /api/events). Hash routes: #/chains, #/branches, #/branch/{id},
// #/devices, #/history, #/telemetry, #/audit, #/users. Every text from the API is set as
// textContent. What a user may do comes from /api/auth/me (`may`); the API decides anyway.
"use strict";
(function () {
  const t = (key, vars) => window.I18N.t(key, vars);
  const $ = (sel) => document.querySelector(sel);
  const view = () => $("#view");
  // Each post action and the permission it needs.
  const POST_ACTIONS = [["out_of_service", "cart_intent"], ["in_service", "cart_intent"],
    ["unlock", "maintenance_unlock"], ["note", "cart_intent"]];
  const ROLES = ["platform_admin", "chain_admin", "branch_manager", "technician", "viewer"];
  const may = (what) => Boolean(me && me.may && me.may.includes(what));
  const REFRESH_DEBOUNCE_MS = 250;
  const REFRESH_AGAIN_MS = 2500;
  let me = null;
  let stream = null;
  let branchCache = null;

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `HTTP ${status}`);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch("/api" + path, init);
    let json = null;
    try { json = await response.json(); } catch (_) { json = null; }
    if (!response.ok || !json || json.success !== true) {
      if (response.status === 401) showLogin();
      throw new ApiError(response.status, json);
    }
    return json;
  }
  const get = async (path) => (await api("GET", path)).data;

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function table(columns, rows, attrs) {
    if (!rows.length) return h("p", { class: "muted", text: t("empty") });
    return h("table", attrs || {},
      h("thead", {}, h("tr", {}, columns.map(([key]) => h("th", { text: t(key) })))),
      h("tbody", {}, rows.map((row) => h("tr", {}, columns.map(([, cell]) => {
        const value = cell(row);
        return h("td", {}, value === null || value === undefined || value === "" ? t("none") : value);
      })))));
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString(window.I18N.lang === "he" ? "he-IL" : "en-GB") : "");
  const ago = (seconds) => {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 120) return `${seconds}s`;
    if (seconds < 7200) return `${Math.round(seconds / 60)}m`;
    return `${Math.round(seconds / 3600)}h`;
  };
  const state = (status) => h("span", { class: status, "data-status": status, text: t("status." + status) === "status." + status ? status : t("status." + status) });

  function fail(error) {
    view().replaceChildren(h("p", { class: "error", role: "alert", text: t("error", { msg: error.message }) }));
  }

  // ---- session ------------------------------------------------------------------------
  function showLogin() {
    closeStream();
    me = null;
    branchCache = null;
    $("#login").hidden = false;
    $("#nav").hidden = true;
    $("#logout").hidden = true;
    $("#who").textContent = "";
    view().replaceChildren();
  }

  async function login(event) {
    event.preventDefault();
    $("#login-error").textContent = "";
    try {
      await api("POST", "/auth/login", { login: $("#login-name").value, password: $("#login-password").value });
      $("#login-password").value = "";
      await start();
    } catch (error) {
      $("#login-error").textContent = t("login.failed", { msg: error.message });
    }
  }

  async function logout() {
    try { await api("POST", "/auth/logout"); } catch (_) { /* already out */ }
    showLogin();
  }

  async function start() {
    try {
      me = await get("/auth/me");
    } catch (_) {
      showLogin();
      return;
    }
    $("#login").hidden = true;
    $("#nav").hidden = false;
    $("#logout").hidden = false;
    $("#who").textContent = `${me.login} (${me.role})`;
    $("#nav-audit").hidden = !may("read_audit");
    $("#nav-users").hidden = !may("manage_users");
    route();
  }

  // ---- live stream --------------------------------------------------------------------
  function closeStream() {
    if (stream) stream.close();
    stream = null;
    $("#live").dataset.state = "off";
    $("#live").textContent = "";
  }

  function openStream(branchId, onChange) {
    closeStream();
    const source = new EventSource(`/api/events?branch_id=${encodeURIComponent(branchId)}`);
    stream = source;
    let timer = null;
    let again = null;
    const changed = () => {
      clearTimeout(timer);
      clearTimeout(again);
      timer = setTimeout(onChange, REFRESH_DEBOUNCE_MS);
      // Projections may commit just after the document that announced them.
      again = setTimeout(onChange, REFRESH_AGAIN_MS);
    };
    source.addEventListener("ready", () => {
      $("#live").dataset.state = "on";
      $("#live").textContent = t("live.on");
      changed();
    });
    source.addEventListener("change", changed);
    source.addEventListener("lagged", changed);
    source.onerror = () => {
      $("#live").dataset.state = "off";
      $("#live").textContent = t("live.off");
    };
  }

  // ---- pages --------------------------------------------------------------------------
  async function branches() {
    if (!branchCache) branchCache = (await get("/branches?per_page=200"));
    return branchCache;
  }

  async function chainsPage() {
    const chains = await get("/chains?per_page=200");
    view().replaceChildren(h("h1", { text: t("chains.title") }), table([
      ["col.name", (c) => h("a", { href: `#/branches?chain_id=${c.id}`, text: c.name })],
      ["col.slug", (c) => c.slug],
      ["col.active", (c) => t(c.active ? "yes" : "no")],
      ["nav.branches", (c) => c.branch_count],
    ], chains, { id: "chains" }));
  }

  async function branchesPage(params) {
    const chain = params.get("chain_id");
    const list = await get("/branches?per_page=200" + (chain ? `&chain_id=${encodeURIComponent(chain)}` : ""));
    const rows = await Promise.all(list.map(async (b) => {
      const devices = await get(`/branches/${b.id}/devices`).catch(() => []);
      return { b, devices };
    }));
    const lag = (devices) => {
      const lags = devices.map((d) => d.sync_lag_seconds).filter((s) => s !== null && s !== undefined);
      return lags.length ? ago(Math.max(...lags)) : "";
    };
    view().replaceChildren(h("h1", { text: t("branches.title") }), table([
      ["col.name", ({ b }) => h("a", { href: `#/branch/${b.id}`, class: "branch-link", "data-branch": b.id, text: b.name })],
      ["col.code", ({ b }) => b.branch_code],
      ["col.city", ({ b }) => b.city],
      ["col.online", ({ devices }) => h("span", { class: "online", text: devices.filter((d) => d.status === "online").length })],
      ["col.offline", ({ devices }) => h("span", { class: "offline", text: devices.filter((d) => d.status !== "online").length })],
      ["col.heartbeat", ({ devices }) => {
        const seen = devices.map((d) => d.seconds_since_heartbeat).filter((s) => s !== null && s !== undefined);
        return seen.length ? ago(Math.min(...seen)) : "";
      }],
      ["col.lag", ({ devices }) => lag(devices)],
    ], rows, { id: "branches" }));
  }

  function devicesTable(devices) {
    return table([
      ["col.name", (d) => d.device_name],
      ["col.status", (d) => h("span", { class: d.status, text: d.status })],
      ["col.heartbeat", (d) => d.last_heartbeat ? `${when(d.last_heartbeat)} (${ago(d.seconds_since_heartbeat)})` : ""],
      ["col.lastsync", (d) => when(d.last_sync)],
      ["col.lag", (d) => ago(d.sync_lag_seconds)],
      ["col.firmware", (d) => d.firmware_version],
      ["col.pending", (d) => d.pending_intents],
    ], devices, { class: "devices" });
  }

  async function devicesPage() {
    const list = await branches();
    const parts = [h("h1", { text: t("devices.title") })];
    for (const b of list) {
      const devices = await get(`/branches/${b.id}/devices`).catch(() => []);
      parts.push(h("h2", { text: `${b.name} (${b.branch_code})` }), devicesTable(devices));
    }
    view().replaceChildren(...parts);
  }

  function hourBuckets(rentals) {
    const now = Date.now();
    const buckets = Array.from({ length: 24 }, (_, i) => {
      const at = new Date(now - (23 - i) * 3600e3);
      return { label: `${String(at.getHours()).padStart(2, "0")}`, value: 0 };
    });
    for (const r of rentals) {
      const age = Math.floor((now - new Date(r.start_time).getTime()) / 3600e3);
      if (age >= 0 && age < 24) buckets[23 - age].value += 1;
    }
    return buckets;
  }

  async function branchPage(id) {
    const since = new Date(Date.now() - 7 * 86400e3).toISOString();
    const [branch, stats, carts, active, recent, anomalies, intents, devices, rentalStats, settings] = await Promise.all([
      get(`/branches/${id}`), get(`/branches/${id}/stats`), get(`/branches/${id}/carts?per_page=200`),
      get(`/branches/${id}/rentals/active?per_page=200`),
      get(`/branches/${id}/rentals/history?per_page=200&since=${encodeURIComponent(since)}`),
      get(`/branches/${id}/anomalies`), get(`/branches/${id}/intents`), get(`/branches/${id}/devices`),
      get(`/branches/${id}/rentals/stats`), get(`/branches/${id}/settings`),
    ]);
    if (location.hash !== `#/branch/${id}`) return; // navigated away meanwhile
    const latest = new Map();
    for (const intent of intents) {
      if (intent.post !== null && !latest.has(intent.post)) latest.set(intent.post, intent);
    }
    const card = (key, n, cls) => h("div", { class: "card " + (cls || "") }, h("div", { class: "n", text: n }), h("div", { text: t(key) }));
    const online = devices.filter((d) => d.status === "online").length;
    const posts = h("div", { class: "posts", id: "posts" }, carts.map((c) => {
      const intent = latest.get(c.cart_number);
      const actions = POST_ACTIONS.filter(([, need]) => may(need));
      return h("div", { class: "post", "data-post": c.cart_number, "data-status": c.status, "data-locked": c.is_locked },
        h("div", { class: "num", text: `#${c.cart_number}` }),
        h("div", { class: "status", text: t("post." + c.status) === "post." + c.status ? c.status : t("post." + c.status) }),
        h("div", { class: "muted", text: t(c.is_locked ? "post.locked" : "post.unlocked") + (c.assigned_to ? ` · ${c.assigned_to}` : "") }),
        c.maintenance_notes ? h("div", { class: "muted", text: c.maintenance_notes }) : null,
        intent ? h("div", { class: "intent", "data-kind": intent.kind, "data-status": intent.status },
          `${t("act." + intent.kind) === "act." + intent.kind ? intent.kind : t("act." + intent.kind)}: `, state(intent.status),
          intent.outcome_detail ? ` (${intent.outcome_detail})` : "") : null,
        actions.length ? h("div", { class: "acts" }, actions.map(([kind]) =>
          h("button", { type: "button", "data-act": kind, text: t("act." + kind), onclick: () => act(id, c.cart_number, kind) }))) : null);
    }));
    const returns = recent.filter((r) => r.actual_return)
      .sort((a, b) => b.actual_return.localeCompare(a.actual_return)).slice(0, 20);
    const perPost = new Map();
    for (const r of recent) perPost.set(r.cart_number, (perPost.get(r.cart_number) || 0) + 1);
    const rentalsTable = (rows, tableId) => table([
      ["col.cart", (r) => r.cart_number], ["col.phone", (r) => r.user_phone],
      ["col.start", (r) => when(r.start_time)],
      ["col.due", (r) => h("span", { class: r.overdue ? "overdue" : "", text: when(r.expected_return) })],
      ["col.status", (r) => r.status],
    ], rows, { id: tableId });
    view().replaceChildren(
      h("h1", { text: t("branch.title", { name: `${branch.name} (${branch.branch_code})` }) }),
      h("div", { class: "cards" }, card("stat.carts", stats.carts_total), card("stat.active", stats.rentals.active),
        card("stat.overdue", stats.rentals.overdue, stats.rentals.overdue ? "overdue" : ""),
        card("stat.today", stats.rentals.started_today), card("stat.online", `${online}/${devices.length}`)),
      h("h2", { text: t("branch.posts") }), posts,
      h("div", { class: "grid2" },
        h("div", {}, h("h2", { text: t("branch.active") }), rentalsTable(active, "active-rentals")),
        h("div", {}, h("h2", { text: t("branch.overdue") }), rentalsTable(active.filter((r) => r.overdue), "overdue-rentals"))),
      h("div", { class: "grid2" },
        h("div", {}, h("h2", { text: t("branch.returns") }), table([
          ["col.cart", (r) => r.cart_number], ["col.returned", (r) => when(r.actual_return)],
          ["col.duration", (r) => r.duration_minutes], ["col.status", (r) => r.status]], returns, { id: "returns" })),
        h("div", {}, h("h2", { text: t("branch.anomalies") }), table([
          ["col.at", (a) => when(a.at)], ["col.kind", (a) => a.kind], ["col.post", (a) => a.cart_number],
          ["col.detail", (a) => a.detail]], anomalies, { id: "anomalies" }))),
      h("h2", { text: t("branch.charts") }),
      h("div", { class: "grid2" },
        window.Charts.bars(t("chart.per_hour"), hourBuckets(recent)),
        window.Charts.line(t("chart.per_day"), rentalStats.per_day.map((d) => ({ label: d.day.slice(5), value: d.rentals }))),
        window.Charts.bars(t("chart.utilisation"), carts.map((c) => ({ label: `#${c.cart_number}`, value: perPost.get(c.cart_number) || 0 }))),
        window.Charts.bars(t("chart.lag"), devices.map((d) => ({ label: d.device_name, value: d.sync_lag_seconds || 0 })))),
      h("h2", { text: t("branch.settings") }), settingsView(id, settings),
      h("h2", { text: t("branch.devices") }), devicesTable(devices),
      h("h2", { text: t("branch.intents") }), table([
        ["col.at", (i) => when(i.created_at)], ["col.kind", (i) => i.kind], ["col.post", (i) => i.post],
        ["col.device", (i) => i.device_name], ["col.by", (i) => i.created_by],
        ["col.status", (i) => state(i.status)], ["col.outcome", (i) => i.outcome_detail]], intents, { id: "intents" }));
  }

  // A branch's settings as last asked for, each device's intent with its state, and (for
  // those who may) a form that sends any of them to every device of the branch.
  function settingsView(branchId, settings) {
    const shown = (name, value) => {
      if (value === null || value === undefined) return "";
      if (name === "when_sms_unavailable") return t("settings.policy." + value);
      if (name === "language") return t("settings.lang." + value);
      return String(value);
    };
    const rows = ["rental_minutes", "when_sms_unavailable", "language"].map((name) => ({ name, s: settings[name] }));
    const current = table([
      ["settings.setting", (r) => t("settings." + r.name)],
      ["settings.value", (r) => (r.s ? shown(r.name, r.s.value) : "")],
      ["col.by", (r) => (r.s ? r.s.requested_by : "")],
      ["col.at", (r) => (r.s ? when(r.s.requested_at) : "")],
      ["settings.devices", (r) => (r.s ? h("span", {}, r.s.devices.map((d) =>
        h("span", { class: "setting-intent", "data-setting": r.name, "data-device": d.device_id, "data-status": d.status },
          `${d.device_name}: `, state(d.status), d.outcome_detail ? ` (${d.outcome_detail}) ` : " "))) : "")],
    ], rows, { id: "settings" });
    if (!may("branch_settings")) return current;
    const minutes = h("input", { type: "number", name: "rental_minutes", min: 1, max: 10080, placeholder: t("settings.unchanged") });
    const option = (value, label) => h("option", { value, text: label });
    const policy = h("select", { name: "when_sms_unavailable" }, option("", t("settings.unchanged")),
      option("refuse", t("settings.policy.refuse")), option("token", t("settings.policy.token")));
    const lang = h("select", { name: "language" }, option("", t("settings.unchanged")),
      option("he", t("settings.lang.he")), option("en", t("settings.lang.en")));
    const message = h("p", { class: "muted", role: "status" });
    const form = h("form", { class: "filters", id: "settings-form" },
      h("label", {}, t("settings.rental_minutes"), minutes),
      h("label", {}, t("settings.when_sms_unavailable"), policy),
      h("label", {}, t("settings.language"), lang),
      h("button", { type: "submit", class: "primary", text: t("settings.send") }), message);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {};
      if (minutes.value) body.rental_minutes = Number(minutes.value);
      if (policy.value) body.when_sms_unavailable = policy.value;
      if (lang.value) body.language = lang.value;
      if (!Object.keys(body).length) { message.textContent = t("settings.nothing"); return; }
      try {
        const sent = await api("PUT", `/branches/${branchId}/settings`, body);
        message.textContent = t("settings.sent", { n: sent.data.length });
        await branchPage(branchId);
      } catch (error) {
        message.textContent = t("act.failed", { msg: error.message });
      }
    });
    return h("div", {}, current, form);
  }

  async function act(branchId, post, kind) {
    const body = { kind, post };
    if (kind === "unlock" && !window.confirm(t("act.unlock_confirm", { post }))) return;
    if (kind === "note") {
      const text = window.prompt(t("act.note_prompt", { post }));
      if (!text) return;
      body.text = text;
    }
    try {
      await api("POST", `/branches/${branchId}/intents`, body);
      await branchPage(branchId);
    } catch (error) {
      window.alert(t("act.failed", { msg: error.message }));
    }
  }

  function branchSelect(list, selected) {
    return h("select", { name: "branch" }, list.map((b) => h("option", { value: b.id, selected: b.id === selected, text: `${b.name} (${b.branch_code})` })));
  }

  function pager(pagination, go) {
    if (!pagination || pagination.total_pages <= 1) return null;
    return h("p", {},
      h("button", { type: "button", disabled: pagination.page <= 1, text: t("prev"), onclick: () => go(pagination.page - 1) }), " ",
      t("page", { page: pagination.page, pages: pagination.total_pages }), " ",
      h("button", { type: "button", disabled: pagination.page >= pagination.total_pages, text: t("next"), onclick: () => go(pagination.page + 1) }));
  }

  function dateParam(value) { return value ? new Date(value).toISOString() : ""; }

  async function historyPage() {
    const list = await branches();
    if (!list.length) { view().replaceChildren(h("p", { text: t("empty") })); return; }
    const form = h("form", { class: "filters" },
      h("label", {}, t("filter.branch"), branchSelect(list, list[0].id)),
      h("label", {}, t("filter.since"), h("input", { type: "date", name: "since" })),
      h("label", {}, t("filter.until"), h("input", { type: "date", name: "until" })),
      h("label", {}, t("filter.status"), h("select", { name: "status" }, ["", "unlocking", "active", "returned", "returned_late", "cancelled"].map((s) => h("option", { value: s, text: s || "*" })))),
      h("label", {}, t("filter.cart"), h("input", { type: "number", name: "cart", min: 1 })),
      me && me.pii ? h("label", {}, t("filter.phone"), h("input", { name: "phone" })) : null,
      h("button", { type: "submit", class: "primary", text: t("filter.apply") }));
    const out = h("div", {});
    const load = async (page) => {
      const f = new FormData(form);
      const q = new URLSearchParams({ page: String(page), per_page: "50" });
      if (f.get("since")) q.set("since", dateParam(f.get("since")));
      if (f.get("until")) q.set("until", dateParam(f.get("until")));
      if (f.get("status")) q.set("status", f.get("status"));
      if (f.get("cart")) q.set("cart_number", f.get("cart"));
      if (f.get("phone")) q.set("phone", f.get("phone"));
      try {
        const answer = await api("GET", `/branches/${f.get("branch")}/rentals/history?${q}`);
        out.replaceChildren(table([
          ["col.cart", (r) => r.cart_number], ["col.phone", (r) => r.user_phone],
          ["col.start", (r) => when(r.start_time)], ["col.due", (r) => when(r.expected_return)],
          ["col.returned", (r) => when(r.actual_return)], ["col.duration", (r) => r.duration_minutes],
          ["col.status", (r) => r.status]], answer.data, { id: "history" }), pager(answer.pagination, load));
      } catch (error) {
        out.replaceChildren(h("p", { class: "error", text: t("error", { msg: error.message }) }));
      }
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); load(1); });
    view().replaceChildren(h("h1", { text: t("history.title") }), form, out);
    await load(1);
  }

  async function telemetryPage() {
    const list = await branches();
    if (!list.length) { view().replaceChildren(h("p", { text: t("empty") })); return; }
    const form = h("form", { class: "filters" },
      h("label", {}, t("filter.branch"), branchSelect(list, list[0].id)),
      h("label", {}, t("filter.type"), h("input", { name: "event_type" })),
      h("button", { type: "submit", class: "primary", text: t("filter.apply") }));
    const out = h("div", {});
    const load = async (page) => {
      const f = new FormData(form);
      const q = new URLSearchParams({ page: String(page), per_page: "100" });
      if (f.get("event_type")) q.set("event_type", f.get("event_type"));
      try {
        const answer = await api("GET", `/telemetry/branches/${f.get("branch")}?${q}`);
        const perHour = hourBuckets(answer.data.map((e) => ({ start_time: e.timestamp })));
        out.replaceChildren(window.Charts.bars(t("telemetry.title"), perHour), table([
          ["col.at", (e) => when(e.timestamp)], ["col.event", (e) => e.event_type],
          ["col.device", (e) => e.device_id],
          ["col.data", (e) => h("pre", { text: JSON.stringify(e.event_data) })]], answer.data, { id: "telemetry" }),
        pager(answer.pagination, load));
      } catch (error) {
        out.replaceChildren(h("p", { class: "error", text: t("error", { msg: error.message }) }));
      }
    };
    form.addEventListener("submit", (e) => { e.preventDefault(); load(1); });
    view().replaceChildren(h("h1", { text: t("telemetry.title") }), form, out);
    await load(1);
  }

  async function auditPage() {
    const out = h("div", {});
    const load = async (page) => {
      const answer = await api("GET", `/audit?per_page=100&page=${page}`);
      out.replaceChildren(table([
        ["col.at", (a) => when(a.at)], ["col.actor", (a) => `${a.actor_kind}:${a.actor_id}`],
        ["col.action", (a) => a.action], ["col.target", (a) => a.target],
        ["col.detail", (a) => h("pre", { text: a.detail ? JSON.stringify(a.detail) : "" })]], answer.data, { id: "audit" }),
      pager(answer.pagination, load));
    };
    view().replaceChildren(h("h1", { text: t("audit.title") }), out);
    await load(1);
  }

  // Users (platform admins: all; chain admins: their chain's): create, change role, scope or
  // password, disable (which ends the user's sessions at once), enable again.
  async function usersPage() {
    const [list, branchList, chains] = await Promise.all([
      get("/users?per_page=200"), branches(), get("/chains?per_page=200")]);
    const message = h("p", { class: "muted", role: "status" });
    const ids = (text) => text.split(/[\s,]+/).filter(Boolean);
    const send = async (method, path, body) => {
      try {
        await api(method, path, body);
        await usersPage();
      } catch (error) {
        message.textContent = t("act.failed", { msg: error.message });
      }
    };
    const roleSelect = (selected) => h("select", { name: "role" }, ROLES
      .filter((r) => r !== "platform_admin" || me.role === "platform_admin")
      .map((r) => h("option", { value: r, selected: r === selected, text: t("role." + r) })));
    const chainSelect = h("select", { name: "chain_id" }, h("option", { value: "", text: t("none") }),
      chains.map((c) => h("option", { value: c.id, text: c.name })));
    const branchNames = new Map(branchList.map((b) => [b.id, `${b.name} (${b.branch_code})`]));
    const create = h("form", { class: "filters", id: "user-form" },
      h("label", {}, t("login.name"), h("input", { name: "login", required: true, autocomplete: "off" })),
      h("label", {}, t("login.password"), h("input", { name: "password", type: "password", required: true, minlength: 10, autocomplete: "new-password" })),
      h("label", {}, t("users.role"), roleSelect("viewer")),
      h("label", {}, t("users.chain"), chainSelect),
      h("label", {}, t("users.branches"), h("select", { name: "branch_ids", multiple: true },
        branchList.map((b) => h("option", { value: b.id, text: branchNames.get(b.id) })))),
      h("button", { type: "submit", class: "primary", text: t("users.create") }));
    create.addEventListener("submit", (event) => {
      event.preventDefault();
      const f = new FormData(create);
      const body = { login: f.get("login"), password: f.get("password"), role: f.get("role"),
        branch_ids: f.getAll("branch_ids") };
      if (f.get("chain_id")) body.chain_id = f.get("chain_id");
      send("POST", "/users", body);
    });
    const rows = table([
      ["login.name", (u) => u.login],
      ["users.role", (u) => {
        const select = roleSelect(u.role);
        select.addEventListener("change", () => send("PUT", `/users/${u.id}`, { role: select.value }));
        return u.id === me.user_id ? t("role." + u.role) : select;
      }],
      ["users.chain", (u) => (chains.find((c) => c.id === u.chain_id) || {}).name || ""],
      ["users.branches", (u) => u.branch_ids.map((b) => branchNames.get(b) || b).join(", ")],
      ["col.active", (u) => h("span", { "data-active": String(u.active), text: t(u.active ? "yes" : "no") })],
      ["users.actions", (u) => u.id === me.user_id ? "" : h("span", { class: "acts" },
        u.active
          ? h("button", { type: "button", "data-user-act": "disable", text: t("users.disable"), onclick: () => {
            if (window.confirm(t("users.disable_confirm", { login: u.login }))) send("DELETE", `/users/${u.id}`);
          } })
          : h("button", { type: "button", "data-user-act": "enable", text: t("users.enable"), onclick: () => send("PUT", `/users/${u.id}`, { active: true }) }),
        " ",
        h("button", { type: "button", "data-user-act": "password", text: t("users.password"), onclick: () => {
          const password = window.prompt(t("users.password_prompt", { login: u.login }));
          if (password) send("PUT", `/users/${u.id}`, { password });
        } }),
        " ",
        h("button", { type: "button", "data-user-act": "branches", text: t("users.set_branches"), onclick: () => {
          const text = window.prompt(t("users.branches_prompt", { login: u.login }), u.branch_ids.join(", "));
          if (text !== null) send("PUT", `/users/${u.id}`, { branch_ids: ids(text) });
        } }))],
    ], list, { id: "users" });
    view().replaceChildren(h("h1", { text: t("users.title") }), rows, h("h2", { text: t("users.new") }), create, message);
  }

  // ---- routing and language -----------------------------------------------------------
  async function route() {
    if (!me) return;
    closeStream();
    const hash = location.hash || "#/branches";
    const [path, query] = hash.slice(1).split("?");
    const params = new URLSearchParams(query || "");
    for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", hash.startsWith(a.getAttribute("href")));
    try {
      const branchMatch = path.match(/^\/branch\/([0-9a-f-]{36})$/);
      if (branchMatch) {
        const id = branchMatch[1];
        await branchPage(id);
        openStream(id, () => branchPage(id).catch(fail));
      } else if (path === "/chains") await chainsPage();
      else if (path === "/devices") await devicesPage();
      else if (path === "/history") await historyPage();
      else if (path === "/telemetry") await telemetryPage();
      else if (path === "/audit") await auditPage();
      else if (path === "/users") await usersPage();
      else await branchesPage(params);
    } catch (error) {
      fail(error);
    }
  }

  function translateStatic() {
    for (const node of document.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    $("#lang").textContent = window.I18N.lang === "he" ? "English" : "עברית";
  }

  window.addEventListener("DOMContentLoaded", () => {
    window.I18N.set(window.I18N.lang);
    translateStatic();
    $("#login").addEventListener("submit", login);
    $("#logout").addEventListener("click", logout);
    $("#lang").addEventListener("click", () => {
      window.I18N.set(window.I18N.lang === "he" ? "en" : "he");
      translateStatic();
      route();
    });
    window.addEventListener("hashchange", route);
    start();
  });
})();
