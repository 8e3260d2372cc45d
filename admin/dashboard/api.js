// The admin API from the page: the bearer token lives in sessionStorage (this tab only,
// gone when it closes) and goes in an Authorization header, which a browser never adds on
// its own: another site cannot make a request that carries it (no CSRF).

const KEY = "linkedge.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.code = err.code;
    this.field = err.field;
  }
}

export async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${token()}` };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get("Content-Type") || "";
  const data = type.startsWith("application/json") ? await res.json() : await res.text();
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const get = (path) => call("GET", path);

// The routes this server has (from its OpenAPI document): optional features (alerts,
// launches) are shown only where the server has them, so the page never asks a route
// that is not there.
let routes = null;
export async function hasRoute(method, path) {
  if (routes === null) {
    const doc = await get("/api/openapi.json");
    routes = new Set();
    for (const [p, ops] of Object.entries(doc.paths || {})) {
      for (const m of Object.keys(ops)) routes.add(`${m.toUpperCase()} ${p}`);
    }
  }
  return routes.has(`${method} ${path}`);
}

// /api/live/stream read with fetch (EventSource cannot send a header). Calls onEvent with
// each snapshot; reconnects after a pause; stops when signal aborts.
export async function liveStream(onEvent, signal, onState) {
  while (!signal.aborted) {
    try {
      const res = await fetch("/api/live/stream?top=100", {
        headers: { Authorization: `Bearer ${token()}` },
        signal,
      });
      if (!res.ok) throw new ApiError(res.status, null);
      onState && onState("live");
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let end;
        while ((end = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data: "))
            .map((line) => line.slice(6))
            .join("\n");
          if (data) onEvent(JSON.parse(data));
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      onState && onState("reconnecting");
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
