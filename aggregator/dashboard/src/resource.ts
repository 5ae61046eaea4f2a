// One resource: its numbers and series at the granularity asked for, its retention, and (for an
// admin token) its deletion.
import { type CountsQuery, type Granularity, type Resource, api } from "./api";
import { drawChart } from "./chart";
import { confirmThen } from "./confirm";
import { figure, h, say } from "./dom";
import { rangeControl, rangeQuery } from "./range";
import { View } from "./view";

export async function showResource(view: View, id: string, admin: boolean): Promise<void> {
  let resource: Resource;
  try {
    resource = await api((client) => client.resources.get(id));
  } catch (error) {
    view.failed(error);
    return;
  }
  const granularity = h("select", { name: "granularity", id: "granularity" },
    h("option", { value: "" }, "Automatic"),
    h("option", { value: "minute" }, "Minutes"),
    h("option", { value: "hour" }, "Hours"),
    h("option", { value: "day" }, "Days"));
  const form = h("form", { class: "controls", "aria-label": "What to show" },
    ...rangeControl(),
    h("label", {}, "Granularity ", granularity),
    h("button", { type: "submit" }, "Show"),
    h("span", { id: "live", class: "live", hidden: "" }));
  const totals = h("section", { class: "totals", "aria-label": "Totals" });
  const chart = h("section", { class: "chart card", "aria-label": `Hits and visitors of ${id} over time` });
  const retention = resource.retention_days === null ? "day counts kept forever" : `counts kept ${resource.retention_days} days`;
  const header = h("section", { class: "card resource" },
    h("p", {}, h("a", { href: "#/" }, "← Overview")),
    h("h2", { id: "resource-name" }, resource.name),
    h("p", { class: "meta" }, `${resource.resource_id} · ${retention} · created ${new Date(resource.created_at).toLocaleString()}`));
  if (admin) header.append(deleteButton(view, resource));
  view.show(header, form, totals, chart);
  granularity.addEventListener("change", () => form.requestSubmit());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void refresh(view, id, form, totals, chart);
  });
  await refresh(view, id, form, totals, chart);
}

function deleteButton(view: View, resource: Resource): HTMLElement {
  const button = h("button", { type: "button", class: "danger", id: "delete-resource" }, "Delete resource");
  button.addEventListener("click", () => confirmThen(button, `Delete ${resource.resource_id} and all its counts?`, async () => {
    try {
      await api((client) => client.resources.delete(resource.resource_id));
    } catch (error) {
      view.failed(error);
      return;
    }
    window.location.hash = "#/";
    say(`Deleted ${resource.resource_id}.`, "info");
  }));
  return button;
}

async function refresh(view: View, id: string, form: HTMLFormElement, totals: HTMLElement, chart: HTMLElement): Promise<void> {
  view.stopLive();
  const range = rangeQuery(form);
  if (range === undefined) {
    say("Choose when the custom range starts and ends.");
    return;
  }
  const chosen = String(new FormData(form).get("granularity") ?? "");
  try {
    const asked = { ...range, granularity: (chosen || range.granularity) as Granularity | undefined };
    const hits = await api((client) => client.hits.count(id, asked as CountsQuery));
    view.loaded(hits.stale);
    totals.replaceChildren(figure("total-hits", "Hits", hits.count), figure("total-visitors", "Visitors", hits.uniques));
    drawChart(chart, hits.series);
  } catch (error) {
    view.failed(error);
  }
  view.afterRefresh(form, () => void refresh(view, id, form, totals, chart));
}
