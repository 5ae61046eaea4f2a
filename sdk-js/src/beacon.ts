// The hitcount beacon: one <script> tag counts page views, single-page-app navigations
// included, without cookies or stored ids (the visitor hash is made at the edge, daily salted).
//
//   <script async src="https://edge.example.com/hitcount.js"
//           data-endpoint="https://edge.example.com" data-resource="home"></script>
//
// Options (data-* attributes of the script tag):
//   data-endpoint          the edge's base URL (default: the script's own origin)
//   data-resource          a fixed resource id; otherwise derived from the path (/blog/post -> blog.post)
//   data-allow-localhost   count on localhost too
//   data-allow-automation  count when navigator.webdriver is set (tests, demos)
//   data-respect-dnt       skip visitors who send Do-Not-Track or Global Privacy Control
// Manual counts: window.hitcount.count({resource: "signup"}).

interface CountOptions {
  resource?: string;
}

declare global {
  interface Window {
    hitcount: { count: (options?: CountOptions) => void };
  }
  interface Navigator {
    globalPrivacyControl?: boolean;
  }
  interface Document {
    prerendering?: boolean;
  }
}

(() => {
  const w = window;
  const d = document;
  const n = navigator;
  const script = d.currentScript as HTMLScriptElement | null;
  const data = script ? script.dataset : {};
  const endpoint = (data.endpoint ?? (script ? new URL(script.src).origin : "")).replace(/\/$/, "");
  let last: string | undefined;

  // Ids are 1 to 64 of [A-Za-z0-9._-]; a path becomes one: "/" -> "home", "/a/b" -> "a.b".
  const fromPath = (path: string) =>
    path.replace(/^\/+|\/+$/g, "").replace(/\//g, ".").replace(/[^\w.-]/g, "-").slice(0, 64) || "home";

  const skip = () =>
    (data.allowLocalhost == null && /^(localhost|127\.|\[::1\]$)/.test(location.hostname)) ||
    (data.allowAutomation == null && n.webdriver) ||
    (data.respectDnt != null && (n.doNotTrack == "1" || n.globalPrivacyControl));

  const send = (resource: string) => {
    const url = endpoint + "/hit";
    const body = JSON.stringify({ r: resource });
    const pixel = () => {
      new Image().src = endpoint + "/hit.gif?r=" + encodeURIComponent(resource);
    };
    // sendBeacon sends a string as text/plain: no CORS preflight, survives page unload.
    if (n.sendBeacon && n.sendBeacon(url, body)) return;
    if (typeof fetch == "function") {
      fetch(url, { method: "POST", body, keepalive: true, headers: { "content-type": "text/plain" } }).catch(pixel);
    } else {
      pixel();
    }
  };

  const count = (options: CountOptions = {}) => {
    const resource = options.resource || data.resource || fromPath(location.pathname);
    // A view is counted once: the same resource again (replaceState, a repeated push) is not.
    if (resource == last || skip()) return;
    last = resource;
    send(resource);
  };

  // A prerendered page counts when someone actually sees it.
  const start = () => (d.prerendering ? d.addEventListener("prerenderingchange", () => count(), { once: true }) : count());

  for (const name of ["pushState", "replaceState"] as const) {
    const original = history[name];
    history[name] = function (this: History, ...args: Parameters<History["pushState"]>) {
      original.apply(this, args);
      count();
    };
  }
  w.addEventListener("popstate", () => count());
  w.hitcount = { count: (options?: CountOptions) => count({ ...options }) };
  start();
})();

export {};
