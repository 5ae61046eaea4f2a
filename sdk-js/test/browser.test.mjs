// The beacon in a real browser: headless Chromium (Debian's, driven by playwright-core) loads the
// demo that `hitcount-dev` serves, navigates the single-page app, goes back, reloads, and
// the aggregator's counts per resource are exactly the views made. Screenshot: test-results/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { HitcountClient } from "../dist/client.js";
import { startDev } from "./support.mjs";

const CHROMIUM = process.env.HITCOUNT_CHROMIUM ?? "/usr/bin/chromium";

test("a single-page app's views are counted exactly, once each", async (t) => {
  if (!existsSync(CHROMIUM)) {
    if (process.env.CI === "true") throw new Error(`${CHROMIUM} is missing and CI=true`);
    return t.skip(`SKIPPED: no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  }
  const dev = await startDev();
  if (!dev) return t.skip("SKIPPED: no hitcount-dev binary; run cargo build first");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    // Headless Chromium says "HeadlessChrome" in its user agent, which the edge counts as a bot
    // (as it should); the test browses as the desktop Chrome it is.
    const page = await browser.newPage({
      userAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36",
    });
    const beacons = [];
    page.on("request", (request) => {
      if (new URL(request.url()).pathname === "/hit") beacons.push(request.postData());
    });
    await page.goto(`${dev.edge}/demo`);
    await page.waitForFunction(() => window.hitcount !== undefined);
    for (const name of ["About", "Pricing", "Blog"]) {
      await page.click(`text=${name}`);
      await page.waitForURL(`**/demo/${name.toLowerCase()}`);
    }
    // Back to pricing (popstate), then a reload of it: two more views of pricing.
    await page.goBack();
    await page.waitForURL("**/demo/pricing");
    await page.reload();
    await page.waitForFunction(() => window.hitcount !== undefined);
    // replaceState to the same path is the same view: not counted again.
    await page.evaluate(() => history.replaceState({}, "", location.pathname));

    const expected = { demo: 1, "demo.about": 1, "demo.pricing": 3, "demo.blog": 1 };
    const client = new HitcountClient({ baseUrl: dev.aggregator, token: dev.token });
    const deadline = Date.now() + 20_000;
    let counts;
    for (;;) {
      counts = {};
      for (const resource of Object.keys(expected)) {
        const answer = await client.hits.count(resource, { window: "1h" });
        counts[resource] = answer.count;
        assert.ok(answer.count === 0 || answer.uniques === 1, `${resource}: one visitor`);
      }
      if (Object.keys(expected).every((resource) => counts[resource] >= expected[resource])) break;
      assert.ok(Date.now() < deadline, `counts never arrived: ${JSON.stringify(counts)}`);
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.deepEqual(counts, expected);
    assert.equal(beacons.length, 6, `one beacon per view: ${JSON.stringify(beacons)}`);
    // The page shows its live count (read-your-writes through the edge).
    await page.waitForFunction(() => document.getElementById("count").textContent === "3");
    mkdirSync("test-results", { recursive: true });
    await page.screenshot({ path: "test-results/demo.png", fullPage: true });

    // replaceState to another path is a new view.
    await page.evaluate(() => history.replaceState({}, "", "/demo/about"));
    const after = Date.now() + 20_000;
    while ((await client.hits.count("demo.about", { window: "1h" })).count < 2) {
      assert.ok(Date.now() < after, "the replaceState view never arrived");
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
    assert.equal((await client.hits.count("demo.pricing", { window: "1h" })).count, 3);
    assert.equal(beacons.length, 7);

    // The same page without the demo's opt-ins (on localhost, under automation, as here), and
    // with Do-Not-Track respected for a visitor sending Global Privacy Control: silent, even
    // when asked explicitly.
    for (const [path, attributes, initScript] of [
      ["strict", "", undefined],
      ["private", " data-allow-localhost data-allow-automation data-respect-dnt",
        () => Object.defineProperty(Navigator.prototype, "globalPrivacyControl", { get: () => true })],
    ]) {
      const quiet = await browser.newPage();
      if (initScript) await quiet.addInitScript(initScript);
      let sent = 0;
      quiet.on("request", (request) => {
        if (["/hit", "/hit.gif"].includes(new URL(request.url()).pathname)) sent += 1;
      });
      await quiet.route(`**/demo/${path}`, async (route) => {
        const response = await route.fetch();
        const html = (await response.text()).replace(" data-allow-localhost data-allow-automation", attributes);
        await route.fulfill({ response, body: html });
      });
      await quiet.goto(`${dev.edge}/demo/${path}`);
      await quiet.waitForFunction(() => window.hitcount !== undefined);
      await quiet.evaluate(() => window.hitcount.count({ resource: "demo" }));
      await new Promise((resolve) => setTimeout(resolve, 500));
      assert.equal(sent, 0, `no beacon from the ${path} page`);
      await quiet.close();
    }
  } finally {
    await browser.close();
    await dev.stop();
  }
});
