// observe's dashboard: a small single-page app over observe's own REST API (SPEC §2), with
// the same session as any client: an access token kept in memory, renewed through the
// HttpOnly refresh cookie (`POST /auth/refresh`) at load and whenever the API answers 401.
// Routes are in the URL's fragment (`#/projects`), so they never collide with API paths.
// No build step: the files under src/assets/app/ are what the browser runs.

const app = document.getElementById("app");
const nav = document.getElementById("nav");

// Errors of the page itself, for the browser tests (a page must have none).
window.__observeErrors = [];
window.addEventListener("error", (e) => window.__observeErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.__observeErrors.push(String(e.reason)));

// ---------------------------------------------------------------------------------------------
// The API, with the session.

let token = null;
let me = null;

// Whether this browser may hold a refresh cookie (it is HttpOnly, so the page cannot see it):
// set on sign-in, cleared on sign-out and on a refused refresh. Without it the app does not ask
// `/auth/refresh` at load, which would only answer 401 (a red line in every visitor's console).
const HINT = "observe.session";
const hinted = () => localStorage.getItem(HINT) === "1";
const hint = (on) => (on ? localStorage.setItem(HINT, "1") : localStorage.removeItem(HINT));

// A new access token, renewed a little before it expires so that an idle page's next call
// does not meet a 401 first.
let renewal = null;
function setToken(res) {
  token = res.access_token;
  hint(true);
  clearTimeout(renewal);
  if (res.expires_in > 0) renewal = setTimeout(() => refresh().catch(() => {}), res.expires_in * 800);
}

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `the server answered ${status}`);
    this.status = status;
    this.code = err.code || "error";
    this.details = err.details;
  }
}

async function refresh() {
  const res = await fetch("/auth/refresh", { method: "POST", credentials: "same-origin" });
  if (!res.ok) {
    hint(false);
    return false;
  }
  setToken(await res.json());
  return true;
}

async function api(method, path, body, retried) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401 && !retried && token !== null && (await refresh())) {
    return api(method, path, body, true);
  }
  const text = await res.text();
  const data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    if (res.status === 401 && !path.startsWith("/auth/")) {
      token = null;
      go("#/signin");
    }
    throw new ApiError(res.status, data);
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Rendering helpers: elements built with textContent, never HTML from data.

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  app.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined && n !== false));
  app.focus({ preventScroll: true });
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err));
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

// A form whose submit runs `action`: the button is disabled meanwhile, the API's message shown.
function form(fields, label, action) {
  const problem = h("div");
  const button = h("button", { type: "submit" }, label);
  const f = h("form", { class: "stack" }, ...fields, problem, button);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    button.disabled = true;
    problem.replaceChildren();
    try {
      await action(new FormData(f));
    } catch (err) {
      problem.replaceChildren(errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return f;
}

function field(label, name, type = "text", extra = {}) {
  return h("label", {}, label, h("input", { name, type, required: true, ...extra }));
}

function renderNav() {
  if (!me) {
    nav.replaceChildren(h("a", { href: "#/signin" }, "Sign in"), h("a", { href: "#/signup" }, "Sign up"));
    return;
  }
  nav.replaceChildren(
    h("a", { href: "#/projects" }, "Projects"),
    h("a", { href: "#/billing" }, "Billing"),
    h("span", { class: "spacer" }),
    h("a", { href: "#/account", class: "muted" }, me.user.email),
    h("button", { class: "quiet", type: "button", onclick: signOut }, "Sign out"),
  );
}

async function signOut() {
  try { await api("POST", "/auth/logout"); } catch (e) { /* signed out either way */ }
  clearTimeout(renewal);
  hint(false);
  token = null;
  me = null;
  renderNav();
  go("#/signin");
}

// ---------------------------------------------------------------------------------------------
// Pages.

function signInPage() {
  const github = h("div");
  githubOffered().then((offered) => {
    // GitHub's way back lands on `/` with the refresh cookie set: the hint lets the app use it.
    if (offered) github.replaceChildren(h("a", { class: "button", href: "/auth/github/login", onclick: () => hint(true) }, "Sign in with GitHub"));
  });
  show(h("section", { class: "card" }, github,
    h("h1", {}, "Sign in"),
    form([field("Email", "email", "email", { autocomplete: "username" }),
      field("Password", "password", "password", { autocomplete: "current-password" })],
    "Sign in", async (data) => {
      const res = await api("POST", "/auth/login", { email: data.get("email"), password: data.get("password") });
      setToken(res);
      await loadMe();
      go("#/projects");
    }),
    h("p", {}, "No account yet? ", h("a", { href: "#/signup" }, "Sign up"), ". ",
      h("a", { href: "#/forgot-password" }, "Forgot your password?"))));
}

function signUpPage() {
  show(h("section", { class: "card" },
    h("h1", {}, "Create your account"),
    form([field("Name", "name", "text", { autocomplete: "name" }),
      field("Email", "email", "email", { autocomplete: "username" }),
      field("Password (10 characters or more)", "password", "password", { autocomplete: "new-password", minlength: "10" })],
    "Sign up", async (data) => {
      const res = await api("POST", "/auth/register", {
        name: data.get("name"), email: data.get("email"), password: data.get("password"),
      });
      setToken(res);
      await loadMe();
      go("#/projects");
    }),
    h("p", {}, "Have an account? ", h("a", { href: "#/signin" }, "Sign in"), ".")));
}

async function projectsPage() {
  show(h("p", { class: "loading", role: "status" }, "Loading projects…"));
  const list = await api("GET", "/projects?limit=200");
  const rows = list.items.map((p) => h("tr", {},
    h("td", {}, h("a", { href: `#/projects/${p.id}/analytics` }, p.name)),
    h("td", { class: "muted" }, new Date(p.created_at).toLocaleDateString())));
  show(
    h("h1", {}, "Projects"),
    list.items.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", {}, "Created"))), h("tbody", {}, rows))
      : h("p", { class: "muted" }, "No project yet: create one to get its API key and snippet."),
    h("section", { class: "card" },
      h("h2", {}, "New project"),
      form([field("Name", "name")], "Create project", async (data) => {
        const p = await api("POST", "/projects", { name: data.get("name") });
        go(`#/projects/${p.id}/settings`);
      })),
  );
}

function snippetFor(key) {
  return `<script src="${location.origin}/sdk/observe.js" data-key="${key}" defer></script>`;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch (e) {
    button.textContent = "Select and copy by hand";
  }
}

async function settingsPage(projectId) {
  show(h("p", { class: "loading", role: "status" }, "Loading…"));
  const project = await api("GET", `/projects/${projectId}`);
  const list = h("div", { id: "keys" }, h("p", { class: "loading" }, "Loading keys…"));
  const created = h("div", { id: "new-key" });

  async function renderKeys() {
    const keys = await api("GET", `/projects/${projectId}/api-keys?limit=200`);
    list.replaceChildren(keys.items.length
      ? h("table", {}, h("tbody", {}, keys.items.map((k) => h("tr", {},
        h("td", {}, k.name, k.revoked_at ? null : h("div", { class: "muted dsn" }, "DSN ", h("code", {}, k.dsn))),
        h("td", {}, h("code", {}, `${k.prefix}…`)),
        h("td", { class: "muted" }, k.revoked_at ? "revoked" : (k.last_used_at ? `used ${new Date(k.last_used_at).toLocaleString()}` : "never used")),
        h("td", {}, k.revoked_at ? "" : h("button", {
          class: "danger", type: "button",
          onclick: async () => {
            if (!confirm(`Revoke the key "${k.name}"? SDKs using it stop at once.`)) return;
            try {
              await api("DELETE", `/projects/${projectId}/api-keys/${k.id}`);
              await renderKeys();
            } catch (err) {
              list.prepend(errorBox(err));
            }
          },
        }, "Revoke"))))))
      : h("p", { class: "muted" }, "No key yet. Create one, then paste the snippet into your site's pages to send page views, events and errors."));
  }

  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "settings"),
    h("section", { class: "card" },
      h("h2", {}, "API keys"),
      list,
      created,
      form([field("Key name", "name", "text", { value: "website" })], "Create key", async (data) => {
        const k = await api("POST", `/projects/${projectId}/api-keys`, { name: data.get("name") });
        const snippet = snippetFor(k.key);
        const copyKey = h("button", { type: "button", class: "quiet", onclick: (e) => copy(k.key, e.target) }, "Copy key");
        const copySnippet = h("button", { type: "button", class: "quiet", onclick: (e) => copy(snippet, e.target) }, "Copy snippet");
        created.replaceChildren(h("div", { class: "notice", role: "status" },
          h("p", {}, "Your new key — shown this once:"),
          h("pre", { id: "new-key-value" }, k.key),
          h("div", { class: "row" }, copyKey),
          h("p", {}, "Paste this into every page of your site, before </body>:"),
          h("pre", { id: "new-key-snippet" }, snippet),
          h("div", { class: "row" }, copySnippet),
          h("p", {}, "Or point any Sentry SDK at observe: set ", h("code", {}, "SENTRY_DSN"), " (or ", h("code", {}, "dsn="), ") to"),
          h("pre", { id: "new-key-dsn" }, k.dsn),
          h("div", { class: "row" }, h("button", { type: "button", class: "quiet", onclick: (e) => copy(k.dsn, e.target) }, "Copy DSN"))));
        await renderKeys();
      })),
    h("section", { class: "card" }, h("h2", {}, "Delete project"),
      h("p", { class: "muted" }, "Its keys stop at once; its events, errors, requests, metrics and monitors are deleted in the background."),
      form([field(`Type "${project.name}" to confirm`, "confirm", "text", { autocomplete: "off" })], "Delete project", async (data) => {
        if (data.get("confirm") !== project.name) throw new Error("The name does not match.");
        await api("DELETE", `/projects/${projectId}`);
        go("#/projects");
      })),
  );
  await renderKeys();
}

// ---------------------------------------------------------------------------------------------
// A project's pages: the tabs, Analytics, Errors.

function projectTabs(projectId, current) {
  const tab = (name, label) => h("a", {
    href: `#/projects/${projectId}/${name}`,
    "aria-current": current === name ? "page" : undefined,
  }, label);
  return h("nav", { class: "tabs row", "aria-label": "project" },
    tab("analytics", "Analytics"), tab("errors", "Errors"), tab("api", "API"),
    tab("metrics", "Metrics & costs"), tab("monitors", "Monitors"), tab("settings", "Settings"));
}

// The range picker's state, shared by the pages that read a range: a relative range
// (`24h`…`90d`) or `custom` with whole days `day_from`..`day_to` (inclusive) in the zone.
const range = {
  from: "24h",
  day_from: "",
  day_to: "",
  tz: (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC",
};

function rangeControls(onChange) {
  const from = h("select", { name: "from", "aria-label": "range" },
    ...[["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"], ["90d", "Last 90 days"], ["custom", "Custom days…"]]
      .map(([v, label]) => h("option", { value: v, selected: range.from === v }, label)));
  const zones = Array.from(new Set([range.tz, "UTC", "Africa/Lagos", "Europe/London", "America/New_York"]));
  const tz = h("select", { name: "tz", "aria-label": "time zone" },
    ...zones.map((z) => h("option", { value: z, selected: range.tz === z }, z)));
  // Today in the chosen zone, as `YYYY-MM-DD` (the Canadian English format is ISO's).
  const today = new Intl.DateTimeFormat("en-CA", { timeZone: range.tz }).format(new Date());
  const dayFrom = h("input", { type: "date", name: "day_from", "aria-label": "first day", value: range.day_from || today, max: today });
  const dayTo = h("input", { type: "date", name: "day_to", "aria-label": "last day", value: range.day_to || today, max: today });
  const apply = h("button", { type: "button", class: "quiet", id: "range-apply" }, "Apply");
  const custom = h("span", { class: "row", hidden: range.from !== "custom" }, dayFrom, "to", dayTo, apply);
  const changed = () => {
    range.from = from.value;
    range.tz = tz.value;
    custom.hidden = range.from !== "custom";
    if (range.from === "custom") {
      range.day_from = dayFrom.value;
      range.day_to = dayTo.value;
      if (!range.day_from || !range.day_to) return;
    }
    onChange();
  };
  from.addEventListener("change", () => (from.value === "custom" ? (custom.hidden = false, dayFrom.focus()) : changed()));
  tz.addEventListener("change", changed);
  apply.addEventListener("click", changed);
  return h("div", { class: "row controls" }, from, custom, tz);
}

// The day after an ISO date (`2026-03-08` → `2026-03-09`): a custom range's exclusive end.
function nextDay(day) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

function rangeQuery() {
  const tz = `tz=${encodeURIComponent(range.tz)}`;
  if (range.from === "custom" && range.day_from && range.day_to) {
    return `from=${range.day_from}&to=${nextDay(range.day_to)}&${tz}`;
  }
  return `from=${encodeURIComponent(range.from === "custom" ? "24h" : range.from)}&${tz}`;
}

// A time-series chart (uPlot, bundled): one line per named series over the buckets' starts.
function chart(starts, lines, label) {
  const box = h("div", { class: "chart", role: "img", "aria-label": label });
  if (!window.uPlot || !starts.length) return box;
  const xs = starts.map((s) => Date.parse(s) / 1000);
  const colors = ["#2f5bea", "#2e7d32", "#e65100", "#8e24aa"];
  const opts = {
    width: Math.max(260, Math.min(880, app.clientWidth - 72)),
    height: 220,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), range.tz),
    series: [{}, ...lines.map(([name], i) => ({ label: name, stroke: colors[i % colors.length], width: 2 }))],
    axes: [{ stroke: "#888" }, { stroke: "#888" }],
  };
  requestAnimationFrame(() => new uPlot(opts, [xs, ...lines.map(([, ys]) => ys)], box));
  return box;
}

function topList(title, items) {
  return h("section", { class: "card" }, h("h3", {}, title),
    items.length
      ? h("table", {}, h("tbody", {}, items.map((t) => h("tr", {}, h("td", {}, t.value), h("td", { class: "num" }, t.count)))))
      : h("p", { class: "muted" }, "Nothing in this range."));
}

function firstEventHelp(projectId) {
  return h("section", { class: "card empty" },
    h("h2", {}, "No events yet"),
    h("p", {}, "Create an API key in ", h("a", { href: `#/projects/${projectId}/settings` }, "Settings"),
      " and paste its snippet into your site's pages. Page views, ",
      h("code", {}, "observe.track(name, props)"), " and uncaught errors show up here within seconds."),
    h("pre", {}, `<script src="${location.origin}/sdk/observe.js" data-key="obs_…" defer></script>`));
}

async function analyticsPage(projectId) {
  show(projectTabs(projectId, "analytics"), h("p", { class: "loading", role: "status" }, "Loading analytics…"));
  const filters = JSON.parse(sessionStorage.getItem("observe.events.filters") || "{}");
  const fq = new URLSearchParams({ limit: "20" });
  for (const [k, v] of Object.entries(filters)) if (v) fq.set(k, v);
  const [project, stats, recent] = await Promise.all([
    api("GET", `/projects/${projectId}`),
    api("GET", `/projects/${projectId}/stats?${rangeQuery()}`),
    api("GET", `/projects/${projectId}/events?${rangeQuery()}&${fq}`),
  ]);
  // The event explorer's filters: name, visitor, user, URL prefix.
  const explorer = h("form", { class: "row controls", id: "event-filters" },
    h("input", { name: "name", placeholder: "event name", value: filters.name || "", "aria-label": "event name" }),
    h("input", { name: "visitor_id", placeholder: "visitor", value: filters.visitor_id || "", "aria-label": "visitor id" }),
    h("input", { name: "user_id", placeholder: "user", value: filters.user_id || "", "aria-label": "user id" }),
    h("input", { name: "url", placeholder: "URL starts with", value: filters.url || "", "aria-label": "URL prefix" }),
    h("button", { type: "submit" }, "Filter"));
  explorer.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("observe.events.filters", JSON.stringify(Object.fromEntries(new FormData(explorer))));
    analyticsPage(projectId).catch((err) => show(errorBox(err)));
  });
  const t = stats.totals;
  const figure = (label, value) => h("div", { class: "figure" }, h("div", { class: "value" }, value), h("div", { class: "muted" }, label));
  const s = stats.series;
  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "analytics"),
    rangeControls(() => analyticsPage(projectId)),
    t.events === 0 ? firstEventHelp(projectId) : null,
    h("section", { class: "figures" }, figure("Page views", t.pageviews), figure("Visitors", t.visitors),
      figure("Events", t.events), figure("Identified people", t.people)),
    h("section", { class: "card" }, h("h2", {}, "Over time"),
      chart(s.map((p) => p.start), [["Page views", s.map((p) => p.pageviews)], ["Visitors", s.map((p) => p.visitors)],
        ["Events", s.map((p) => p.events)]], "page views, visitors and events over time")),
    h("div", { class: "grid" }, topList("Top pages", stats.top_pages), topList("Referrers", stats.top_referrers),
      topList("Events", stats.top_events)),
    h("section", { class: "card" }, h("h2", {}, "Latest events"), explorer,
      recent.items.length
        ? h("table", { id: "latest-events" }, h("thead", {}, h("tr", {}, h("th", {}, "Event"), h("th", {}, "Visitor"), h("th", {}, "Page"), h("th", {}, "When"))),
          h("tbody", {}, recent.items.map((e) => h("tr", {}, h("td", {}, e.name), h("td", {}, e.user_id || e.visitor_id),
            h("td", {}, e.url || ""), h("td", { class: "muted" }, new Date(e.timestamp).toLocaleString())))))
        : h("p", { class: "muted" }, "No event matches in this range.")),
  );
}

async function errorsPage(projectId) {
  show(projectTabs(projectId, "errors"), h("p", { class: "loading", role: "status" }, "Loading errors…"));
  const status = sessionStorage.getItem("observe.errors.status") || "unresolved";
  const sort = sessionStorage.getItem("observe.errors.sort") || "last_seen";
  const [project, groups] = await Promise.all([
    api("GET", `/projects/${projectId}`),
    api("GET", `/projects/${projectId}/errors?status=${status}&sort=${sort}&${rangeQuery()}`),
  ]);
  const filter = h("select", { "aria-label": "status" },
    ...["unresolved", "resolved", "all"].map((v) => h("option", { value: v, selected: v === status }, v)));
  filter.addEventListener("change", () => { sessionStorage.setItem("observe.errors.status", filter.value); errorsPage(projectId); });
  const order = h("select", { "aria-label": "sort", id: "error-sort" },
    ...[["last_seen", "Last seen"], ["first_seen", "First seen"], ["count", "Most frequent"]]
      .map(([v, label]) => h("option", { value: v, selected: v === sort }, label)));
  order.addEventListener("change", () => { sessionStorage.setItem("observe.errors.sort", order.value); errorsPage(projectId); });
  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "errors"),
    h("div", { class: "row controls" }, filter, order, rangeControls(() => errorsPage(projectId))),
    groups.items.length
      ? h("table", { id: "error-groups" }, h("thead", {}, h("tr", {}, h("th", {}, "Error"), h("th", {}, "In range"), h("th", {}, "People"), h("th", {}, "Last seen"))),
        h("tbody", {}, groups.items.map((g) => h("tr", {},
          h("td", {}, h("a", { href: `#/projects/${projectId}/errors/${g.id}` }, `${g.type}: ${g.message}`)),
          h("td", { class: "num" }, g.occurrences_in_range), h("td", { class: "num" }, g.affected_users_in_range),
          h("td", { class: "muted" }, new Date(g.last_seen).toLocaleString())))))
      : h("p", { class: "muted" }, status === "unresolved" ? "No unresolved errors in this range." : "No errors here."),
  );
}

const plural = (n, one, many) => `${n} ${n === 1 ? one : many}`;

// What the newest occurrence carried beyond observe's fields (Sentry SDKs send breadcrumbs,
// the request, contexts, the rest of an exception chain): breadcrumbs as a list, the rest as JSON.
function occurrenceContext(o) {
  const context = o && o.context;
  if (!context) return null;
  const { breadcrumbs, ...rest } = context;
  const crumbs = Array.isArray(breadcrumbs) ? breadcrumbs : [];
  const when = (t) => (typeof t === "number" ? new Date(t * 1000) : new Date(t)).toLocaleTimeString();
  return h("section", { class: "card", id: "occurrence-context" }, h("h2", {}, "Context of the latest occurrence"),
    crumbs.length
      ? h("table", {}, h("tbody", {}, crumbs.slice(-30).map((c) => h("tr", {},
        h("td", { class: "muted" }, c.timestamp ? when(c.timestamp) : ""),
        h("td", {}, c.category || c.type || ""),
        h("td", {}, c.message || (c.data ? JSON.stringify(c.data) : ""))))))
      : null,
    h("details", {}, h("summary", {}, "Everything else it carried"), h("pre", {}, JSON.stringify(rest, null, 2))));
}

function frames(stack) {
  if (typeof stack === "string") return h("pre", {}, stack);
  if (!Array.isArray(stack) || !stack.length) return h("p", { class: "muted" }, "No stack trace was sent.");
  return h("pre", { class: "stack" }, stack.map((f) =>
    `${f.in_app ? "▸" : " "} ${f.function || "?"}  ${f.filename || f.module || ""}${f.lineno ? ":" + f.lineno : ""}${f.colno ? ":" + f.colno : ""}`).join("\n"));
}

async function errorPage(projectId, groupId) {
  show(projectTabs(projectId, "errors"), h("p", { class: "loading", role: "status" }, "Loading…"));
  const g = await api("GET", `/projects/${projectId}/errors/${groupId}?${rangeQuery()}`);
  const resolved = g.status === "resolved";
  const toggle = h("button", {
    type: "button",
    onclick: async () => {
      await api("POST", `/projects/${projectId}/errors/${groupId}/${resolved ? "unresolve" : "resolve"}`);
      errorPage(projectId, groupId);
    },
  }, resolved ? "Unresolve" : "Resolve");
  const latest = g.last_occurrence || {};
  show(
    h("h1", {}, `${g.type}: ${g.message}`),
    projectTabs(projectId, "errors"),
    h("div", { class: "row" }, h("span", { class: "muted" }, `${g.status} · ${plural(g.occurrences, "occurrence", "occurrences")} · ${plural(g.affected_users, "person", "people")} · first seen ${new Date(g.first_seen).toLocaleString()} · last seen ${new Date(g.last_seen).toLocaleString()}`), toggle),
    h("section", { class: "card" }, h("h2", {}, "Trend"),
      chart(g.trend.map((b) => b.start), [["Occurrences", g.trend.map((b) => b.count)]], "occurrences over time")),
    h("section", { class: "card" }, h("h2", {}, "Latest stack trace"), frames(latest.stack_trace)),
    occurrenceContext(g.recent_occurrences[0]),
    h("section", { class: "card" }, h("h2", {}, `Affected people (${g.range.affected_users} in range)`),
      g.recent_occurrences.length
        ? h("table", { id: "occurrences" }, h("thead", {}, h("tr", {}, h("th", {}, "Who"), h("th", {}, "When"), h("th", {}, "Page"), h("th", {}, "Release"))),
          h("tbody", {}, g.recent_occurrences.map((o) => h("tr", {},
            h("td", {}, o.user_id || o.visitor_id || "anonymous"),
            h("td", { class: "muted" }, new Date(o.timestamp).toLocaleString()),
            h("td", {}, o.url || ""), h("td", {}, o.release || "")))))
        : h("p", { class: "muted" }, "No occurrence in this range.")),
    h("section", { class: "card" }, h("h2", {}, "Tags"),
      g.tags.length
        ? h("table", {}, h("tbody", {}, g.tags.map((t) => h("tr", {}, h("td", {}, t.key), h("td", {}, (t.top || []).map((v) => `${v.value} (${v.count})`).join(", "))))))
        : h("p", { class: "muted" }, "No tags.")),
  );
}

// ---------------------------------------------------------------------------------------------
// Monitors: the list (statuses polled every 10 s while the page is open; polling reads the
// API, it never touches the checks), create, pause/resume, delete, and one monitor's detail.

let poll = null;
function stopPolling() {
  if (poll !== null) clearInterval(poll);
  poll = null;
}
window.addEventListener("hashchange", stopPolling);

function statusBadge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

// The last 24 hours, an hour a segment: all checks up, some down, or none made.
function uptimeBar(hours) {
  if (!Array.isArray(hours)) return null;
  return h("div", { class: "uptime", "aria-label": "last 24 hours, oldest first" }, hours.map((x) => h("span", {
    class: x.checks === 0 ? "none" : (x.ok === x.checks ? "ok" : "bad"),
    title: `${new Date(x.start).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}: ${x.checks ? `${x.ok}/${x.checks} checks up` : "no checks"}`,
  })));
}

function pct(v) {
  return v === null || v === undefined ? "—" : `${(v * 100).toFixed(2)}%`;
}

async function monitorsPage(projectId) {
  show(projectTabs(projectId, "monitors"), h("p", { class: "loading", role: "status" }, "Loading monitors…"));
  const project = await api("GET", `/projects/${projectId}`);
  const table = h("div", { id: "monitors" });

  async function renderList() {
    const list = await api("GET", `/projects/${projectId}/monitors?limit=200`);
    table.replaceChildren(list.items.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Monitor"), h("th", {}, "Status"), h("th", {}, "Every"), h("th", {}, "Last check"), h("th", {}, ""))),
        h("tbody", {}, list.items.map((m) => h("tr", { "data-monitor": m.id },
          h("td", {}, h("a", { href: `#/projects/${projectId}/monitors/${m.id}` }, m.name), h("div", { class: "muted" }, m.url)),
          h("td", {}, statusBadge(m.status), uptimeBar(m.last_24h)),
          h("td", {}, `${m.interval_seconds / 60} min`),
          h("td", { class: "muted" }, m.last_checked_at ? new Date(m.last_checked_at).toLocaleTimeString() : "not yet"),
          h("td", {}, h("div", { class: "row" },
            h("button", {
              type: "button", class: "quiet pause",
              onclick: async (e) => {
                e.target.disabled = true;
                try {
                  await api("PATCH", `/projects/${projectId}/monitors/${m.id}/pause`, { paused: !m.paused });
                  await renderList();
                } catch (err) {
                  table.prepend(errorBox(err));
                  e.target.disabled = false;
                }
              },
            }, m.paused ? "Resume" : "Pause"),
            h("button", {
              type: "button", class: "danger",
              onclick: async () => {
                if (!confirm(`Delete the monitor "${m.name}" and its history?`)) return;
                await api("DELETE", `/projects/${projectId}/monitors/${m.id}`);
                await renderList();
              },
            }, "Delete")))))))
      : h("p", { class: "muted" }, "No monitor yet: add a URL to check it every few minutes and be told when it goes down."));
  }

  const interval = h("select", { name: "interval_seconds" },
    h("option", { value: "60" }, "every minute"),
    h("option", { value: "300", selected: true }, "every 5 minutes"),
    h("option", { value: "900" }, "every 15 minutes"));
  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "monitors"),
    table,
    h("section", { class: "card" }, h("h2", {}, "New monitor"),
      form([field("Name", "name"), field("URL", "url", "url", { placeholder: "https://example.com/health" }),
        h("label", {}, "Check", interval)], "Add monitor", async (data) => {
        await api("POST", `/projects/${projectId}/monitors`, {
          name: data.get("name"), url: data.get("url"), interval_seconds: Number(data.get("interval_seconds")),
        });
        await renderList();
      })),
  );
  await renderList();
  stopPolling();
  poll = setInterval(() => renderList().catch(() => {}), 10000);
}

async function monitorPage(projectId, monitorId) {
  show(projectTabs(projectId, "monitors"), h("p", { class: "loading", role: "status" }, "Loading…"));
  const d = await api("GET", `/projects/${projectId}/monitors/${monitorId}`);
  const m = d.monitor || d; // the detail flattens the monitor into itself
  const checks = d.recent_checks.slice().reverse();
  show(
    h("h1", {}, m.name),
    projectTabs(projectId, "monitors"),
    h("p", {}, statusBadge(m.status), " ", h("a", { href: m.url, rel: "noopener noreferrer" }, m.url)),
    h("section", { class: "figures" },
      ...[["Uptime 24 h", d.uptime.day], ["Uptime 7 d", d.uptime.week], ["Uptime 30 d", d.uptime.month]]
        .map(([label, v]) => h("div", { class: "figure" }, h("div", { class: "value" }, pct(v)), h("div", { class: "muted" }, label))),
      h("div", { class: "figure" }, h("div", { class: "value" }, d.response_ms.avg === null ? "—" : `${Math.round(d.response_ms.avg)} ms`), h("div", { class: "muted" }, "Average response, 24 h"))),
    h("section", { class: "card" }, h("h2", {}, "Recent checks"),
      h("div", { class: "checks", "aria-label": "recent checks, oldest first" },
        checks.map((c) => h("span", { class: c.ok ? "ok" : "bad", title: `${new Date(c.started_at).toLocaleString()}: ${c.ok ? "up" : (c.error || c.failure || "down")}` }))),
      chart(checks.map((c) => c.started_at), [["Response ms", checks.map((c) => c.response_ms)]], "response times")),
    h("section", { class: "card" }, h("h2", {}, "Edit"),
      form([
        field("Name", "name", "text", { value: m.name }),
        field("URL", "url", "url", { value: m.url }),
        h("label", {}, "Check", h("select", { name: "interval_seconds" },
          [[60, "every minute"], [300, "every 5 minutes"], [900, "every 15 minutes"]]
            .map(([v, label]) => h("option", { value: String(v), selected: m.interval_seconds === v }, label)))),
      ], "Save", async (data) => {
        await api("PATCH", `/projects/${projectId}/monitors/${monitorId}`, {
          name: data.get("name"), url: data.get("url"), interval_seconds: Number(data.get("interval_seconds")),
        });
        await monitorPage(projectId, monitorId);
      })),
    h("section", { class: "card" }, h("h2", {}, "Incidents"),
      d.incidents.length
        ? h("table", {}, h("tbody", {}, d.incidents.map((i) => h("tr", {},
          h("td", {}, new Date(i.started_at).toLocaleString()),
          h("td", {}, i.resolved_at ? `resolved ${new Date(i.resolved_at).toLocaleString()}` : "ongoing"),
          h("td", { class: "muted" }, i.error || i.cause)))))
        : h("p", { class: "muted" }, "No incident.")),
  );
}

// ---------------------------------------------------------------------------------------------
// API monitoring, metrics and costs, billing.

function sortable(columns, rows, initial) {
  // A table whose headers sort it: `columns` are [label, key, numeric].
  let key = initial, desc = true;
  const body = h("tbody");
  const render = () => {
    const sorted = rows.slice().sort((a, b) => {
      const x = a[key], y = b[key];
      const c = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
      return desc ? -c : c;
    });
    body.replaceChildren(...sorted.map((r) => h("tr", {}, columns.map(([, k, num, fmt]) =>
      h("td", { class: num ? "num" : undefined }, fmt ? fmt(r[k]) : r[k])))));
  };
  const head = h("tr", {}, columns.map(([label, k]) => h("th", {},
    h("button", { type: "button", class: "quiet sort", onclick: () => { desc = key === k ? !desc : true; key = k; render(); } }, label))));
  render();
  return h("table", { class: "sortable" }, h("thead", {}, head), body);
}

const ms = (v) => (v === null || v === undefined ? "—" : `${Math.round(v * 10) / 10} ms`);

async function apiMonitoringPage(projectId) {
  show(projectTabs(projectId, "api"), h("p", { class: "loading", role: "status" }, "Loading API monitoring…"));
  const filters = JSON.parse(sessionStorage.getItem("observe.api.filters") || "{}");
  const q = new URLSearchParams({ limit: "50" });
  for (const [k, v] of Object.entries(filters)) if (v) q.set(k, v);
  const [project, stats, log] = await Promise.all([
    api("GET", `/projects/${projectId}`),
    api("GET", `/projects/${projectId}/api-stats?${rangeQuery()}`),
    api("GET", `/projects/${projectId}/api-requests?${rangeQuery()}&${q}`),
  ]);
  const filterForm = h("form", { class: "row controls", id: "request-filters" },
    h("input", { name: "route", placeholder: "route", value: filters.route || "", "aria-label": "route" }),
    h("input", { name: "method", placeholder: "method", value: filters.method || "", "aria-label": "method", size: "6" }),
    h("input", { name: "status", placeholder: "status or 5xx", value: filters.status || "", "aria-label": "status", size: "8" }),
    h("input", { name: "min_duration_ms", placeholder: "min ms", value: filters.min_duration_ms || "", "aria-label": "slower than (ms)", size: "6" }),
    h("button", { type: "submit" }, "Filter"));
  filterForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const data = new FormData(filterForm);
    sessionStorage.setItem("observe.api.filters", JSON.stringify(Object.fromEntries(data)));
    apiMonitoringPage(projectId).catch((err) => show(errorBox(err)));
  });
  const items = stats.items.map((e) => ({ ...e, endpoint: `${e.method} ${e.route}` }));
  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "api"),
    rangeControls(() => apiMonitoringPage(projectId)),
    h("section", { class: "card" }, h("h2", {}, "Endpoints"),
      items.length
        ? sortable([["Endpoint", "endpoint"], ["Requests", "count", true], ["Errors", "error_rate", true, (v) => `${(v * 100).toFixed(1)}%`],
          ["Avg", "avg_ms", true, ms], ["p95", "p95_ms", true, ms], ["p99", "p99_ms", true, ms]], items, "count")
        : h("p", { class: "muted" }, "No API requests in this range. Send them to /ingest/requests from your backend's middleware.")),
    h("section", { class: "card" }, h("h2", {}, "Latency by endpoint (p50, p95, p99)"),
      items.length ? h("div", { class: "bars" }, items.slice(0, 12).map((e) => {
        const max = Math.max(...items.map((i) => i.p99_ms || 0), 1);
        return h("div", { class: "bar-row" }, h("span", { class: "bar-label" }, e.endpoint),
          h("span", { class: "bar", style: undefined, "data-w": String(Math.round(((e.p95_ms || 0) / max) * 100)) }),
          h("span", { class: "muted" }, `${ms(e.p50_ms)} · ${ms(e.p95_ms)} · ${ms(e.p99_ms)}`));
      })) : null),
    h("section", { class: "card" }, h("h2", {}, "Request log"), filterForm,
      log.items.length
        ? h("table", { id: "request-log" }, h("tbody", {}, log.items.map((r) => h("tr", {},
          h("td", {}, `${r.method} ${r.route}`), h("td", { class: "num" }, r.status_code), h("td", { class: "num" }, ms(r.duration_ms)),
          h("td", { class: "muted" }, new Date(r.timestamp).toLocaleString())))))
        : h("p", { class: "muted" }, "No request matches.")),
  );
  // Bar widths through CSSOM (the policy allows no inline style attributes).
  for (const bar of app.querySelectorAll(".bar[data-w]")) bar.style.width = `${bar.dataset.w}%`;
}

async function download(path, filename) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, credentials: "same-origin" });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  const url = URL.createObjectURL(await res.blob());
  const a = h("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function metricsPage(projectId) {
  show(projectTabs(projectId, "metrics"), h("p", { class: "loading", role: "status" }, "Loading metrics and costs…"));
  const pick = JSON.parse(sessionStorage.getItem("observe.metric") || "{}");
  const [project, costs] = await Promise.all([
    api("GET", `/projects/${projectId}`),
    api("GET", `/projects/${projectId}/costs?${rangeQuery()}&group_by=day`),
  ]);
  let metric = null, problem = null;
  if (pick.name) {
    const q = new URLSearchParams({ name: pick.name, agg: pick.agg || "sum" });
    if (pick.labels) q.set("labels", pick.labels);
    try {
      metric = await api("GET", `/projects/${projectId}/metrics/query?${rangeQuery()}&${q}`);
    } catch (err) {
      problem = errorBox(err);
    }
  }
  const aggs = ["sum", "avg", "min", "max", "last", "p95"];
  const picker = h("form", { class: "row controls", id: "metric-picker" },
    h("input", { name: "name", placeholder: "metric name", value: pick.name || "", "aria-label": "metric name", required: true }),
    h("input", { name: "labels", placeholder: "labels k:v,k:v", value: pick.labels || "", "aria-label": "labels" }),
    h("select", { name: "agg", "aria-label": "aggregation" }, aggs.map((a) => h("option", { value: a, selected: (pick.agg || "sum") === a }, a))),
    h("button", { type: "submit" }, "Show"));
  picker.addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("observe.metric", JSON.stringify(Object.fromEntries(new FormData(picker))));
    metricsPage(projectId).catch((err) => show(errorBox(err)));
  });
  const exportButtons = pick.name ? h("div", { class: "row" }, ["csv", "prometheus", "json"].map((f) => h("button", {
    type: "button", class: "quiet",
    onclick: () => download(`/projects/${projectId}/metrics/export?format=${f}&name=${encodeURIComponent(pick.name)}&${rangeQuery()}`,
      `${pick.name}.${f === "prometheus" ? "txt" : f}`).catch((err) => picker.after(errorBox(err))),
  }, `Export ${f.toUpperCase()}`))) : null;
  const money = (v) => (v === null || v === undefined ? "—" : `$${v.toFixed(4)}`);
  show(
    h("h1", {}, project.name),
    projectTabs(projectId, "metrics"),
    rangeControls(() => metricsPage(projectId)),
    h("section", { class: "card" }, h("h2", {}, "Metric"), picker, problem,
      metric ? chart(metric.series.map((p) => p.start), [[`${metric.name} (${metric.agg})`, metric.series.map((p) => p.value)]], `${metric.name} over time`) : h("p", { class: "muted" }, "Pick a metric sent to /ingest/metrics."),
      exportButtons),
    h("section", { class: "card" }, h("h2", {}, "LLM costs"),
      h("p", {}, `${money(costs.totals.cost_usd)} · ${costs.totals.input_tokens} input tokens · ${costs.totals.output_tokens} output tokens`),
      costs.models.length
        ? h("table", { id: "costs" }, h("thead", {}, h("tr", {}, h("th", {}, "Model"), h("th", {}, "Cost"), h("th", {}, "Input"), h("th", {}, "Output"))),
          h("tbody", {}, costs.models.map((m) => h("tr", {}, h("td", {}, m.model), h("td", { class: "num" }, money(m.cost_usd)),
            h("td", { class: "num" }, m.input_tokens), h("td", { class: "num" }, m.output_tokens)))))
        : h("p", { class: "muted" }, "No LLM usage in this range."),
      costs.series.length ? chart(costs.series.map((p) => p.start), [["Cost (USD)", costs.series.map((p) => p.cost_usd)]], "LLM cost by day") : null),
  );
}

async function billingPage() {
  show(h("p", { class: "loading", role: "status" }, "Loading billing…"));
  const notConfigured = () => show(h("h1", {}, "Billing"), h("section", { class: "card" },
    h("p", {}, "Billing is not configured on this server: every organisation is on its tier as set by the operator."),
    h("p", { class: "muted" }, `Your organisation is on the ${me.organisation.tier} tier.`)));
  if ((await features()).billing === false) return notConfigured();
  let sub;
  try {
    sub = await api("GET", "/billing/subscription");
  } catch (err) {
    if (err.code === "billing_disabled") return notConfigured();
    throw err;
  }
  const events = await api("GET", "/billing/events?limit=20");
  const upgrade = (plan) => h("button", {
    type: "button",
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        const c = await api("POST", "/billing/initiate", { plan });
        location.assign(c.checkout_url);
      } catch (err) {
        e.target.after(errorBox(err));
        e.target.disabled = false;
      }
    },
  }, `Upgrade to ${plan}`);
  const cancel = h("button", {
    type: "button", class: "danger",
    onclick: async () => {
      if (!confirm("Stop renewing at the end of the paid period?")) return;
      await api("POST", "/billing/cancel");
      billingPage();
    },
  }, "Cancel at period end");
  const active = sub.state === "active" || sub.state === "grace";
  show(
    h("h1", {}, "Billing"),
    h("section", { class: "card" },
      h("h2", {}, `Plan: ${sub.plan}`),
      h("p", { class: "muted" }, active
        ? `${sub.state}${sub.cancel_at_period_end ? ", ends" : ", renews"} ${new Date(sub.current_period_end).toLocaleDateString()}${sub.card ? ` · card •••• ${sub.card.last4 || ""}` : ""}${sub.grace_until ? ` · the last renewal failed; retried daily until ${new Date(sub.grace_until).toLocaleDateString()}` : ""}`
        : "The free hobby tier."),
      h("div", { class: "row" }, sub.plan !== "pro" ? upgrade("pro") : null, sub.plan !== "team" ? upgrade("team") : null,
        active && !sub.cancel_at_period_end ? cancel : null)),
    h("section", { class: "card" }, h("h2", {}, "History"),
      events.items.length
        ? h("table", {}, h("tbody", {}, events.items.map((e) => h("tr", {}, h("td", {}, e.kind.replace(/_/g, " ")),
          h("td", {}, e.plan || ""), h("td", { class: "num" }, e.amount ? `₦${(e.amount / 100).toLocaleString()}` : ""),
          h("td", { class: "muted" }, new Date(e.created_at).toLocaleString())))))
        : h("p", { class: "muted" }, "Nothing yet.")),
  );
}

// ---------------------------------------------------------------------------------------------
// Account pages reached from emails: forgot and reset password, confirm a new address.

function forgotPage() {
  const done = h("div");
  show(h("section", { class: "card" },
    h("h1", {}, "Forgot your password?"),
    done,
    form([field("Email", "email", "email", { autocomplete: "username" })], "Email me a link", async (data) => {
      await api("POST", "/auth/forgot-password", { email: data.get("email") });
      done.replaceChildren(h("p", { class: "notice", role: "status" },
        "If an account has that address, a link to choose a new password is on its way. It works once, for an hour."));
    }),
    h("p", {}, h("a", { href: "#/signin" }, "Back to sign in"))));
}

function resetPage(params) {
  const token = params.get("token") || "";
  show(h("section", { class: "card" },
    h("h1", {}, "Choose a new password"),
    form([field("New password (10 characters or more)", "new_password", "password", { autocomplete: "new-password", minlength: "10" })],
      "Set password", async (data) => {
        await api("POST", "/auth/reset-password", { token, new_password: data.get("new_password") });
        history.replaceState(null, "", "#/signin");
        signInPage();
        app.prepend(h("p", { class: "notice", role: "status" }, "Your password is changed: sign in with it."));
      })));
}

async function confirmEmailPage(params) {
  show(h("p", { class: "loading", role: "status" }, "Confirming your new address…"));
  await api("POST", "/auth/confirm-email", { token: params.get("token") || "" });
  show(h("section", { class: "card" }, h("h1", {}, "Address confirmed"),
    h("p", {}, "Your account now uses its new email address. ", h("a", { href: "#/projects" }, "Continue"), ".")));
}

// ---------------------------------------------------------------------------------------------
// Account settings: password, address, deleting the account.

function accountPage() {
  const ok = (text) => h("p", { class: "notice", role: "status" }, text);
  const pwDone = h("div"), mailDone = h("div");
  show(
    h("h1", {}, "Account"),
    h("p", { class: "muted" }, `${me.user.name} · ${me.user.email} · ${me.organisation.name} (${me.organisation.tier}, ${me.role})`),
    h("section", { class: "card" }, h("h2", {}, "Change password"), pwDone,
      form([field("Current password", "current_password", "password", { autocomplete: "current-password" }),
        field("New password (10 characters or more)", "new_password", "password", { autocomplete: "new-password", minlength: "10" })],
      "Change password", async (data) => {
        const res = await api("POST", "/auth/change-password", {
          current_password: data.get("current_password"), new_password: data.get("new_password"),
        });
        if (res && res.access_token) setToken(res);
        pwDone.replaceChildren(ok("Password changed. Your other sessions are signed out."));
      })),
    h("section", { class: "card" }, h("h2", {}, "Change email"), mailDone,
      form([field("New email", "new_email", "email"), field("Password", "password", "password", { autocomplete: "current-password" })],
        "Send a confirmation link", async (data) => {
          await api("POST", "/auth/change-email", { new_email: data.get("new_email"), password: data.get("password") });
          mailDone.replaceChildren(ok("A link is on its way to the new address; the change happens when you open it."));
        })),
    h("section", { class: "card" }, h("h2", {}, "Delete account"),
      h("p", { class: "muted" }, "Deletes your account and, if you are its only owner, your organisation with all its projects and data. This cannot be undone."),
      form([field("Password", "password", "password", { autocomplete: "current-password" })], "Delete my account", async (data) => {
        if (!confirm("Delete your account and its data for good?")) return;
        await api("POST", "/auth/delete-account", { password: data.get("password") });
        clearTimeout(renewal);
        hint(false);
        token = null;
        me = null;
        renderNav();
        go("#/signup");
      })),
  );
}

// What the server has configured (GitHub sign-in, billing): asked once per page load.
let featuresOnce = null;
function features() {
  if (featuresOnce === null) featuresOnce = api("GET", "/features").catch(() => ({}));
  return featuresOnce;
}

async function githubOffered() {
  return (await features()).github_sign_in === true;
}

// ---------------------------------------------------------------------------------------------
// The router.

async function loadMe() {
  me = await api("GET", "/auth/me");
  renderNav();
}

async function route() {
  const hash = location.hash || "#/";
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  const open = ["signin", "signup", "login", "forgot-password", "reset-password", "confirm-email"];
  try {
    if (!me && !open.includes(parts[0])) {
      go("#/signin");
      return;
    }
    switch (parts[0]) {
      case "signin": return signInPage();
      case "login": // where a failed GitHub sign-in lands: `?error=<reason>`
        signInPage();
        if (params.get("error")) app.prepend(errorBox(`GitHub sign-in failed (${params.get("error")}). Try again, or use your password.`));
        return;
      case "signup": return signUpPage();
      case "forgot-password": return forgotPage();
      case "reset-password": return resetPage(params);
      case "confirm-email": return await confirmEmailPage(params);
      case "billing": return await billingPage();
      case "account": return accountPage();
      case "projects":
        if (parts[1] && parts[2] === "settings") return await settingsPage(parts[1]);
        if (parts[1] && parts[2] === "analytics") return await analyticsPage(parts[1]);
        if (parts[1] && parts[2] === "errors" && parts[3]) return await errorPage(parts[1], parts[3]);
        if (parts[1] && parts[2] === "errors") return await errorsPage(parts[1]);
        if (parts[1] && parts[2] === "monitors" && parts[3]) return await monitorPage(parts[1], parts[3]);
        if (parts[1] && parts[2] === "monitors") return await monitorsPage(parts[1]);
        if (parts[1] && parts[2] === "api") return await apiMonitoringPage(parts[1]);
        if (parts[1] && parts[2] === "metrics") return await metricsPage(parts[1]);
        return await projectsPage();
      default:
        return go("#/projects");
    }
  } catch (err) {
    show(errorBox(err));
  }
}

async function start() {
  try {
    if (hinted() && (await refresh())) await loadMe();
  } catch (e) {
    token = null;
    me = null;
  }
  renderNav();
  window.addEventListener("hashchange", route);
  await route();
}

start();
