// The range picker every view shares: the last hour (live), 24 hours, 7 or 30 days, or custom.
import type { Granularity } from "./api";
import { h } from "./dom";

export interface Range { label: string; window?: string; granularity?: Granularity; live?: boolean }

export const RANGES: Record<string, Range> = {
  "1h": { label: "Last hour (live)", window: "1h", granularity: "minute", live: true },
  "24h": { label: "Last 24 hours", window: "24h", granularity: "hour" },
  "7d": { label: "Last 7 days", window: "7d", granularity: "hour" },
  "30d": { label: "Last 30 days", window: "30d", granularity: "day" },
  custom: { label: "Custom…" },
};

/** The range select and the custom range's two inputs, for a form. */
export function rangeControl(): HTMLElement[] {
  const options = Object.entries(RANGES).map(([value, range]) =>
    h("option", value === "24h" ? { value, selected: "" } : { value }, range.label));
  const select = h("select", { name: "range", id: "range" }, ...options);
  const custom = h("span", { class: "custom", hidden: "" },
    h("label", {}, "From ", h("input", { type: "datetime-local", name: "start" })),
    h("label", {}, "to ", h("input", { type: "datetime-local", name: "end" })));
  select.addEventListener("change", () => {
    custom.hidden = select.value !== "custom";
    if (select.value !== "custom") select.form?.requestSubmit();
  });
  return [h("label", {}, "Range ", select), custom];
}

/** The query parameters of the form's range; `undefined` when a custom range is incomplete. */
export interface RangeQuery { window?: string; start_time?: string; end_time?: string; granularity?: Granularity }

export function rangeQuery(form: HTMLFormElement): RangeQuery | undefined {
  const data = new FormData(form);
  const range = RANGES[String(data.get("range"))] ?? RANGES["24h"];
  if (range.window) return { window: range.window, granularity: range.granularity };
  const start = new Date(String(data.get("start"))).getTime();
  const end = new Date(String(data.get("end"))).getTime();
  if (Number.isNaN(start) || Number.isNaN(end)) return undefined;
  return { start_time: String(start), end_time: String(end) };
}
