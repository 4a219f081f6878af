// The kaie-analytics dashboard: every number comes from the public API this page
// signs in to. The key lives in session storage only (never in a URL or a cookie).

const KEY = "kaie.api_key";
const view = document.getElementById("view");
const nav = document.getElementById("nav");
const message = document.getElementById("message");
let timer = null; // the realtime view's refresh

// ------------------------------------------------------------------ the API

class ApiError extends Error {
  constructor(status, error, retryAfter) {
    super(error ? `${error.message}: ${error.details ?? ""}` : `HTTP ${status}`);
    this.status = status;
    this.error = error || {};
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, body && body.error, response.headers.get("Retry-After"));
  }
  return body.data;
}

function explain(err) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err.message}`;
  if (err.status === 401) return "The API key is not accepted (unknown or revoked). Sign in again.";
  if (err.status === 429) return `Rate limit reached for this key; try again in ${err.retryAfter || "a few"} s.`;
  return `${err.error.message || "Error"}${err.error.details ? ": " + err.error.details : ""}`;
}

function show(text) {
  message.textContent = text;
  message.hidden = !text;
}

// ------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const number = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en"));
const percent = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`);
const seconds = (ms) => (ms === null || ms === undefined ? "–" : `${(ms / 1000).toFixed(1)} s`);

function stat(label, value, id) {
  return el("div", { class: "stat" }, el("span", { class: "label" }, label),
    el("span", { class: "value", "data-stat": id }, value));
}

function hashParams() {
  const [path, query] = location.hash.slice(1).split("?");
  return { path: path || "/", params: new URLSearchParams(query || "") };
}

function go(path, params) {
  location.hash = `${path}?${new URLSearchParams(params)}`;
}

function chart(target, traces, title, yTitle) {
  const layout = {
    title: { text: title, font: { size: 14 } },
    margin: { l: 50, r: 10, t: 40, b: 40 },
    height: 260,
    legend: { orientation: "h", y: -0.25 },
    yaxis: { title: { text: yTitle }, rangemode: "tozero" },
  };
  window.Plotly.newPlot(target, traces, layout, { displayModeBar: false, responsive: true });
}

function noData(text = "No data in this period.") {
  return el("p", { class: "empty" }, text);
}

// ------------------------------------------------------------------ periods

const PRESETS = { "7d": 7, "30d": 30, "90d": 90 };

function today(timezone) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: timezone }).format(new Date());
}

function addDays(date, days) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

function period(params) {
  const timezone = params.get("timezone") || "UTC";
  const preset = params.get("preset") || "30d";
  let start = params.get("start");
  let end = params.get("end");
  if (preset !== "custom" || !start || !end) {
    end = today(timezone);
    start = addDays(end, 1 - (PRESETS[preset] || 30));
  }
  const days = Math.round((new Date(end) - new Date(start)) / 86400000) + 1;
  return {
    timezone, preset, start, end,
    granularity: params.get("granularity") || "day",
    previous: { start: addDays(start, -days), end: addDays(start, -1) },
  };
}

function query(p, range = p, more = {}) {
  return new URLSearchParams({ start_date: range.start, end_date: range.end, timezone: p.timezone, ...more });
}

function periodPicker(path, params, p, withGranularity = true) {
  const set = (changes) => go(path, { ...Object.fromEntries(params), ...changes });
  const preset = el("select", { id: "preset", "aria-label": "Period",
    onchange: (e) => set({ preset: e.target.value, start: p.start, end: p.end }) },
    ...[["7d", "Last 7 days"], ["30d", "Last 30 days"], ["90d", "Last 90 days"], ["custom", "Custom"]]
      .map(([v, t]) => el("option", { value: v, selected: v === p.preset }, t)));
  const controls = [el("label", {}, "Period ", preset)];
  if (p.preset === "custom") {
    const date = (name, value) => el("input", { type: "date", value, "aria-label": name,
      onchange: (e) => set({ [name]: e.target.value }) });
    controls.push(el("label", {}, "From ", date("start", p.start)), el("label", {}, "to ", date("end", p.end)));
  }
  if (withGranularity) {
    controls.push(el("label", {}, "Granularity ", el("select", { id: "granularity",
      onchange: (e) => set({ granularity: e.target.value }) },
      ...["hour", "day", "week", "month"].map((g) => el("option", { value: g, selected: g === p.granularity }, g)))));
  }
  const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
  controls.push(el("label", {}, "Time zone ", el("input", { id: "timezone", list: "zones", value: p.timezone,
    onchange: (e) => set({ timezone: e.target.value || "UTC" }) }),
    el("datalist", { id: "zones" }, ["UTC", ...zones].map((z) => el("option", { value: z })))));
  return el("form", { class: "controls", onsubmit: (e) => e.preventDefault() }, controls);
}

// ------------------------------------------------------------------ views

async function overview() {
  const workflows = await api("/v1/workflows");
  const list = el("div", { class: "grid" });
  view.replaceChildren(el("h1", {}, "Workflows"), el("p", { class: "hint" }, "The last 30 days, per day."), list);
  if (!workflows.length) list.append(noData("No workflows yet: send events to see them here."));
  const p = period(new URLSearchParams());
  for (const wf of workflows) {
    const spark = el("div", { class: "spark" });
    const card = el("a", { class: "card workflow", href: `#/workflow/${encodeURIComponent(wf.workflow_id)}` },
      el("h2", {}, wf.name || wf.workflow_id), el("div", { class: "stats" }), spark);
    list.append(card);
    api(`/v1/analytics/workflows/${encodeURIComponent(wf.workflow_id)}?` + query(p, p,
      { metrics: "total_executions,success_rate,average_duration_ms" }))
      .then((data) => {
        card.querySelector(".stats").append(stat("Executions", number(data.metrics.total_executions)),
          stat("Success", percent(data.metrics.success_rate)),
          stat("Average", seconds(data.metrics.average_duration_ms)));
        window.Plotly.newPlot(spark, [{ x: data.daily_metrics.map((b) => b.date),
          y: data.daily_metrics.map((b) => b.executions), type: "scatter", mode: "lines",
          line: { width: 2 }, hoverinfo: "x+y" }],
        { height: 60, margin: { l: 0, r: 0, t: 0, b: 0 }, xaxis: { visible: false }, yaxis: { visible: false } },
        { displayModeBar: false, staticPlot: true, responsive: true });
      })
      .catch((err) => card.append(el("p", { class: "error" }, explain(err))));
  }
}

async function workflowPage(id, params) {
  const p = period(params);
  const base = `/v1/analytics/workflows/${encodeURIComponent(id)}`;
  const g = { granularity: p.granularity };
  const [now, before, perf, perfBefore] = await Promise.all([
    api(`${base}?` + query(p, p, g)), api(`${base}?` + query(p, p.previous, g)),
    api(`${base}/performance?` + query(p)), api(`${base}/performance?` + query(p, p.previous)),
  ]);
  const m = now.metrics;
  const charts = el("div", { class: "charts" });
  view.replaceChildren(
    el("h1", {}, id), periodPicker(`/workflow/${encodeURIComponent(id)}`, params, p),
    el("div", { class: "stats big" },
      stat("Executions", number(m.total_executions), "total_executions"),
      stat("Success rate", percent(m.success_rate), "success_rate"),
      stat("Average duration", seconds(m.average_duration_ms), "average_duration_ms"),
      stat("p95 duration", seconds(perf.performance.execution_time.p95_ms), "p95_ms"),
      stat("Customers", number(m.unique_customers), "unique_customers"),
      stat("Satisfaction", m.customer_satisfaction ?? "–", "customer_satisfaction")),
    el("p", { class: "trends" }, `Executions ${now.trends.execution_trend}, success rate `
      + `${now.trends.success_rate_trend}, duration ${now.trends.duration_trend} (against the previous period).`),
    charts);
  if (!m.total_executions) {
    charts.append(noData());
    return;
  }
  const x = now.daily_metrics.map((b) => b.date);
  const prev = (field) => before.daily_metrics.map((b) => b[field]);
  const pair = (field, scale = 1) => [
    { x, y: now.daily_metrics.map((b) => (b[field] === null ? null : b[field] * scale)), name: "this period", type: "scatter" },
    { x, y: prev(field).map((v) => (v === null ? null : v * scale)), name: "previous period", type: "scatter", line: { dash: "dot" } },
  ];
  const box = () => { const d = el("div", { class: "chart" }); charts.append(d); return d; };
  chart(box(), pair("executions"), "Executions", "executions");
  chart(box(), pair("success_rate", 100), "Success rate", "%");
  const p95 = (perfRun, name, dash) => ({ x: [x[0], x[x.length - 1]],
    y: [perfRun.performance.execution_time.p95_ms, perfRun.performance.execution_time.p95_ms].map((v) => (v === null ? null : v / 1000)),
    name, mode: "lines", line: { dash } });
  chart(box(), [...pair("average_duration_ms", 0.001).map((t) => ({ ...t, name: `average, ${t.name}` })),
    p95(perf, "p95, this period", "dash"), p95(perfBefore, "p95, previous period", "dashdot")], "Durations", "seconds");
  const channels = Object.entries(m.channel_breakdown || {});
  if (channels.length) {
    chart(box(), [{ x: channels.map(([c]) => c), y: channels.map(([, n]) => n), type: "bar", name: "executions" }],
      "Executions by channel", "executions");
  }
  const errors = Object.entries(perf.performance.error_rate.by_error_type || {});
  view.append(el("h2", {}, "Error types"), errors.length
    ? table(["Error type", "Share of executions"], errors.map(([t, r]) => [t, percent(r)]))
    : noData("No failed executions."));
  const nodes = perf.performance.node_performance || [];
  view.append(el("h2", {}, "Nodes"), nodes.length
    ? table(["Node", "Type", "Executions", "Success rate", "Average duration", "Errors"],
      nodes.map((n) => [n.node_id, n.type ?? "–", number(n.execution_count), percent(n.success_rate),
        seconds(n.average_duration_ms), number(n.error_count)]))
    : noData("No node events."));
}

function table(headers, rows) {
  return el("div", { class: "table" }, el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

async function customers(params) {
  const p = period(params);
  const filters = {};
  for (const name of ["channel", "customer_segment"]) if (params.get(name)) filters[name] = params.get(name);
  const data = await api("/v1/analytics/customers/engagement?" + query(p, p, filters));
  const e = data.engagement;
  const set = (changes) => go("/customers", { ...Object.fromEntries(params), ...changes });
  const filter = (name, label) => el("label", {}, `${label} `, el("input", { name, value: params.get(name) || "",
    onchange: (ev) => set({ [name]: ev.target.value }) }));
  view.replaceChildren(el("h1", {}, "Customers"), periodPicker("/customers", params, p, false),
    el("form", { class: "controls", onsubmit: (ev) => ev.preventDefault() },
      filter("channel", "Channel"), filter("customer_segment", "Segment")),
    el("div", { class: "stats big" },
      stat("Customers", number(e.total_customers), "total_customers"),
      stat("Active", number(e.active_customers), "active_customers"),
      stat("New", number(e.new_customers)), stat("Returning", number(e.returning_customers)),
      stat("Session", e.average_session_duration === null ? "–" : `${e.average_session_duration} s`),
      stat("Satisfaction", e.customer_satisfaction ?? "–"), stat("NPS", e.net_promoter_score ?? "–")));
  const channels = Object.entries(e.engagement_by_channel);
  view.append(el("h2", {}, "By channel"), channels.length
    ? table(["Channel", "Customers", "Average session", "Satisfaction"],
      channels.map(([c, v]) => [c, number(v.customers), v.average_session_duration === null ? "–" : `${v.average_session_duration} s`, v.satisfaction ?? "–"]))
    : noData());
  const journeyBox = el("section", { class: "journey" });
  view.append(el("h2", {}, "Journeys"), journeyBox);
  await journey(journeyBox, p, params.get("journey_type"), params);
}

async function journey(box, p, type, params) {
  const extra = type ? { journey_type: type } : {};
  try {
    const data = await api("/v1/analytics/customers/journey?" + query(p, p, extra));
    const j = data.journey;
    if (!j.total_journeys) { box.replaceChildren(noData("No journeys in this period.")); return; }
    const funnel = el("div", { class: "chart" });
    box.replaceChildren(el("p", {}, `${j.journey_type ?? "All journeys"}: ${number(j.total_journeys)} journeys, `
      + `${percent(j.completion_rate)} completed.`), funnel,
    table(["Step", "Reached", "Completion", "Dropped", "Common reasons"], j.journey_steps.map((s) => {
      const drop = (j.drop_off_points || []).find((d) => d.step === s.step);
      return [`${s.step}. ${s.name ?? ""}`, number(s.customers), percent(s.completion_rate),
        drop ? number(drop.drop_off_count) : "–", drop ? drop.common_reasons.join(", ") : ""];
    })));
    window.Plotly.newPlot(funnel, [{ type: "funnel", y: j.journey_steps.map((s) => `${s.step}. ${s.name ?? ""}`),
      x: j.journey_steps.map((s) => s.customers) }], { height: 260, margin: { l: 140, r: 10, t: 10, b: 30 } },
    { displayModeBar: false, responsive: true });
  } catch (err) {
    // A tenant with several journey types must pick one: the API's error lists them.
    const listed = err instanceof ApiError && err.error.field === "journey_type" && /one of: (.*)$/.exec(err.error.details || "");
    if (!listed) throw err;
    box.replaceChildren(el("p", {}, "Pick a journey type:"), el("div", { class: "choices" },
      listed[1].split(", ").map((t) => el("button", { type: "button",
        onclick: () => go("/customers", { ...Object.fromEntries(params), journey_type: t }) }, t))));
  }
}

async function realtime() {
  const render = async () => {
    const data = await api("/v1/analytics/realtime");
    const c = data.current_metrics;
    view.replaceChildren(el("h1", {}, "Realtime"), el("p", { class: "hint" }, `Updated ${new Date(data.timestamp).toLocaleTimeString()}; refreshes every 5 seconds.`),
      el("div", { class: "stats big" },
        stat("Running executions", number(c.active_executions), "active_executions"),
        stat("Active workflows", number(c.active_workflows), "active_workflows"),
        stat("Messages, last hour", number(c.messages_in_last_hour), "messages_in_last_hour"),
        stat("Reply time", seconds(c.average_response_time_ms)),
        stat("System health", c.system_health, "system_health")),
      el("h2", {}, "Workflows"), data.workflow_metrics.length
        ? table(["Workflow", "Running", "Messages, last hour", "Reply time"], data.workflow_metrics.map((w) =>
          [w.name || w.workflow_id, number(w.active_executions), number(w.messages_in_last_hour), seconds(w.average_response_time_ms)]))
        : noData("Nothing in the last hour."),
      el("h2", {}, "Channels"), Object.keys(data.channel_metrics).length
        ? table(["Channel", "Active conversations", "Messages, last hour"], Object.entries(data.channel_metrics).map(([ch, v]) =>
          [ch, number(v.active_conversations), number(v.messages_in_last_hour)]))
        : noData("Nothing in the last hour."));
  };
  await render();
  timer = setInterval(() => render().then(() => show("")).catch((err) => show(explain(err))), 5000);
}

const REPORT_METRICS = ["total_executions", "successful_executions", "failed_executions", "success_rate",
  "average_duration_ms", "median_duration_ms", "p95_duration_ms", "total_messages_sent",
  "total_messages_received", "unique_customers", "customer_satisfaction"];

async function reportsPage(params) {
  const p = period(params);
  const list = el("div", {});
  const form = el("form", { class: "card", id: "report-form", onsubmit: async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const body = { name: f.get("name"), metrics: f.getAll("metrics"), format: f.get("format"),
      filters: { start_date: p.start, end_date: p.end, timezone: p.timezone } };
    if (f.get("group_by")) body.group_by = [f.get("group_by")];
    if (f.get("granularity")) body.granularity = f.get("granularity");
    try {
      await api("/v1/analytics/reports", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      show("");
      await refresh();
    } catch (err) { show(explain(err)); }
  } },
  el("h2", {}, "New report"),
  el("label", {}, "Name ", el("input", { name: "name", required: true, maxlength: 200, value: "Workflow report" })),
  el("fieldset", {}, el("legend", {}, "Metrics"), REPORT_METRICS.map((m) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "metrics", value: m, checked: ["total_executions", "success_rate"].includes(m) }), ` ${m.replaceAll("_", " ")}`))),
  el("label", {}, "Group by ", el("select", { name: "group_by" }, ["", "workflow_id", "channel", "customer_segment"].map((g) => el("option", { value: g }, g || "nothing")))),
  el("label", {}, "Granularity ", el("select", { name: "granularity" }, ["", "hour", "day", "week", "month"].map((g) => el("option", { value: g }, g || "the whole period")))),
  el("label", {}, "Format ", el("select", { name: "format" }, ["pdf", "csv", "json"].map((f) => el("option", { value: f }, f)))),
  el("button", { type: "submit" }, "Create report"));
  const refresh = async () => {
    const reports = await api("/v1/analytics/reports");
    list.replaceChildren(reports.length ? table(["Report", "Format", "Status", "Created", ""], reports.map((r) =>
      [r.name, r.format, r.status, new Date(r.created_at).toLocaleString(),
        r.status === "completed" ? el("a", { href: r.download_url, download: "" }, "Download") : (r.error ? r.error.details : "")]))
      : noData("No reports yet."));
    if (reports.some((r) => r.status === "generating")) setTimeout(() => refresh().catch((e) => show(explain(e))), 1000);
  };
  view.replaceChildren(el("h1", {}, "Reports"), periodPicker("/reports", params, p, false), form, el("h2", {}, "Reports"), list);
  await refresh();
}

// ------------------------------------------------------------------ sign-in and routing

function signIn() {
  nav.hidden = true;
  view.replaceChildren(document.getElementById("sign-in").content.cloneNode(true));
  const form = document.getElementById("sign-in-form");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, form.elements["api-key"].value.trim());
    try {
      await api("/v1/workflows");
      show("");
      route();
    } catch (err) {
      sessionStorage.removeItem(KEY);
      show(explain(err));
    }
  });
  document.getElementById("api-key").focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.hash = "#/";
  route();
});

async function route() {
  clearInterval(timer);
  if (!sessionStorage.getItem(KEY)) { signIn(); return; }
  nav.hidden = false;
  const { path, params } = hashParams();
  view.replaceChildren(el("p", { class: "loading" }, "Loading…"));
  try {
    if (path.startsWith("/workflow/")) await workflowPage(decodeURIComponent(path.slice(10)), params);
    else if (path === "/customers") await customers(params);
    else if (path === "/realtime") await realtime();
    else if (path === "/reports") await reportsPage(params);
    else await overview();
    show("");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) { sessionStorage.removeItem(KEY); signIn(); }
    show(explain(err));
    view.querySelector(".loading")?.remove();
  }
  view.focus();
}

window.addEventListener("hashchange", route);
window.addEventListener("load", route);
