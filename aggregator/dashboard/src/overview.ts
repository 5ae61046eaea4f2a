// The overview: totals, the chart and the top resources of every resource or those under a
// prefix, over a range; the last hour refreshes itself.
import { type Top, api } from "./api";
import { drawChart, sparkline } from "./chart";
import { figure, formatNumber, h, say } from "./dom";
import { rangeControl, rangeQuery } from "./range";
import { View } from "./view";

/** Resources listed in the overview's table. */
const TOP_LIMIT = 10;

interface Parts { form: HTMLFormElement; totals: HTMLElement; chart: HTMLElement; top: HTMLElement }

export async function showOverview(view: View): Promise<void> {
  const form = h("form", { class: "controls", "aria-label": "What to show" },
    ...rangeControl(),
    h("label", {}, "Resources starting with ",
      h("input", { name: "prefix", id: "prefix", placeholder: "e.g. blog.", pattern: "[A-Za-z0-9._\\-]*", maxlength: "128" })),
    h("button", { type: "submit" }, "Show"),
    h("span", { id: "live", class: "live", hidden: "" }));
  const parts: Parts = {
    form,
    totals: h("section", { class: "totals", "aria-label": "Totals" }),
    chart: h("section", { class: "chart card", "aria-label": "Hits and visitors over time" }),
    top: h("section", { class: "top card", "aria-label": "Top resources" }),
  };
  view.show(form, parts.totals, parts.chart, parts.top);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void refresh(view, parts);
  });
  if (!(await hasResources(view))) return;
  await refresh(view, parts);
}

/** The empty state: without resources there is nothing to count yet, so show how to start. */
async function hasResources(view: View): Promise<boolean> {
  let list;
  try {
    list = await api((client) => client.resources.list({ limit: 1 }));
  } catch (error) {
    view.failed(error);
    return false;
  }
  if (list.resources.length > 0) return true;
  const snippet = `<script async src="https://YOUR-EDGE/hitcount.js"\n        data-endpoint="https://YOUR-EDGE"></script>`;
  const again = h("button", { type: "button", id: "reload" }, "Check again");
  again.addEventListener("click", () => void showOverview(view));
  view.show(h("section", { class: "card empty" },
    h("h2", {}, "No resources yet"),
    h("p", {}, "Add the beacon to your pages; each page view creates or counts a resource (with a pattern such as blog.*, see the README). Or create one with POST /resources."),
    h("pre", {}, h("code", {}, snippet)),
    again));
  return false;
}

async function refresh(view: View, parts: Parts): Promise<void> {
  view.stopLive();
  const range = rangeQuery(parts.form);
  if (range === undefined) {
    say("Choose when the custom range starts and ends.");
    return;
  }
  const prefix = String(new FormData(parts.form).get("prefix") ?? "").trim();
  try {
    // The top resources come with their trends: one request, not one per row.
    const [top, series] = await Promise.all([
      api((client) => client.stats.top({ ...range, prefix, limit: TOP_LIMIT, series: true })),
      api((client) => client.stats.series({ ...range, prefix })),
    ]);
    view.loaded(top.stale ?? series.stale);
    parts.totals.replaceChildren(figure("total-hits", "Hits", top.total.count), figure("total-visitors", "Visitors", top.total.uniques));
    drawChart(parts.chart, series.series);
    showTop(parts.top, top);
  } catch (error) {
    view.failed(error);
  }
  view.afterRefresh(parts.form, () => void refresh(view, parts));
}

function showTop(box: HTMLElement, top: Top): void {
  const rows = top.resources.map((item) => h("tr", {},
    h("th", { scope: "row" }, h("a", { href: `#/resources/${encodeURIComponent(item.resource_id)}` }, item.resource_id)),
    h("td", { class: "trend" }, sparkline(item.series ?? [])),
    h("td", { "data-value": String(item.count) }, formatNumber(item.count)),
    h("td", { "data-value": String(item.uniques) }, formatNumber(item.uniques))));
  if (rows.length === 0) rows.push(h("tr", {}, h("td", { colspan: "4" }, "No hits in this range.")));
  box.replaceChildren(h("table", { id: "top" },
    h("caption", {}, "Top resources"),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Resource"),
      h("th", { scope: "col" }, "Trend"),
      h("th", { scope: "col" }, "Hits"),
      h("th", { scope: "col" }, "Visitors"))),
    h("tbody", {}, ...rows)));
}
