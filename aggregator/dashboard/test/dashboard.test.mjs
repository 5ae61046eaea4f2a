// The dashboard in a real browser: headless Chromium (Debian's, driven by playwright-core) signs
// in to the real aggregator binary, and the numbers on screen are the API's for a known data set.
// Screenshots at desktop and phone width: test-results/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync } from "node:fs";
import { connect, createServer } from "node:net";
import { chromium } from "playwright-core";
import { ADMIN_TOKEN, startAggregator } from "../../../sdk-js/test/support.mjs";
import { startIssuer } from "./issuer.mjs";

const CHROMIUM = process.env.HITCOUNT_CHROMIUM ?? "/usr/bin/chromium";
/** How long the live view may take to show a new hit: its refresh period and some slack. */
const LIVE_WAIT_MS = 15_000;

/** The aggregator's REST API with `token`. */
function api(base, token) {
  const call = async (method, path, body) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  };
  return {
    get: (path) => call("GET", path),
    post: (path, body) => call("POST", path, body),
    delete: (path) => call("DELETE", path),
  };
}

async function launch(t) {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === "true") throw new Error(`${CHROMIUM} is missing and CI=true`);
    t.skip(`SKIPPED: no Chromium at ${CHROMIUM} (apt-get install chromium)`);
    return undefined;
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
  });
}

/** A page that fails the test on any console error (a CSP violation included). */
async function page(browser, viewport) {
  const opened = await browser.newPage({ viewport });
  const errors = [];
  // The browser logs every refused request; the refusals of bad tokens are the test's own.
  const expected = /Failed to load resource: the server responded with a status of 40[13]/;
  opened.on("console", (message) => {
    if (message.type() === "error" && !expected.test(message.text())) errors.push(message.text());
  });
  opened.on("pageerror", (error) => errors.push(String(error)));
  return { page: opened, errors };
}

async function signIn(page, token) {
  await page.fill("#token", token);
  await page.click("button[type=submit]");
}

const digits = (text) => Number(text.replace(/[^0-9]/g, ""));

/** Runs `body(browser, aggregator)` against a fresh aggregator (started with `flags`), then closes both. */
async function withBrowser(t, body, flags = []) {
  const browser = await launch(t);
  if (!browser) return;
  try {
    const aggregator = await startAggregator(flags);
    if (!aggregator) return t.skip("SKIPPED: no hitcount-aggregator binary; run cargo build first");
    try {
      await body(browser, aggregator);
    } finally {
      aggregator.stop();
    }
  } finally {
    await browser.close();
  }
}

test("the overview shows the API's numbers, filters, goes live, and refuses bad tokens", (t) => withBrowser(t, async (browser, aggregator) => {
  const admin = api(aggregator.base, ADMIN_TOKEN);
  for (const id of ["home", "blog.first", "blog.second"]) {
    assert.equal((await admin.post("/resources", { name: id, resource_id: id })).status, 201);
  }
  const hits = [];
  for (const [id, visitors] of [["home", ["a", "b", "c", "a"]], ["blog.first", ["a", "d"]], ["blog.second", ["e"]]]) {
    for (const visitor of visitors) hits.push({ resource_id: id, visitor_id: visitor });
  }
  assert.equal((await admin.post("/hits", { hits })).status, 202);
  const read = (await admin.post("/tokens", { name: "dashboard", scopes: ["read"] })).body;
  const ingest = (await admin.post("/tokens", { name: "beacon", scopes: ["ingest"] })).body.token;

  const { page: desktop, errors } = await page(browser, { width: 1280, height: 900 });
  await desktop.goto(`${aggregator.base}/`);
  await signIn(desktop, "not-a-token");
  await desktop.waitForSelector("#notice:not([hidden])");
  assert.match(await desktop.textContent("#notice"), /unknown or was revoked/);
  assert.equal(await desktop.$("#total-hits"), null, "a wrong token sees no data");
  await signIn(desktop, ingest);
  await desktop.waitForFunction(() => /read scope/.test(document.getElementById("notice").textContent));
  assert.equal(await desktop.$("#total-hits"), null);

  const asked = [];
  desktop.on("request", (request) => asked.push(new URL(request.url()).pathname));
  await signIn(desktop, read.token);
  await desktop.waitForSelector("#total-hits");
  const top = (await admin.get("/stats/top?window=24h&limit=10")).body;
  assert.deepEqual(top.total, { count: 7, uniques: 5 });
  assert.equal(digits(await desktop.textContent("#total-hits")), top.total.count);
  assert.equal(digits(await desktop.textContent("#total-visitors")), top.total.uniques);
  const rows = await desktop.$$eval("#top tbody tr", (trs) => trs.map((tr) =>
    [...tr.children].filter((cell) => !cell.classList.contains("trend")).map((cell) => cell.textContent)));
  assert.equal(await desktop.$$eval("#top .sparkline", (lines) => lines.length), top.resources.length, "a trend per row");
  // Each trend is the resource's hourly series, which came with the top in the same request.
  const trends = (await admin.get("/stats/top?window=24h&granularity=hour&limit=10&series=true")).body;
  assert.deepEqual(
    await desktop.$$eval("#top .sparkline", (lines) => lines.map((line) => line.getAttribute("aria-label"))),
    trends.resources.map((item) => `hits per bucket: from 0 to ${Math.max(1, ...item.series.map((point) => point.count))}`));
  assert.equal(asked.filter((path) => path.startsWith("/hits/")).length, 0, "no request per row");
  assert.deepEqual(rows, top.resources.map((item) => [item.resource_id, String(item.count), String(item.uniques)]));
  await desktop.waitForSelector(".chart canvas");
  assert.ok(Number(await desktop.getAttribute(".chart", "data-points")) >= 24, "an hourly series over 24 hours");
  const radius = await desktop.$eval(".figure", (element) => getComputedStyle(element).borderRadius);
  assert.equal(radius, "8px", "the dashboard's own styles are served and applied");
  mkdirSync("test-results", { recursive: true });
  await desktop.screenshot({ path: "test-results/overview-desktop.png", fullPage: true });

  // A read token manages nothing.
  assert.equal(await desktop.isVisible("#nav-manage"), false);

  // A resource's page: its own numbers, at the granularity asked for.
  await desktop.goto(`${aggregator.base}/#/resources/home`);
  await desktop.waitForSelector("#resource-name");
  const home = (await admin.get("/hits/home?window=24h")).body;
  await desktop.waitForFunction((count) => document.getElementById("total-hits")?.dataset.value === String(count), home.count);
  assert.equal(digits(await desktop.textContent("#total-visitors")), home.uniques);
  assert.equal(await desktop.$("#delete-resource"), null, "no deletion without the admin scope");
  await desktop.selectOption("#granularity", "minute");
  await desktop.waitForFunction(() => Number(document.querySelector(".chart")?.dataset.points) >= 1440);
  await desktop.screenshot({ path: "test-results/resource-desktop.png", fullPage: true });
  await desktop.click("text=← Overview");
  await desktop.waitForSelector("#prefix");

  // A section of the site: the total is the union of its resources' visitors.
  await desktop.fill("#prefix", "blog.");
  await desktop.click(".controls button[type=submit]");
  const blog = (await admin.get("/stats/top?window=24h&limit=10&prefix=blog.")).body;
  await desktop.waitForFunction((count) => document.getElementById("total-hits")?.dataset.value === String(count), blog.total.count);
  assert.equal(digits(await desktop.textContent("#total-visitors")), blog.total.uniques);
  assert.equal(await desktop.$$eval("#top tbody tr", (trs) => trs.length), 2);

  // Live: the last hour refreshes itself, so a new hit shows without a click.
  await desktop.selectOption("#range", "1h");
  await desktop.waitForSelector("#live:not([hidden])");
  await desktop.waitForFunction(() => document.getElementById("total-hits")?.dataset.value === "3");
  assert.equal((await admin.post("/hits", { resource_id: "blog.second", visitor_id: "f" })).status, 202);
  await desktop.waitForFunction(() => document.getElementById("total-hits")?.dataset.value === "4", null, { timeout: LIVE_WAIT_MS });

  // Revoked while signed in: the next refresh says so and shows the sign-in form again.
  assert.equal((await admin.delete(`/tokens/${read.id}`)).status, 204);
  await desktop.waitForSelector("#token", { timeout: LIVE_WAIT_MS });
  assert.match(await desktop.textContent("#notice"), /session ended/);
  assert.deepEqual(errors, [], "no console errors (a CSP violation would be one)");

  // Phone width: the same numbers, laid out in one column.
  const { page: phone, errors: phoneErrors } = await page(browser, { width: 390, height: 844 });
  await phone.goto(`${aggregator.base}/`);
  await signIn(phone, ADMIN_TOKEN);
  await phone.waitForSelector(".chart canvas");
  assert.equal(digits(await phone.textContent("#total-hits")), 8);
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no sideways scrolling at phone width (${width}px)`);
  await phone.screenshot({ path: "test-results/overview-phone.png", fullPage: true });
  assert.deepEqual(phoneErrors, []);
}));

/** The machine's PostgreSQL and Redis, as the Rust suites find them. */
const DATABASE_SERVER = process.env.HITCOUNT_TEST_DATABASE_SERVER ?? "postgres://root@127.0.0.1:5432";
const REDIS_URL = process.env.HITCOUNT_TEST_REDIS_URL ?? "redis://127.0.0.1:6379";

/** A database of its own on the machine's PostgreSQL; undefined (a skip, a failure under CI) if unreachable. */
function ownDatabase(t) {
  const name = `hitcount_dash_${randomBytes(6).toString("hex")}`;
  try {
    execFileSync("psql", [`${DATABASE_SERVER}/postgres`, "-At", "-v", "ON_ERROR_STOP=1", "-c", `CREATE DATABASE ${name}`], { stdio: "pipe" });
  } catch (error) {
    if (process.env.CI === "true") throw new Error(`PostgreSQL at ${DATABASE_SERVER} is unreachable and CI=true: ${error}`);
    t.skip(`SKIPPED: PostgreSQL at ${DATABASE_SERVER} is unreachable`);
    return undefined;
  }
  return { url: `${DATABASE_SERVER}/${name}`, drop: () => execFileSync("psql", [`${DATABASE_SERVER}/postgres`, "-At", "-c", `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`], { stdio: "pipe" }) };
}

/**
 * A TCP proxy on 127.0.0.1 to `target` ("host:port"): stopping it is the database going down for
 * whoever reaches it through the proxy (its connections cut, new ones refused), starting it
 * again on the same port its return.
 */
function proxyTo(target) {
  const [host, port] = target.split(":");
  const sockets = new Set();
  let server;
  let at = 0;
  const keep = (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  return {
    start: () => new Promise((resolve) => {
      server = createServer((client) => {
        const upstream = connect(Number(port), host);
        keep(client);
        keep(upstream);
        client.pipe(upstream).pipe(client);
      });
      server.listen(at, "127.0.0.1", () => {
        at = server.address().port;
        resolve(at);
      });
    }),
    stop: () => new Promise((resolve) => {
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    }),
  };
}

test("while PostgreSQL is down the dashboard says its numbers are the hot tier's alone", async (t) => {
  const database = ownDatabase(t);
  if (!database) return;
  const url = new URL(database.url);
  const proxy = proxyTo(url.host);
  url.host = `127.0.0.1:${await proxy.start()}`;
  const flags = ["--database-url", url.toString(), "--redis-url", REDIS_URL,
    "--redis-prefix", `hitcount-dash-${randomBytes(6).toString("hex")}`];
  try {
    await withBrowser(t, async (browser, aggregator) => {
      const admin = api(aggregator.base, ADMIN_TOKEN);
      for (const id of ["home", "blog.first"]) {
        assert.equal((await admin.post("/resources", { name: id, resource_id: id })).status, 201);
      }
      // The hot tier answers once it is rebuilt from the database.
      const deadline = Date.now() + 30_000;
      const rebuilt = async () => /^hitcount_hot_tier_rebuilds_total [1-9]/m.test(await (await fetch(`${aggregator.base}/metrics`)).text());
      while (!(await rebuilt())) {
        assert.ok(Date.now() < deadline, "the hot tier was never rebuilt");
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      const hits = [["home", "a"], ["home", "b"], ["blog.first", "c"]].map(([resource_id, visitor_id]) => ({ resource_id, visitor_id }));
      assert.equal((await admin.post("/hits", { hits })).status, 202);

      const { page: desktop, errors } = await page(browser, { width: 1280, height: 900 });
      await desktop.goto(`${aggregator.base}/`);
      await signIn(desktop, ADMIN_TOKEN);
      await desktop.selectOption("#range", "1h");
      await desktop.waitForSelector("#live:not([hidden])");
      await desktop.waitForFunction(() => document.getElementById("total-hits")?.dataset.value === "3");
      assert.equal(await desktop.isHidden("#notice"), true, "fresh numbers carry no warning");

      await proxy.stop();
      // The next live refresh finds the database down and shows the last hour from Redis.
      await desktop.waitForSelector("#notice.warning", { timeout: LIVE_WAIT_MS * 2 });
      assert.match(await desktop.textContent("#notice"), /database is unavailable: these numbers are the last hour's/);
      assert.equal(await desktop.getAttribute("#total-hits", "data-value"), "3", "every hit of the hour still shown");
      assert.equal(digits(await desktop.textContent("#total-visitors")), 3);
      assert.equal(await desktop.$$eval("#top tbody tr", (trs) => trs.length), 2);
      await desktop.screenshot({ path: "test-results/overview-stale.png", fullPage: true });

      // A resource's page: its 24 hours by hour are not in Redis (503, said in words); its last hour is.
      await desktop.goto(`${aggregator.base}/#/resources/home`);
      await desktop.waitForFunction(() => /store is unavailable or busy/.test(document.getElementById("notice").textContent));
      assert.equal(await desktop.getAttribute("#notice", "class"), "error");
      await desktop.selectOption("#range", "1h");
      await desktop.waitForSelector("#notice.warning");
      await desktop.waitForFunction(() => document.getElementById("total-hits")?.dataset.value === "2");

      // Back: the next refresh that reaches the database is whole again, and the warning goes.
      await proxy.start();
      await desktop.waitForSelector("#notice", { state: "hidden", timeout: LIVE_WAIT_MS * 3 });
      assert.equal(await desktop.getAttribute("#total-hits", "data-value"), "2");
      // The browser logs each 503 it was answered while the database was down.
      assert.deepEqual(errors.filter((error) => !/status of 503/.test(error)), []);
    }, flags);
  } finally {
    await proxy.stop();
    database.drop();
  }
});

test("without resources the dashboard shows how to start counting", (t) => withBrowser(t, async (browser, aggregator) => {
  const { page: empty, errors } = await page(browser, { width: 1024, height: 700 });
  await empty.goto(`${aggregator.base}/`);
  await signIn(empty, ADMIN_TOKEN);
  await empty.waitForSelector(".empty");
  assert.match(await empty.textContent(".empty"), /No resources yet/);
  assert.match(await empty.textContent(".empty pre"), /hitcount\.js/);
  assert.deepEqual(errors, []);
}));

test("an admin token creates and deletes resources and tokens, asked first", (t) => withBrowser(t, async (browser, aggregator) => {
  const admin = api(aggregator.base, ADMIN_TOKEN);
  assert.equal((await admin.post("/resources", { name: "Home", resource_id: "home" })).status, 201);
  const { page: desktop, errors } = await page(browser, { width: 1280, height: 900 });
  await desktop.goto(`${aggregator.base}/`);
  await signIn(desktop, ADMIN_TOKEN);
  await desktop.click("#nav-manage");
  await desktop.waitForSelector("#create-resource");

  await desktop.fill("#create-resource input[name=name]", "Made here");
  await desktop.fill("#create-resource input[name=resource_id]", "made.here");
  await desktop.fill("#create-resource input[name=retention_days]", "30");
  await desktop.click("#create-resource button[type=submit]");
  await desktop.waitForSelector("#resource-list a >> text=made.here");
  const made = (await admin.get("/resources/made.here")).body;
  assert.deepEqual([made.name, made.retention_days], ["Made here", 30]);

  await desktop.fill("#create-token input[name=name]", "reporting");
  await desktop.click("#create-token button[type=submit]");
  const secret = (await desktop.textContent("#new-token code")).trim();
  const reporting = (await admin.get("/tokens")).body.tokens.find((token) => token.name === "reporting");
  assert.deepEqual(reporting.scopes, ["read"]);
  assert.equal((await api(aggregator.base, secret).get("/stats/top")).status, 200, "the token shown works");
  await desktop.screenshot({ path: "test-results/manage-desktop.png", fullPage: true });

  // Revoking asks first; Cancel keeps the token.
  const item = desktop.locator("#token-list li", { hasText: "reporting" });
  await item.locator("button.danger").click();
  await item.locator("text=Cancel").click();
  assert.equal((await api(aggregator.base, secret).get("/stats/top")).status, 200);
  await item.locator("button.danger").click();
  await item.locator("button.danger >> text=Delete").click();
  await desktop.waitForFunction(() => ![...document.querySelectorAll("#token-list li")].some((li) => li.textContent.includes("reporting")));
  assert.equal((await api(aggregator.base, secret).get("/stats/top")).status, 401);

  // Deleting a resource from its page, asked first.
  await desktop.goto(`${aggregator.base}/#/resources/made.here`);
  await desktop.waitForSelector("#delete-resource");
  await desktop.click("#delete-resource");
  await desktop.click(".confirm button.danger");
  await desktop.waitForFunction(() => /Deleted made\.here/.test(document.getElementById("notice").textContent));
  // The confirmation outlives the overview's load that follows it, and goes with the next view.
  await desktop.waitForSelector("#top");
  assert.match(await desktop.textContent("#notice"), /Deleted made\.here/);
  await desktop.goto(`${aggregator.base}/#/resources/home`);
  await desktop.waitForSelector("#resource-name");
  assert.equal(await desktop.isHidden("#notice"), true);
  assert.equal((await admin.get("/resources/made.here")).status, 404);
  assert.equal((await admin.get("/resources/home")).status, 200);
  assert.deepEqual(errors, []);
}));

test("the organisation's identity provider signs the dashboard in: authorization code with PKCE", async (t) => {
  const audience = "hitcount-api";
  const issuer = await startIssuer({ audience, roles: ["hitcount.admin"] });
  const flags = ["--oidc-issuer", issuer.issuer, "--oidc-audience", audience,
    "--oidc-client-id", "hitcount-dashboard", "--oidc-scope", "openid profile"];
  try {
    await withBrowser(t, async (browser, aggregator) => {
      const { page: desktop, errors } = await page(browser, { width: 1280, height: 900 });
      await desktop.goto(`${aggregator.base}/#/manage`);
      await desktop.click("#sign-in-provider");
      await desktop.waitForSelector("#nav:not([hidden])");
      const back = new URL(desktop.url());
      assert.equal(back.search, "", "the code left the address");
      assert.equal(back.hash, "#/manage", "back at the view the sign-in started from");
      assert.equal(await desktop.isVisible("#nav-manage"), true, "the admin role gives the admin views");
      await desktop.waitForSelector("#tokens-title");
      const [asked] = issuer.requests;
      assert.equal(asked.client_id, "hitcount-dashboard");
      assert.equal(asked.redirect_uri, `${aggregator.base}/`);
      assert.equal(asked.scope, "openid profile");
      assert.equal(asked.code_challenge_method, "S256");
      assert.match(asked.code_challenge, /^[A-Za-z0-9_-]{43}$/);
      assert.equal(await desktop.evaluate(() => sessionStorage.length), 0, "the flow's values are gone");

      // An account without a hitcount role is told what it lacks, and sees nothing.
      issuer.roles = ["some.other.role"];
      await desktop.click("#sign-out");
      await desktop.click("#sign-in-provider");
      await desktop.waitForFunction(() => /hitcount\.read role/.test(document.getElementById("notice").textContent));
      assert.equal(await desktop.$("#total-hits"), null);

      // A provider that refuses (no PKCE here: the dashboard always sends it, so this is the
      // provider's own refusal coming back) is said in words.
      await desktop.goto(`${aggregator.base}/`);
      await desktop.evaluate(() => sessionStorage.setItem("hitcount.sign-in",
        JSON.stringify({ verifier: "v", state: "s", nonce: "n", hash: "" })));
      await desktop.goto(`${aggregator.base}/?error=access_denied&error_description=the+user+said+no&state=s`);
      await desktop.waitForFunction(() => /the user said no/.test(document.getElementById("notice").textContent));
      assert.equal(new URL(desktop.url()).search, "");
      assert.deepEqual(errors, [], "no console errors (a CSP violation would be one)");
    }, flags);
  } finally {
    issuer.stop();
  }
});
