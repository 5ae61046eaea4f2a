// Managing (admin tokens only): resources made and deleted, API tokens made (shown once) and
// revoked. Every deletion asks first.
import type { HitcountClient, Scope } from "../../../sdk-js/src/client";
import { type Resource, type Token, api } from "./api";
import { confirmThen } from "./confirm";
import { h, say } from "./dom";
import { View } from "./view";

/** Resources the list shows; the rest are a click on "More" away. */
const RESOURCES_PAGE = 100;
const SCOPES = ["read", "ingest", "admin"];

export async function showManage(view: View): Promise<void> {
  const resources = h("section", { class: "card", "aria-labelledby": "resources-title" });
  const tokens = h("section", { class: "card", "aria-labelledby": "tokens-title" });
  view.show(resources, tokens);
  await Promise.all([drawResources(view, resources), drawTokens(view, tokens)]);
}

async function drawResources(view: View, box: HTMLElement): Promise<void> {
  const list = h("ul", { id: "resource-list", class: "items" });
  const more = h("button", { type: "button", class: "secondary", hidden: "" }, "More");
  const form = h("form", { id: "create-resource", class: "controls", "aria-label": "Create a resource" },
    h("label", {}, "Name ", h("input", { name: "name", required: "", maxlength: "200" })),
    h("label", {}, "Id (optional) ", h("input", { name: "resource_id", pattern: "[A-Za-z0-9._\\-]+", maxlength: "128" })),
    h("label", {}, "Retention in days (optional) ", h("input", { name: "retention_days", type: "number", min: "1", max: "36500" })),
    h("button", { type: "submit" }, "Create resource"));
  box.replaceChildren(h("h2", { id: "resources-title" }, "Resources"), form, list, more);
  let after: string | undefined;
  const page = async () => {
    try {
      const answer = await api((client) => client.resources.list({ limit: RESOURCES_PAGE, after }));
      list.append(...answer.resources.map((resource) => resourceItem(view, resource)));
      after = answer.next_after ?? undefined;
      more.hidden = after === undefined;
    } catch (error) {
      view.failed(error);
    }
  };
  more.addEventListener("click", () => void page());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void createResource(view, form, box);
  });
  await page();
}

function resourceItem(view: View, resource: Resource): HTMLElement {
  const remove = deleteButton(`Delete ${resource.resource_id} and all its counts?`, (client) => client.resources.delete(resource.resource_id), view);
  return h("li", {},
    h("a", { href: `#/resources/${encodeURIComponent(resource.resource_id)}` }, resource.resource_id),
    h("span", { class: "meta" }, ` ${resource.name}`), remove);
}

async function createResource(view: View, form: HTMLFormElement, box: HTMLElement): Promise<void> {
  const data = new FormData(form);
  const days = String(data.get("retention_days") ?? "");
  const id = String(data.get("resource_id") ?? "").trim();
  const body = {
    name: String(data.get("name") ?? ""),
    resource_id: id || undefined,
    retention_days: days ? Number(days) : undefined,
  };
  try {
    const made = await api((client) => client.resources.create(body));
    say(`Created ${made.resource_id}.`, "info");
    await drawResources(view, box);
  } catch (error) {
    view.failed(error);
  }
}

async function drawTokens(view: View, box: HTMLElement): Promise<void> {
  const scopes = SCOPES.map((scope) => h("label", { class: "inline" },
    h("input", scope === "read" ? { type: "checkbox", name: "scopes", value: scope, checked: "" } : { type: "checkbox", name: "scopes", value: scope }), ` ${scope}`));
  const form = h("form", { id: "create-token", class: "controls", "aria-label": "Create an API token" },
    h("label", {}, "Name ", h("input", { name: "name", required: "", maxlength: "200" })),
    h("fieldset", {}, h("legend", {}, "Scopes"), ...scopes),
    h("button", { type: "submit" }, "Create token"));
  const list = h("ul", { id: "token-list", class: "items" });
  box.replaceChildren(h("h2", { id: "tokens-title" }, "API tokens"), form, list);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void createToken(view, form, box);
  });
  try {
    const tokens = await api((client) => client.tokens.list());
    list.append(...tokens.map((token) => tokenItem(view, token)));
  } catch (error) {
    view.failed(error);
  }
}

function tokenItem(view: View, token: Token): HTMLElement {
  return h("li", {}, h("span", {}, `${token.name} (${token.scopes.join(", ")})`),
    deleteButton(`Revoke the token ${token.name}? Whatever uses it stops working.`, (client) => client.tokens.delete(token.id), view));
}

async function createToken(view: View, form: HTMLFormElement, box: HTMLElement): Promise<void> {
  const data = new FormData(form);
  const name = String(data.get("name") ?? "");
  const scopes = data.getAll("scopes").map(String) as Scope[];
  try {
    const made = await api((client) => client.tokens.create(name, scopes));
    await drawTokens(view, box);
    box.append(h("p", { class: "secret", id: "new-token" },
      "The new token, shown this once (copy it now): ", h("code", {}, made.token)));
  } catch (error) {
    view.failed(error);
  }
}

/** A delete button that asks first, then deletes (`deletion`) and takes its list item away. */
function deleteButton(question: string, deletion: (client: HitcountClient) => Promise<void>, view: View): HTMLElement {
  const button = h("button", { type: "button", class: "danger" }, "Delete");
  button.addEventListener("click", () => confirmThen(button, question, async (asked) => {
    try {
      await api(deletion);
      asked.closest("li")?.remove();
      say("Deleted.", "info");
    } catch (error) {
      view.failed(error);
    }
  }));
  return button;
}
