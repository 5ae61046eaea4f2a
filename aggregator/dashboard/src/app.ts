// The dashboard: sign in with an API token (read scope), then the overview of every resource or
// a section of them: totals, a chart of the series, the top resources, live for the last hour.
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import "./app.css";
import { ApiFailure, ResourceList, SeriesResponse, TopResponse, get, query, signIn, signOut, signedIn } from "./api";

/** How often the last hour refreshes itself (the read-after-write bound is about a second). */
const LIVE_REFRESH_MS = 5_000;
/** Resources listed in the overview's table. */
const TOP_LIMIT = 10;

interface Range { label: string; window?: string; granularity?: "minute" | "hour" | "day"; live?: boolean }

const RANGES: Record<string, Range> = {
  "1h": { label: "Last hour (live)", window: "1h", granularity: "minute", live: true },
  "24h": { label: "Last 24 hours", window: "24h", granularity: "hour" },
  "7d": { label: "Last 7 days", window: "7d", granularity: "hour" },
  "30d": { label: "Last 30 days", window: "30d", granularity: "day" },
  custom: { label: "Custom…" },
};

const app = document.getElementById("app") as HTMLElement;
const notice = document.getElementById("notice") as HTMLElement;
const signOutButton = document.getElementById("sign-out") as HTMLButtonElement;
const numbers = new Intl.NumberFormat();
let liveTimer: number | undefined;
let chart: uPlot | undefined;

/** An element with attributes and children; text children become text nodes. */
function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

function say(message: string | undefined, kind: "error" | "info" = "error"): void {
  notice.hidden = message === undefined;
  notice.textContent = message ?? "";
  notice.className = kind;
}

function stopLive(): void {
  window.clearTimeout(liveTimer);
  liveTimer = undefined;
}

function showSignIn(message?: string): void {
  stopLive();
  chart?.destroy();
  chart = undefined;
  signOut();
  signOutButton.hidden = true;
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: "" });
  const form = h("form", { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    h("h2", { id: "sign-in-title" }, "Sign in"),
    h("p", {}, "Paste an API token with the read scope (create one with POST /tokens, or use the admin token the aggregator printed at its first start)."),
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void trySignIn(input.value.trim());
  });
  app.replaceChildren(form);
  say(message);
  input.focus();
}

async function trySignIn(value: string): Promise<void> {
  signIn(value);
  try {
    await get<TopResponse>(`/stats/top?${query({ window: "1m", limit: 1 })}`);
  } catch (error) {
    showSignIn(signInRefusal(error));
    return;
  }
  say(undefined);
  signOutButton.hidden = false;
  await showOverview();
}

function signInRefusal(error: unknown): string {
  if (!(error instanceof ApiFailure)) return String(error);
  if (error.status === 401) return "That token is unknown or was revoked. Check it and try again.";
  if (error.status === 403) return "That token cannot read counts: it needs the read scope.";
  if (error.status === 429) return "Too many attempts; wait a moment and try again.";
  return error.message;
}

/** What the overview's controls ask for; `undefined` when a custom range is incomplete. */
function selection(form: HTMLFormElement): Record<string, string | undefined> | undefined {
  const data = new FormData(form);
  const range = RANGES[String(data.get("range"))] ?? RANGES["24h"];
  const prefix = String(data.get("prefix") ?? "").trim();
  if (range.window) return { window: range.window, granularity: range.granularity, prefix };
  const start = new Date(String(data.get("start"))).getTime();
  const end = new Date(String(data.get("end"))).getTime();
  if (Number.isNaN(start) || Number.isNaN(end)) return undefined;
  return { start_time: String(start), end_time: String(end), prefix };
}

function controls(): HTMLFormElement {
  const options = Object.entries(RANGES).map(([value, range]) =>
    h("option", value === "24h" ? { value, selected: "" } : { value }, range.label));
  const form = h("form", { class: "controls", "aria-label": "What to show" },
    h("label", {}, "Range ", h("select", { name: "range", id: "range" }, ...options)),
    h("span", { class: "custom", hidden: "" },
      h("label", {}, "From ", h("input", { type: "datetime-local", name: "start" })),
      h("label", {}, "to ", h("input", { type: "datetime-local", name: "end" }))),
    h("label", {}, "Resources starting with ",
      h("input", { name: "prefix", id: "prefix", placeholder: "e.g. blog.", pattern: "[A-Za-z0-9._\\-]*", maxlength: "128" })),
    h("button", { type: "submit" }, "Show"),
    h("span", { id: "live", class: "live", hidden: "" }));
  const custom = form.querySelector(".custom") as HTMLElement;
  form.range.addEventListener("change", () => {
    custom.hidden = form.range.value !== "custom";
    if (form.range.value !== "custom") form.requestSubmit();
  });
  return form;
}

async function showOverview(): Promise<void> {
  const form = controls();
  const totals = h("section", { class: "totals", "aria-label": "Totals" });
  const chartBox = h("section", { class: "chart card", "aria-label": "Hits and visitors over time" });
  const top = h("section", { class: "top card", "aria-label": "Top resources" });
  app.replaceChildren(form, totals, chartBox, top);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void refresh(form, totals, chartBox, top);
  });
  if (!(await hasResources())) return;
  await refresh(form, totals, chartBox, top);
}

/** The empty state: without resources there is nothing to count yet, so show how to start. */
async function hasResources(): Promise<boolean> {
  let list: ResourceList;
  try {
    list = await get<ResourceList>("/resources?limit=1");
  } catch (error) {
    failed(error);
    return false;
  }
  if (list.resources.length > 0) return true;
  const snippet = `<script async src="https://YOUR-EDGE/hitcount.js"\n        data-endpoint="https://YOUR-EDGE"></script>`;
  app.replaceChildren(h("section", { class: "card empty" },
    h("h2", {}, "No resources yet"),
    h("p", {}, "Add the beacon to your pages; each page view creates or counts a resource (with a pattern such as blog.*, see the README). Or create one with POST /resources."),
    h("pre", {}, h("code", {}, snippet)),
    h("button", { type: "button", id: "reload" }, "Check again")));
  (document.getElementById("reload") as HTMLButtonElement).addEventListener("click", () => void showOverview());
  return false;
}

async function refresh(form: HTMLFormElement, totals: HTMLElement, chartBox: HTMLElement, top: HTMLElement): Promise<void> {
  stopLive();
  const asked = selection(form);
  const range = RANGES[form.range.value];
  if (asked === undefined) {
    say("Choose when the custom range starts and ends.");
    return;
  }
  try {
    const [topAnswer, series] = await Promise.all([
      get<TopResponse>(`/stats/top?${query({ ...asked, granularity: undefined, limit: TOP_LIMIT })}`),
      get<SeriesResponse>(`/stats/series?${query(asked)}`),
    ]);
    say(undefined);
    showTotals(totals, topAnswer);
    showChart(chartBox, series);
    showTop(top, topAnswer);
  } catch (error) {
    failed(error);
  }
  // Signed out by the failure: the overview is gone, and so is its refresh.
  const live = document.getElementById("live");
  if (!signedIn() || live === null) return;
  live.hidden = !range?.live;
  if (range?.live) {
    live.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
    liveTimer = window.setTimeout(() => void refresh(form, totals, chartBox, top), LIVE_REFRESH_MS);
  }
}

function failed(error: unknown): void {
  if (error instanceof ApiFailure && error.status === 401) {
    showSignIn("Your session ended: the token was revoked. Sign in again.");
  } else if (error instanceof ApiFailure) {
    say(error.message);
  } else {
    say(String(error));
  }
}

function figure(id: string, label: string, value: number): HTMLElement {
  return h("div", { class: "figure card" },
    h("span", { class: "label", id: `${id}-label` }, label),
    h("span", { class: "value", id, "aria-labelledby": `${id}-label`, "data-value": String(value) }, numbers.format(value)));
}

function showTotals(totals: HTMLElement, top: TopResponse): void {
  totals.replaceChildren(figure("total-hits", "Hits", top.total.count), figure("total-visitors", "Visitors", top.total.uniques));
}

function showChart(box: HTMLElement, series: SeriesResponse): void {
  chart?.destroy();
  const times = series.series.map((point) => Date.parse(point.start_time) / 1000);
  const data: uPlot.AlignedData = [times, series.series.map((p) => p.count), series.series.map((p) => p.uniques)];
  const width = Math.max(280, box.clientWidth - 32);
  chart = new uPlot({
    width,
    height: 260,
    series: [
      {},
      { label: "Hits", stroke: "#2f6fde", width: 2, fill: "rgba(47,111,222,0.08)" },
      { label: "Visitors", stroke: "#e0782f", width: 2 },
    ],
    axes: [{}, { size: 60 }],
    scales: { y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
  }, data, box);
  box.setAttribute("data-points", String(times.length));
}

function showTop(box: HTMLElement, top: TopResponse): void {
  const rows = top.resources.map((item) => h("tr", {},
    h("th", { scope: "row" }, item.resource_id),
    h("td", { "data-value": String(item.count) }, numbers.format(item.count)),
    h("td", { "data-value": String(item.uniques) }, numbers.format(item.uniques))));
  if (rows.length === 0) {
    rows.push(h("tr", {}, h("td", { colspan: "3" }, "No hits in this range.")));
  }
  box.replaceChildren(h("table", { id: "top" },
    h("caption", {}, "Top resources"),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Resource"), h("th", { scope: "col" }, "Hits"), h("th", { scope: "col" }, "Visitors"))),
    h("tbody", {}, ...rows)));
}

window.addEventListener("resize", () => {
  const box = document.querySelector(".chart") as HTMLElement | null;
  if (chart && box) chart.setSize({ width: Math.max(280, box.clientWidth - 32), height: 260 });
});
signOutButton.addEventListener("click", () => showSignIn("Signed out."));

if (!signedIn()) showSignIn();
