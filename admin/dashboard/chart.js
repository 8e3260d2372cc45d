// Inline SVG charts: a sparkline and a line chart with an optional band (p25..p75) and
// vertical markers (changes from the history). No dependencies; every element is built
// with createElementNS and text goes in through textContent, never as markup.

const NS = "http://www.w3.org/2000/svg";

function el(name, attrs) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function scale(values, lo, hi) {
  const min = Math.min(0, ...values);
  const max = Math.max(1, ...values);
  return (v) => hi - ((v - min) / (max - min || 1)) * (hi - lo);
}

// values: numbers, oldest first. Returns an <svg> of width x height.
export function sparkline(values, { width = 120, height = 28, label = "" } = {}) {
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
  const title = el("title");
  title.textContent = label;
  svg.append(title);
  if (!values.length) return svg;
  const y = scale(values, 2, height - 2);
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.append(el("polyline", { points, fill: "none", class: "spark-line" }));
  return svg;
}

// series: [{t: Date|ms, v: number|null}], oldest first (null: no value yet, not drawn).
// opts.band: [{lo, hi}] aligned with series; opts.median: [number] aligned with series;
// opts.markers: [{t, label}] drawn as vertical lines with a <title>.
export function lineChart(series, opts = {}) {
  const width = opts.width || 640;
  const height = opts.height || 180;
  const pad = { l: 36, r: 8, t: 8, b: 20 };
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: "chart",
    role: "img",
  });
  const title = el("title");
  title.textContent = opts.label || "";
  svg.append(title);
  const values = series.map((p) => p.v).filter((v) => v !== null && v !== undefined);
  const drawn = series.filter((p) => p.v !== null && p.v !== undefined); // null: not yet
  const extra = [];
  if (opts.band) for (const b of opts.band) if (b) extra.push(b.hi);
  if (opts.median) for (const m of opts.median) if (m != null) extra.push(m);
  const y = scale(values.concat(extra), pad.t, height - pad.b);
  const t0 = series.length ? +new Date(series[0].t) : 0;
  const t1 = series.length ? +new Date(series[series.length - 1].t) : 1;
  const x = (t) => pad.l + ((+new Date(t) - t0) / (t1 - t0 || 1)) * (width - pad.l - pad.r);
  const max = Math.max(1, ...values.concat(extra));
  for (const frac of [0, 0.5, 1]) {
    const v = Math.round(max * frac);
    const gy = y(v);
    svg.append(el("line", { x1: pad.l, x2: width - pad.r, y1: gy, y2: gy, class: "grid" }));
    const lab = el("text", { x: pad.l - 4, y: gy + 4, class: "axis", "text-anchor": "end" });
    lab.textContent = String(v);
    svg.append(lab);
  }
  if (opts.band && opts.band.length === series.length) {
    const top = series.map((p, i) => `${x(p.t)},${y(opts.band[i].hi)}`);
    const bottom = series.map((p, i) => `${x(p.t)},${y(opts.band[i].lo)}`).reverse();
    svg.append(el("polygon", { points: top.concat(bottom).join(" "), class: "band" }));
  }
  if (opts.median && opts.median.length === series.length) {
    const pts = series.map((p, i) => `${x(p.t)},${y(opts.median[i])}`).join(" ");
    svg.append(el("polyline", { points: pts, class: "median", fill: "none" }));
  }
  if (drawn.length) {
    const pts = drawn.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ");
    svg.append(el("polyline", { points: pts, class: "line", fill: "none" }));
    const last = drawn[drawn.length - 1]; // where the line is now
    svg.append(el("circle", { cx: x(last.t), cy: y(last.v), r: 3, class: "dot" }));
  }
  for (const m of opts.markers || []) {
    const t = +new Date(m.t);
    if (!series.length || t < t0 || t > t1 + 60000) continue;
    const mx = Math.min(x(t), width - pad.r);
    const g = el("g", { class: "marker" });
    const mt = el("title");
    mt.textContent = m.label;
    g.append(mt, el("line", { x1: mx, x2: mx, y1: pad.t, y2: height - pad.b }));
    svg.append(g);
  }
  if (series.length) {
    for (const [p, anchor] of [[series[0], "start"], [series[series.length - 1], "end"]]) {
      const lab = el("text", { x: x(p.t), y: height - 4, class: "axis", "text-anchor": anchor });
      const iso = new Date(p.t).toISOString(); // a day or more: the date too
      lab.textContent = (t1 - t0 >= 6 * 3600000 ? iso.slice(5, 10) + " " : "") + iso.slice(11, 16) + "Z";
      svg.append(lab);
    }
  }
  return svg;
}
