// The dashboard: sign in with an API token (read scope) or, when the aggregator names one,
// through the organisation's identity provider; then the overview (#/), a resource's page
// (#/resources/ID) and, for an admin, managing resources and tokens (#/manage).
import "./app.css";
import { HitcountError, api, signIn, signOut, signedIn } from "./api";
import { clearNoticeOfOtherView, h, say } from "./dom";
import { showManage } from "./manage";
import { showOverview } from "./overview";
import { type Provider, backFromProvider, configuredProvider, leaveForProvider, providerRefusal, tokenFromProvider } from "./provider";
import { showResource } from "./resource";
import { View } from "./view";

const main = document.getElementById("app") as HTMLElement;
const nav = document.getElementById("nav") as HTMLElement;
const view = new View(main, (message) => showSignIn(message));
/** Whether the signed-in token has the admin scope (asked once, at sign-in). */
let admin = false;
/** The identity provider the aggregator names (`--oidc-client-id`), if any. */
let provider: Provider | undefined;
/** How the caller signed in, for the words of a refusal. */
type Via = "token" | "provider";

function showSignIn(message?: string): void {
  signOut();
  admin = false;
  nav.hidden = true;
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: "" });
  const form = h("form", { class: "card sign-in", "aria-labelledby": "sign-in-title" },
    h("h2", { id: "sign-in-title" }, "Sign in"),
    h("p", {}, "Paste an API token with the read scope (create one with POST /tokens, or use the admin token the aggregator printed at its first start)."),
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void trySignIn(input.value.trim(), "token");
  });
  if (provider !== undefined) {
    const chosen = provider;
    const button = h("button", { type: "button", id: "sign-in-provider" }, "Sign in with your organisation");
    button.addEventListener("click", () => {
      leaveForProvider(chosen).catch((error) => say(providerRefusal(error)));
    });
    form.insertBefore(h("div", { class: "provider" }, button, h("p", {}, "or")), form.children[1]);
  }
  view.show(form);
  say(message);
  input.focus();
}

async function trySignIn(value: string, via: Via): Promise<void> {
  signIn(value);
  try {
    await api((client) => client.stats.top({ window: "1m", limit: 1 }));
  } catch (error) {
    showSignIn(signInRefusal(error, via));
    return;
  }
  admin = await api((client) => client.tokens.list()).then(() => true, () => false);
  say(undefined);
  nav.hidden = false;
  (document.getElementById("nav-manage") as HTMLElement).hidden = !admin;
  await route();
}

function signInRefusal(error: unknown, via: Via): string {
  if (!(error instanceof HitcountError)) return String(error);
  if (via === "provider") {
    if (error.status === 401) return `The aggregator refused the identity provider's token: ${error.message}`;
    if (error.status === 403) return "Your account cannot read counts here: it needs the hitcount.read role (or hitcount.admin).";
  }
  if (error.status === 401) return "That token is unknown or was revoked. Check it and try again.";
  if (error.status === 403) return "That token cannot read counts: it needs the read scope.";
  if (error.status === 429) return "Too many attempts; wait a moment and try again.";
  return error.message;
}

/** Shows the view the address's fragment names. */
async function route(): Promise<void> {
  if (!signedIn()) return;
  clearNoticeOfOtherView();
  const hash = window.location.hash;
  const resource = /^#\/resources\/(.+)$/.exec(hash);
  if (resource) return showResource(view, decodeURIComponent(resource[1]), admin);
  if (hash === "#/manage" && admin) return showManage(view);
  return showOverview(view);
}

/** Asks how to sign in, then shows the form, or finishes a sign-in the provider sent back. */
async function start(): Promise<void> {
  provider = await configuredProvider().catch(() => undefined);
  if (provider === undefined || !backFromProvider()) return showSignIn();
  let signedInWith: { token: string };
  try {
    signedInWith = await tokenFromProvider(provider);
  } catch (error) {
    return showSignIn(providerRefusal(error));
  }
  // The address is the view's again (tokenFromProvider put its fragment back).
  await trySignIn(signedInWith.token, "provider");
}

window.addEventListener("hashchange", () => void route());
(document.getElementById("sign-out") as HTMLElement).addEventListener("click", () => showSignIn("Signed out."));
void start();
