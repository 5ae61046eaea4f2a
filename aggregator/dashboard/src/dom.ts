// Building the page: elements, the notice line, numbers.

const notice = document.getElementById("notice") as HTMLElement;
const numbers = new Intl.NumberFormat();

/** An element with attributes and children; text children become text nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

/** The view (address fragment) the notice was said for. */
let saidFor = "";

export type NoticeKind = "error" | "warning" | "info";

/** The kind of notice shown, if any. */
export function shownNotice(): NoticeKind | undefined {
  return notice.hidden ? undefined : notice.className as NoticeKind;
}

/**
 * Says `message` in the notice line (read out by screen readers), or clears it. A `warning` says
 * the numbers shown are incomplete (`stale`); it goes with the next load, as an error does.
 */
export function say(message: string | undefined, kind: NoticeKind = "error"): void {
  // The same notice again (a live view's warning every refresh) is not announced again.
  if (message !== undefined && !notice.hidden && notice.textContent === message && notice.className === kind) return;
  notice.hidden = message === undefined;
  notice.textContent = message ?? "";
  notice.className = kind;
  saidFor = window.location.hash;
}

/**
 * After a view loaded: an error or warning said before is resolved, so it goes; a confirmation
 * ("Deleted home.") stays, since the load often follows the very action it confirms.
 */
export function clearError(): void {
  if (notice.className !== "info") say(undefined);
}

/** On navigation: a notice said for another view no longer applies. */
export function clearNoticeOfOtherView(): void {
  if (saidFor !== window.location.hash) say(undefined);
}

export function formatNumber(value: number): string {
  return numbers.format(value);
}

/** A labelled big number; `data-value` holds it unformatted. */
export function figure(id: string, label: string, value: number): HTMLElement {
  return h("div", { class: "figure card" },
    h("span", { class: "label", id: `${id}-label` }, label),
    h("span", { class: "value", id, "aria-labelledby": `${id}-label`, "data-value": String(value) }, formatNumber(value)));
}
