// Asking before a deletion, inline (a dialog of the page, not the browser's), keyboard first.
import { h } from "./dom";

/** Replaces `trigger` with a question and two buttons; `action` (given the question) runs only on "Delete". */
export function confirmThen(trigger: HTMLElement, question: string, action: (asked: HTMLElement) => Promise<void>): void {
  const yes = h("button", { type: "button", class: "danger" }, "Delete");
  const no = h("button", { type: "button", class: "secondary" }, "Cancel");
  const box = h("span", { class: "confirm", role: "group", "aria-label": question }, h("span", {}, question), yes, no);
  trigger.replaceWith(box);
  no.addEventListener("click", () => box.replaceWith(trigger));
  yes.addEventListener("click", () => {
    yes.setAttribute("disabled", "");
    void action(box);
  });
  no.focus();
}
