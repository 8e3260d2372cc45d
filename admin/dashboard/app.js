// The dashboard: hash routes (#/, #/link/ID, #/campaign/NAME, #/report/NAME), each page
// built from the JSON API and kept current by the live stream. Every number shown is a
// field of an API answer, shown as the API gives it.

import * as api from "./api.js";
import { lineChart, sparkline } from "./chart.js";

const main = document.getElementById("main");
const liveState = document.getElementById("live-state");
let page = null; // {abort: AbortController, onLive(snapshot)}

// --- small DOM helpers (text through textContent only) ---------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const num = (v) => (v === null || v === undefined ? "–" : String(v));
const enc = encodeURIComponent;

function notice(text, kind = "info") {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = `notice ${kind}`;
  box.hidden = false;
}

function fail(err) {
  if (err instanceof api.ApiError && err.status === 401) {
    api.setToken(null);
    location.hash = "#/login";
    return;
  }
  notice(err.message + (err.field ? ` (${err.field})` : ""), "error");
}

// A change: call the API, then say when the edge serves it (the API answers once every
// edge worker serves the new links revision, so the answer's arrival is that moment).
async function change(what, method, path, body) {
  const started = performance.now();
  try {
    const result = await api.call(method, path, body);
    const ms = Math.round(performance.now() - started);
    notice(`${what}: saved and served by the edge ${ms} ms after you asked.`, "ok");
    return result;
  } catch (err) {
    fail(err);
    return null;
  }
}

// --- login -------------------------------------------------------------------------------

function loginPage() {
  const input = h("input", {
    id: "token",
    type: "password",
    autocomplete: "current-password",
    required: true,
    "aria-label": "Admin token",
  });
  const form = h(
    "form",
    { id: "login", class: "card" },
    h("h2", { text: "Log in" }),
    h("p", { text: "Paste an admin token (printed by the first `linkedge serve`, or made with `linkedge token create`). It is kept in this tab only." }),
    h("label", { for: "token", text: "Admin token" }),
    input,
    h("button", { type: "submit", text: "Log in" }),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    api.setToken(input.value.trim());
    try {
      await api.get("/api/tokens");
      location.hash = "#/";
    } catch (err) {
      api.setToken(null);
      notice(err.status === 401 ? "That token is not valid." : err.message, "error");
    }
  });
  main.replaceChildren(form);
  input.focus();
}

// --- overview ---------------------------------------------------------------------------

async function alertsPanel(container) {
  // The alerts work may not be on this server: ask only when the route exists.
  try {
    if (!(await api.hasRoute("GET", "/api/alerts"))) {
      container.hidden = true;
      return;
    }
    const data = await api.get("/api/alerts");
    const list = (data.alerts || []).filter((a) => a.state === "firing");
    container.hidden = false;
    container.replaceChildren(
      h("h2", { text: "Firing alerts" }),
      list.length
        ? h("ul", {}, list.map((a) => h("li", { class: "firing", text: `${a.name}: ${a.kind}` })))
        : h("p", { text: "Nothing is firing." }),
    );
  } catch (err) {
    container.hidden = true;
  }
}

function createForm(onCreated) {
  const fields = ["url", "slug", "domain", "campaign", "utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term"];
  const inputs = {};
  const form = h("form", { id: "create", class: "card" }, h("h2", { text: "New link" }));
  const grid = h("div", { class: "grid" });
  for (const name of fields) {
    const id = `new-${name}`;
    inputs[name] = h("input", { id, name, type: name === "url" ? "url" : "text", required: name === "url" });
    grid.append(h("div", {}, h("label", { for: id, text: name.replace("_", " ") }), inputs[name]));
  }
  const out = h("div", { id: "created", class: "created" });
  form.append(grid, h("button", { type: "submit", text: "Create link" }), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = {};
    for (const [name, input] of Object.entries(inputs)) if (input.value.trim()) body[name] = input.value.trim();
    const link = await change("Link created", "POST", "/api/links", body);
    if (!link) return;
    const copy = h("button", { type: "button", class: "copy", text: "Copy" });
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(link.short_url);
        copy.textContent = "Copied";
      } catch (err) {
        copy.textContent = "Select and copy";
      }
    });
    out.replaceChildren(
      h("a", { href: `#/link/${link.id}`, id: "created-url", text: link.short_url }),
      " ",
      copy,
    );
    onCreated && onCreated();
  });
  return form;
}

function headRow(cols) {
  // a column whose name starts with "#" holds numbers (right-aligned)
  return h("thead", {}, h("tr", {}, cols.map((t) => h("th", { scope: "col", class: t.startsWith("#") ? "n" : null, text: t.replace(/^#/, "") }))));
}

async function overviewPage(signal) {
  const totals = h("div", { id: "totals", class: "tiles" });
  const alerts = h("section", { id: "alerts", class: "card", hidden: true });
  const links = h("tbody", { id: "links-body" });
  const campaigns = h("tbody", { id: "campaigns-body" });
  const recent = h("tbody", { id: "recent-body" });
  main.replaceChildren(
    h("h1", { text: "Overview" }),
    totals,
    alerts,
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Links with clicks in the last 60 minutes" }),
      h("div", { class: "scroll" }, h("table", { id: "links" }, headRow(["Link", "Clicks / min", "#Clicks", "#Humans", "#Bots", "Velocity", "#Conversions"]), links)),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Campaigns with clicks in the last 60 minutes" }),
      h("div", { class: "scroll" }, h("table", { id: "campaigns" }, headRow(["Campaign", "Clicks / min", "#Links", "#Clicks", "#Humans", "#Bots", "Velocity", "#Conversions"]), campaigns)),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Newest links" }),
      h("div", { class: "scroll" }, h("table", { id: "recent" }, headRow(["Link", "Destination", "Campaign", "State"]), recent)),
    ),
    createForm(() => refresh()),
  );
  alertsPanel(alerts);

  const none = (n) => h("tr", {}, h("td", { colspan: String(n), class: "muted", text: "No clicks in the last 60 minutes." }));
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const [perLink, perCampaign, newest] = await Promise.all([
        api.get("/api/stats?group_by=link&from=-60m&interval=minute&limit=100"),
        api.get("/api/stats?group_by=campaign&from=-60m&interval=minute&limit=100"),
        api.get("/api/links?limit=10"),
      ]);
      if (signal.aborted) return;
      const rows = perLink.groups.map((g) =>
        h(
          "tr",
          { "data-link": g.key },
          h("td", {}, h("a", { href: `#/link/${g.key}`, text: g.domain ? `${g.domain}/${g.slug}` : `link ${g.key}` })),
          h("td", {}, sparkline(g.series.map((p) => p.clicks), { label: `clicks per minute of ${g.slug || g.key}` })),
          h("td", { class: "n clicks", text: num(g.clicks) }),
          h("td", { class: "n humans", text: num(g.humans) }),
          h("td", { class: "n bots", text: num(g.bots) }),
          h("td", { class: `velocity ${g.velocity.label}`, text: g.velocity.label }),
          h("td", { class: "n", text: num(g.conversions) }),
        ),
      );
      links.replaceChildren(...(rows.length ? rows : [none(7)]));
      const groups = perCampaign.groups.filter((g) => g.key !== "");
      const crows = groups.map((g) =>
        h(
          "tr",
          { "data-campaign": g.key },
          h("td", {}, h("a", { href: `#/campaign/${enc(g.key)}`, text: g.key })),
          h("td", {}, sparkline(g.series.map((p) => p.clicks), { label: `clicks per minute of ${g.key}` })),
          h("td", { class: "n", text: num(g.links) }),
          h("td", { class: "n clicks", text: num(g.clicks) }),
          h("td", { class: "n humans", text: num(g.humans) }),
          h("td", { class: "n bots", text: num(g.bots) }),
          h("td", { class: `velocity ${g.velocity.label}`, text: g.velocity.label }),
          h("td", { class: "n", text: num(g.conversions) }),
        ),
      );
      campaigns.replaceChildren(...(crows.length ? crows : [none(8)]));
      recent.replaceChildren(
        ...newest.links.map((l) =>
          h(
            "tr",
            { "data-link": l.id },
            h("td", {}, h("a", { href: `#/link/${l.id}`, text: `${l.domain}/${l.slug}` })),
            h("td", { class: "url", text: l.url }),
            h("td", {}, l.campaign ? h("a", { href: `#/campaign/${enc(l.campaign)}`, text: l.campaign }) : "–"),
            h("td", { text: l.disabled ? "paused" : "active" }),
          ),
        ),
      );
    } catch (err) {
      if (!signal.aborted) fail(err);
    } finally {
      busy = false;
      if (again) {
        again = false;
        refresh();
      }
    }
  }
  await refresh();
  let lastTotal = null;
  return {
    onLive(snapshot) {
      const o = snapshot.overall;
      totals.replaceChildren(
        tile("Clicks, last 60 s", o.windows["60s"].clicks, "live-60s"),
        tile("Clicks, last 60 min", o.windows["60m"].clicks, "live-60m"),
        tile("Humans, last 60 min", o.windows["60m"].humans, "live-humans"),
        tile("Velocity", o.velocity.label, "live-velocity"),
      );
      if (lastTotal !== null && o.since_start.clicks !== lastTotal) refresh();
      lastTotal = o.since_start.clicks;
    },
  };
}

function tile(label, value, id) {
  return h("div", { class: "tile" }, h("div", { class: "tile-v", id, text: num(value) }), h("div", { class: "tile-l", text: label }));
}

// --- link view --------------------------------------------------------------------------

function markersOf(changes) {
  return changes.map((c) => ({ t: c.ts_ms, label: `${c.at} ${c.kind}: ${short(c.from)} → ${short(c.to)}` }));
}

function short(v) {
  const text = v === null || v === undefined ? "∅" : typeof v === "object" ? JSON.stringify(v) : String(v);
  return text.length > 60 ? text.slice(0, 57) + "…" : text;
}

function breakdown(title, rows) {
  return h(
    "div",
    { class: "breakdown" },
    h("h3", { text: title }),
    h("ul", {}, (rows || []).map((r) => h("li", {}, h("span", { text: r.value === null ? "unknown" : r.value }), h("span", { class: "n", text: r.clicks })))),
  );
}

async function linkPage(id, signal) {
  const link = await api.get(`/api/links/${id}`);
  const head = h("div", { class: "card" });
  const chart60 = h("div", { id: "chart-60m", class: "chart-box" });
  const chart24 = h("div", { id: "chart-24h", class: "chart-box" });
  const numbers = h("div", { id: "link-numbers", class: "tiles" });
  const base = h("p", { id: "baseline", class: "baseline" });
  const firstHour = h("section", { id: "first-hour", class: "card", hidden: true });
  const conversions = h("section", { id: "conversions", class: "card", hidden: true });
  const breakdowns = h("div", { class: "breakdowns" });
  const variants = h("section", { id: "variants", class: "card" });
  const historyList = h("ol", { id: "history", class: "history" });
  const alerts = h("section", { id: "alerts", class: "card", hidden: true });

  function renderHead(l) {
    const dest = h("input", { id: "dest", type: "url", value: l.url, required: true, "aria-label": "Destination URL" });
    const form = h("form", { id: "dest-form", class: "inline" }, h("label", { for: "dest", text: "Destination" }), dest, h("button", { type: "submit", text: "Change destination" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const updated = await change("Destination changed", "PATCH", `/api/links/${l.id}`, { url: dest.value.trim() });
      if (updated) reload(updated);
    });
    const pause = h("button", { id: "pause", type: "button", text: l.disabled ? "Resume" : "Pause" });
    pause.addEventListener("click", async () => {
      const updated = await change(l.disabled ? "Resumed" : "Paused", "PATCH", `/api/links/${l.id}`, { disabled: !l.disabled });
      if (updated) reload(updated);
    });
    const launch = h("button", { id: "launch", type: "button", text: "Launch", hidden: true });
    api.hasRoute("POST", "/api/links/{id}/launch").then((ok) => {
      launch.hidden = !ok;
    }, () => {});
    launch.addEventListener("click", async () => {
      const updated = await change("Launched", "POST", `/api/links/${l.id}/launch`, {});
      if (updated) reload();
    });
    head.replaceChildren(
      h("h1", {}, `${l.domain}/${l.slug} `, l.disabled ? h("span", { class: "tag", text: "paused" }) : null),
      h("p", {}, h("span", { id: "short-url", text: l.short_url }), " → ", h("span", { id: "current-url", text: l.url })),
      l.campaign ? h("p", {}, "Campaign ", h("a", { href: `#/campaign/${enc(l.campaign)}`, text: l.campaign })) : null,
      form,
      h("div", { class: "actions" }, pause, launch),
    );
  }

  function renderVariants(l, stats) {
    const list = l.variants || [];
    if (!list.length) {
      variants.replaceChildren(h("h2", { text: "Variants" }), h("p", { text: "No variants." }));
      return;
    }
    const inputs = list.map((v, i) => h("input", { id: `weight-${i}`, type: "number", min: "0.001", step: "any", value: v.weight, "aria-label": `weight of ${v.name}` }));
    const perVariant = (stats && stats.variants) || [];
    const form = h(
      "form",
      { id: "weights" },
      h("table", {}, h("thead", {}, h("tr", {}, ["Variant", "URL", "Weight", "Clicks", "Conversions", "Rate (interval)"].map((t) => h("th", { text: t })))),
        h("tbody", {}, list.map((v, i) => {
          const s = perVariant.find((p) => p.name === v.name || p.variant === v.name) || {};
          const interval = s.interval ? ` (${s.interval.join("–")})` : "";
          return h("tr", {}, h("td", { text: v.name }), h("td", { text: v.url }), h("td", {}, inputs[i]), h("td", { class: "n", text: num(s.clicks) }), h("td", { class: "n", text: num(s.conversions) }), h("td", { text: s.rate === undefined ? "–" : `${s.rate}${interval}` }));
        }))),
      h("button", { type: "submit", text: "Save weights" }),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const next = list.map((v, i) => ({ ...v, weight: Number(inputs[i].value) }));
      const updated = await change("Weights changed", "PATCH", `/api/links/${l.id}`, { variants: next });
      if (updated) reload(updated);
    });
    const winner = stats && stats.winner ? h("p", { text: `Winner rule: ${JSON.stringify(stats.winner)}` }) : null;
    variants.replaceChildren(h("h2", { text: "Variants" }), form, winner);
  }

  main.replaceChildren(
    head,
    numbers,
    base,
    alerts,
    h("section", { class: "card" }, h("h2", { text: "Clicks per minute, last 60 minutes" }), chart60),
    h("section", { class: "card" }, h("h2", { text: "Clicks per hour, last 24 hours" }), chart24),
    firstHour,
    h("section", { class: "card" }, h("h2", { text: "Breakdowns (60 minutes)" }), breakdowns),
    variants,
    conversions,
    h("section", { class: "card" }, h("h2", { text: "Change history" }), historyList),
  );
  alertsPanel(alerts);

  let current = link;
  let busy = false;
  let again = false;
  async function reload(updated) {
    if (updated) {
      current = updated;
      renderHead(current);
    }
    if (busy) {
      again = true; // asked while reading: read once more after this one
      return;
    }
    busy = true;
    try {
      const [s60, s24, hist] = await Promise.all([
        api.get(`/api/links/${id}/stats?from=-60m&interval=minute&top=5`),
        api.get(`/api/links/${id}/stats?from=-24h&interval=hour&top=1`),
        api.get(`/api/links/${id}/history?limit=50`),
      ]);
      if (signal.aborted) return;
      const markers = markersOf(hist.changes);
      chart60.replaceChildren(lineChart(s60.series.map((p) => ({ t: p.t, v: p.clicks })), { markers, label: "clicks per minute" }));
      chart24.replaceChildren(lineChart(s24.series.map((p) => ({ t: p.t, v: p.clicks })), { markers, label: "clicks per hour" }));
      numbers.replaceChildren(
        tile("Clicks, 60 min", s60.totals.clicks, "link-clicks-60m"),
        tile("Humans, 60 min", s60.totals.humans, "link-humans-60m"),
        tile("Bots, 60 min", s60.totals.bots, "link-bots-60m"),
        tile("Clicks, 24 h", s24.totals.clicks, "link-clicks-24h"),
        tile("Velocity", s60.velocity.label, "link-velocity"),
        tile("Conversions, 24 h", s24.totals.conversions, "link-conversions"),
      );
      const t = s60.top || {};
      breakdowns.replaceChildren(breakdown("Sources", t.sources), breakdown("Countries", t.countries), breakdown("Devices", t.device_types), breakdown("Browsers", t.browsers));
      historyList.replaceChildren(
        ...hist.changes.map((c) =>
          h("li", {}, h("time", { datetime: c.at, text: c.at }), ` ${c.kind}: ${short(c.from)} → ${short(c.to)} `, h("span", { class: "who", text: c.who.token ? `by ${c.who.token.name}` : `via ${c.who.via}` })),
        ),
      );
      renderVariants(current, s24);
      const b = await api.get(`/api/links/${id}/baseline`);
      const fh = b.first_hour || {};
      base.textContent = `First hour vs campaign: ${(fh.campaign || {}).text || "–"}. vs source: ${(fh.utm_source || {}).text || "–"}. Last hour vs hour of week: ${b.hour_of_week.text}.`;
      renderFirstHour(b);
      renderConversions(s24);
    } catch (err) {
      if (!signal.aborted) fail(err);
    } finally {
      busy = false;
      if (again && !signal.aborted) {
        again = false;
        reload();
      }
    }
  }
  function renderFirstHour(b) {
    const fh = b.first_hour || {};
    const peer = [fh.campaign, fh.utm_source].find((x) => x && x.enough && x.curve && x.curve.length);
    if (!peer || !b.own_curve.length) {
      firstHour.hidden = true;
      return;
    }
    const start = +new Date(b.first_click_at);
    const at = (i) => start + i * 60000;
    // the baseline spans the whole hour; this link's line stops where it is now
    const series = peer.curve.map((p, i) => ({ t: at(i), v: i < b.own_curve.length ? b.own_curve[i] : null }));
    firstHour.hidden = false;
    firstHour.replaceChildren(
      h("h2", { text: "First hour: human clicks so far against earlier links" }),
      h("p", { text: peer.text }),
      h("div", { class: "chart-box" }, lineChart(series, {
        band: peer.curve.map((p) => ({ lo: p.p25, hi: p.p75 })),
        median: peer.curve.map((p) => p.median),
        label: "first hour against the baseline",
      })),
      h("p", { class: "baseline", text: "Band: the middle half (p25–p75) of earlier links; dashed: their median." }),
    );
  }

  function renderConversions(s) {
    const conv = s.conversions;
    if (!conv || typeof conv !== "object") {
      conversions.hidden = true;
      return;
    }
    conversions.hidden = false;
    const lag = conv.lag_histogram || conv.lag || [];
    const rows = Array.isArray(lag) ? lag : [];
    conversions.replaceChildren(
      h("h2", { text: "Conversions" }),
      h("p", { text: `Conversions: ${num(conv.total ?? conv.count)}, rate ${num(conv.rate)}, revenue ${num(conv.revenue ?? conv.value)}` }),
      rows.length
        ? h("div", {}, h("h3", { text: "Lag from click to conversion" }), sparkline(rows.map((r) => r.count ?? r.conversions ?? 0), { width: 240, height: 40, label: "lag histogram" }),
            h("ul", { class: "lag" }, rows.map((r) => h("li", { text: `${r.label ?? r.le ?? r.bucket ?? ""}: ${r.count ?? r.conversions ?? 0}` }))))
        : null,
    );
  }

  renderHead(link);
  await reload();
  let seen = null;
  let followUp = null;
  return {
    onLive(snapshot) {
      const mine = snapshot.links.find((l) => l.id === link.id);
      const key = mine ? mine.windows["60m"].clicks + "/" + mine.windows["60s"].clicks : "0";
      if (seen !== null && key !== seen) {
        reload();
        // baselines read the rollups, which follow the clicks by about a second: once more
        clearTimeout(followUp);
        followUp = setTimeout(() => signal.aborted || reload(), 2500);
      }
      seen = key;
    },
  };
}

// --- campaign view ----------------------------------------------------------------------

async function campaignPage(name, signal) {
  const q = `campaign=${enc(name)}`;
  const wrap = h("div");
  main.replaceChildren(h("h1", {}, `Campaign ${name} `, h("a", { href: `#/report/${enc(name)}`, class: "small", text: "report" })), wrap);
  let sortKey = "clicks";
  let busy = false;
  let again = false;
  async function reload() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      const [sel, per, base] = await Promise.all([
        api.get(`/api/stats?${q}&from=-60m&interval=minute&top=5`),
        api.get(`/api/stats?${q}&from=-60m&interval=minute&group_by=link`),
        api.get(`/api/campaigns/${enc(name)}/baseline`),
      ]);
      if (signal.aborted) return;
      const value = (g) => (sortKey === "rate" ? (g.velocity ? g.velocity.rate_per_min : -1) : g[sortKey] ?? -1);
      const rows = per.groups.slice().sort((a, b) => value(b) - value(a));
      const sorter = (key, label) => {
        const btn = h("button", { type: "button", class: "sort", text: label, "aria-pressed": String(sortKey === key) });
        btn.addEventListener("click", () => {
          sortKey = key;
          reload();
        });
        return h("th", { scope: "col" }, btn);
      };
      const t = sel.top || {};
      const fh = base.first_hour;
      // the 15/30/60-minute checkpoints of the links, each against the campaign's curve
      const marks = await Promise.all(
        rows.slice(0, 20).map((g) => api.get(`/api/links/${g.key}/baseline`).catch(() => null)),
      );
      const tops = await Promise.all(
        rows.slice(0, 20).map((g) => api.get(`/api/links/${g.key}/stats?from=-60m&top=1`).catch(() => null)),
      );
      const topOf = (i, dim) => {
        const first = tops[i] && tops[i].top[dim] && tops[i].top[dim][0];
        return first ? `${first.value ?? "unknown"} (${first.clicks})` : "–";
      };
      if (signal.aborted) return;
      const mark = (i, m) => {
        const b = marks[i];
        const c = b && b.first_hour.campaign;
        const point = c && c.checkpoints ? c.checkpoints.find((x) => x.minutes === m) : null;
        if (!b || !b.own_curve.length) return "–";
        if (!point) return `${b.own_curve[Math.min(m, b.own_curve.length) - 1]} (no baseline yet)`;
        const pct = point.versus ? ` (${point.versus.percent > 0 ? "+" : ""}${point.versus.percent}%)` : " (so far)";
        return `${point.actual}${point.versus && point.versus.percent === null ? "" : pct}`;
      };
      const launch = h("button", { type: "button", id: "campaign-launch", text: "Launch campaign", hidden: true });
      api.hasRoute("POST", "/api/campaigns/{name}/launch").then((ok) => {
        launch.hidden = !ok;
      }, () => {});
      launch.addEventListener("click", async () => {
        if (await change("Campaign launched", "POST", `/api/campaigns/${enc(name)}/launch`, {})) reload();
      });
      const points = fh.enough ? fh.checkpoints.map((c) => `${c.minutes} min: median ${c.median} (p25 ${c.p25}, p75 ${c.p75})`).join("; ") : "";
      wrap.replaceChildren(
        h("div", { class: "tiles" }, tile("Clicks, 60 min", sel.totals.clicks, "campaign-clicks"), tile("Humans, 60 min", sel.totals.humans, "campaign-humans"), tile("Velocity", sel.velocity.label, "campaign-velocity"), tile("Conversions", sel.totals.conversions, "campaign-conversions")),
        h("p", { class: "baseline", id: "campaign-baseline", text: `First-hour baseline: ${fh.text}${points ? ` (${points})` : ""}. Hour of week: ${base.hour_of_week.text}.` }),
        h("div", { class: "actions" }, launch),
        h("section", { class: "card" }, h("h2", { text: "Clicks per minute" }), h("div", { class: "chart-box" }, lineChart(sel.series.map((p) => ({ t: p.t, v: p.clicks })), { label: "campaign clicks per minute" }))),
        h("section", { class: "card" }, h("h2", { text: "Channel mix" }), h("div", { class: "breakdowns" }, breakdown("Sources", t.sources), breakdown("Referrer hosts", t.referrer_hosts), breakdown("Countries", t.countries), breakdown("Devices", t.device_types))),
        h(
          "section",
          { class: "card" },
          h("h2", { text: "Links" }),
          h("div", { class: "scroll" }, h("table", { id: "campaign-links" }, h("thead", {}, h("tr", {}, h("th", { text: "Link" }), sorter("clicks", "Clicks"), sorter("humans", "Humans"), sorter("rate", "Rate / min"), h("th", { text: "Top country" }), h("th", { text: "Top device" }), sorter("conversions", "Conversions"), h("th", { text: "Conv. rate" }), h("th", { text: "Revenue" }), h("th", { text: "Velocity" }), ...[15, 30, 60].map((m) => h("th", { text: `${m} min vs baseline` })))),
            h("tbody", {}, rows.map((g, i) => h("tr", {}, h("td", {}, h("a", { href: `#/link/${g.key}`, text: g.short_url || String(g.key) })), h("td", { class: "n", text: num(g.clicks) }), h("td", { class: "n", text: num(g.humans) }), h("td", { class: "n", text: num(g.velocity && g.velocity.rate_per_min) }), h("td", { text: topOf(i, "countries") }), h("td", { text: topOf(i, "device_types") }), h("td", { class: "n", text: num(g.conversions) }), h("td", { class: "n", text: num(g.conversion_rate) }), h("td", { class: "n", text: num(g.revenue) }), h("td", { text: g.velocity ? g.velocity.label : "–" }), ...[15, 30, 60].map((m) => h("td", { class: "n", text: i < marks.length ? mark(i, m) : "–" }))))))),
        ),
      );
    } catch (err) {
      if (!signal.aborted) fail(err);
    } finally {
      busy = false;
      if (again && !signal.aborted) {
        again = false;
        reload();
      }
    }
  }
  await reload();
  let last = null;
  return {
    onLive(snapshot) {
      const total = snapshot.overall.since_start.clicks;
      if (last !== null && total !== last) reload();
      last = total;
    },
  };
}

// --- report -----------------------------------------------------------------------------

async function download(name, fmt) {
  const res = await fetch(`/api/campaigns/${enc(name)}/report?format=${fmt}`, { headers: { Authorization: `Bearer ${api.token()}` } });
  const blob = await res.blob();
  const a = h("a", { href: URL.createObjectURL(blob), download: `${name}-report.${fmt}` });
  document.body.append(a);
  a.click();
  a.remove();
}

async function reportPage(name) {
  const r = await api.get(`/api/campaigns/${enc(name)}/report`);
  const md = h("button", { type: "button", text: "Markdown" });
  md.addEventListener("click", () => download(name, "md"));
  const csv = h("button", { type: "button", text: "CSV" });
  csv.addEventListener("click", () => download(name, "csv"));
  const best = (b) => (b ? `${b.value} (${b.by}, ${b.humans} humans)` : "–");
  const fmtS = (s) => (s === null ? "–" : `${Math.floor(s / 60)} min ${s % 60} s`);
  main.replaceChildren(
    h("h1", { text: `Report: ${name}` }),
    h("div", { class: "actions" }, "Export: ", md, csv),
    h(
      "dl",
      { class: "card facts", id: "report-facts" },
      [
        ["Clicks", `${r.totals.clicks} (${r.totals.humans} humans)`],
        ["Started", r.started_at],
        ["Time to first click", fmtS(r.time_to_first_click_s)],
        ["Peak minute", r.peak_minute ? `${r.peak_minute.at}: ${r.peak_minute.humans} humans` : "–"],
        ["Time to peak", fmtS(r.time_to_peak_s)],
        ["Best channel", best(r.best_channel)],
        ["Best placement", best(r.best_placement)],
        ["Best variant", r.variants.best ? `${r.variants.best.variant} of link ${r.variants.best.link_id}` : r.variants.note || "–"],
        ["Conversions", r.conversions.total === null ? r.conversions.note : String(r.conversions.total)],
        ["Baseline", r.baseline.text],
      ].map(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "What changed, and what the rate did" }),
      h("div", { class: "scroll" }, h("table", { id: "report-changes" }, h("thead", {}, h("tr", {}, ["When", "Link", "Change", "From", "To", "Humans/min 30 min before", "After", "vs baseline"].map((t) => h("th", { text: t })))),
        h("tbody", {}, r.changes.map((c) => h("tr", {}, h("td", { text: c.at }), h("td", { text: c.link_id }), h("td", { text: c.kind }), h("td", { text: short(c.from) }), h("td", { text: short(c.to) }), h("td", { class: "n", text: c.rate_per_min_before }), h("td", { class: "n", text: c.rate_per_min_after }), h("td", { text: c.versus_baseline.text || "–" })))))),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", { text: "Planning: best hours to post (humans, UTC)" }),
      h("ul", {}, r.planning.best_hours_by_channel.map((ch) => h("li", { text: `${ch.channel}: ${ch.best_hours.map((x) => `${x.label} (${x.humans})`).join(", ") || "no data"}; sample ${ch.sample_humans} humans` }))),
    ),
  );
  return { onLive() {} };
}

// --- routing and the live stream -----------------------------------------------------------

async function route() {
  if (page) page.abort.abort();
  document.getElementById("notice").hidden = true;
  const abort = new AbortController();
  page = { abort, onLive() {} };
  const hash = location.hash || "#/";
  if (!api.token() && hash !== "#/login") {
    location.hash = "#/login";
    return;
  }
  document.getElementById("logout").hidden = !api.token();
  try {
    let handlers;
    const [, kind, arg] = hash.match(/^#\/([a-z]*)\/?(.*)$/) || [];
    if (kind === "login") {
      loginPage();
      return;
    } else if (kind === "link") handlers = await linkPage(Number(arg), abort.signal);
    else if (kind === "campaign") handlers = await campaignPage(decodeURIComponent(arg), abort.signal);
    else if (kind === "report") handlers = await reportPage(decodeURIComponent(arg));
    else handlers = await overviewPage(abort.signal);
    if (!abort.signal.aborted) Object.assign(page, handlers);
  } catch (err) {
    if (!abort.signal.aborted) fail(err);
  }
  if (!abort.signal.aborted) {
    api.liveStream(
      (snapshot) => {
        liveState.textContent = `live ${snapshot.now.slice(11, 19)}`;
        page.onLive(snapshot);
      },
      abort.signal,
      (state) => {
        liveState.textContent = state;
      },
    );
  }
}

document.getElementById("logout").addEventListener("click", () => {
  api.setToken(null);
  location.hash = "#/login";
});
window.addEventListener("hashchange", route);
route();
