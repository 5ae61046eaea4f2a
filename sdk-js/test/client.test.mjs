// The typed client against a real aggregator the test starts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { HitcountClient, HitcountError } from "../dist/client.js";
import { ADMIN_TOKEN, startAggregator } from "./support.mjs";

test("the client manages resources, sends hits, reads exact counts and maps errors", async (t) => {
  const aggregator = await startAggregator();
  if (!aggregator) return t.skip("SKIPPED: no hitcount-aggregator binary; run cargo build first");
  try {
    const client = new HitcountClient({ baseUrl: aggregator.base, token: ADMIN_TOKEN });
    const created = await client.resources.create({ resource_id: "home", name: "Home page" });
    assert.equal(created.resource_id, "home");
    await client.resources.create({ resource_id: "docs", name: "Docs", retention_days: 30 });
    const page = await client.resources.list({ limit: 1 });
    assert.equal(page.resources.length, 1);
    const rest = await client.resources.list({ after: page.next_after ?? undefined });
    assert.deepEqual([...page.resources, ...rest.resources].map((r) => r.resource_id).sort(), ["docs", "home"]);

    assert.equal(await client.hits.send({ resource_id: "home", visitor_id: "alice" }), 1);
    const batch = Array.from({ length: 9 }, (_, i) => ({ resource_id: "home", visitor_id: `v${i % 3}` }));
    assert.equal(await client.hits.send(batch), 9);
    const counts = await client.hits.count("home", { window: "1h", granularity: "minute" });
    assert.equal(counts.count, 10);
    assert.equal(counts.uniques, 4);
    assert.equal(counts.series.reduce((sum, point) => sum + point.count, 0), 10);

    await client.hits.send([{ resource_id: "docs", visitor_id: "alice" }, { resource_id: "docs", visitor_id: "bob" }]);
    const top = await client.stats.top({ window: "1h", limit: 1 });
    assert.deepEqual(top.resources.map((r) => [r.resource_id, r.count]), [["home", 10]]);
    assert.deepEqual(top.total, { count: 12, uniques: 5 }, "alice counts once across resources");
    const series = await client.stats.series({ window: "1h", granularity: "hour", resource_ids: ["docs"] });
    assert.deepEqual([series.resources, series.count, series.uniques], [1, 2, 2]);

    // A GoatCounter export imported once: a second send of the same file changes nothing.
    const date = new Date(Date.now() - 3_600_000).toISOString();
    const goatcounter = "2Path,Title,Event,UserAgent,Browser,System,Session,Bot,Referrer,Referrer scheme,Screen size,Location,FirstVisit,Date\n" +
      `/pricing,Pricing,false,Mozilla/5.0,Firefox,Linux,s1,0,,,"1920,1080,1",NL,true,${date}\n`;
    const imported = await client.import(goatcounter, "goatcounter");
    assert.deepEqual([imported.status, imported.resources_created, imported.hits], ["imported", 1, 2]);
    assert.equal((await client.import(goatcounter, "goatcounter")).status, "duplicate");
    assert.equal((await client.hits.count("pricing", { window: "24h" })).count, 1);
    await assert.rejects(client.import("{not json"), (error) =>
      error instanceof HitcountError && error.status === 422 && error.code === "invalid_line");

    const reader = await client.tokens.create("dashboard", ["read"]);
    assert.deepEqual(reader.scopes, ["read"]);
    assert.ok((await client.tokens.list()).some((token) => token.id === reader.id));
    const readOnly = new HitcountClient({ baseUrl: aggregator.base, token: reader.token });
    assert.equal((await readOnly.hits.count("home", { window: "1h" })).count, 10);

    await assert.rejects(readOnly.resources.create({ name: "nope" }), (error) =>
      error instanceof HitcountError && error.status === 403);
    await assert.rejects(client.resources.get("missing"), (error) =>
      error instanceof HitcountError && error.status === 404 && error.code === "not_found");
    await assert.rejects(client.hits.count("home", { window: "forever" }), (error) =>
      error instanceof HitcountError && error.status === 400 && typeof error.code === "string");
    await client.tokens.delete(reader.id);
    await assert.rejects(readOnly.hits.count("home", { window: "1h" }), (error) =>
      error instanceof HitcountError && error.status === 401);
    await client.resources.delete("docs");
    await assert.rejects(client.resources.get("docs"), HitcountError);
  } finally {
    aggregator.stop();
  }
});
