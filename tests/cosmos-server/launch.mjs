// Starts @vercel/cosmosdb-server, an independent implementation of the Azure Cosmos DB for NoSQL
// REST protocol, over plain HTTP on 127.0.0.1 (the port given, or one the OS picks), and prints
// `listening PORT` once it accepts connections. It keeps everything in memory: each start is an
// empty account. The Rust SDK (azure_data_cosmos) accepts plain HTTP only for emulator hosts such
// as 127.0.0.1, and talks to this server once three of its answers are adjusted, each below.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createHttpServer } = require("@vercel/cosmosdb-server");

const port = Number(process.argv[2] || 0);
const server = createHttpServer({ keepAlive: true });

// Fault injection, which the server itself lacks: `POST /__faults/throttle?requests=N&retry_after_ms=M`
// answers the next N requests 429 with `x-ms-retry-after-ms: M`, as the service does when a
// partition runs out of request units (`&after=K`: once K more requests were served, to cut an
// operation short midway); `GET /__faults` says how many were throttled so far, and how many
// requests reached the account's resources (`requests`, what a benchmark counts per operation).
const faults = { after: 0, throttle: 0, retryAfterMs: 0, throttled: 0, requests: 0 };
const serve = server.listeners("request");
server.removeAllListeners("request");
server.on("request", (request, response) => {
  const url = new URL(request.url, "http://localhost");
  if (url.pathname.startsWith("/__faults")) {
    if (url.pathname === "/__faults/throttle") {
      faults.after = Number(url.searchParams.get("after") || 0);
      faults.throttle = Number(url.searchParams.get("requests") || 0);
      faults.retryAfterMs = Number(url.searchParams.get("retry_after_ms") || 0);
    }
    response.setHeader("content-type", "application/json");
    response.end(JSON.stringify(faults));
    return;
  }
  if (url.pathname.startsWith("/dbs/")) {
    faults.requests += 1;
  }
  if (faults.throttle > 0 && faults.after > 0 && url.pathname.startsWith("/dbs/")) {
    faults.after -= 1;
  } else if (faults.throttle > 0 && url.pathname.startsWith("/dbs/")) {
    faults.throttle -= 1;
    faults.throttled += 1;
    response.statusCode = 429;
    response.setHeader("content-type", "application/json");
    response.setHeader("x-ms-retry-after-ms", String(faults.retryAfterMs));
    response.setHeader("x-ms-substatus", "3200");
    response.setHeader("x-ms-activity-id", "00000000-0000-0000-0000-000000000429");
    response.end(JSON.stringify({ code: "TooManyRequests", message: "Request rate is large (injected)" }));
    return;
  }
  for (const listener of serve) listener.call(server, request, response);
});

server.prependListener("request", (request, response) => {
  // Point reads of a missing item answer 500 without this header (the real service answers 404
  // whatever the header says).
  request.headers["x-ms-documentdb-query-enablecrosspartition"] = "true";
  const end = response.end.bind(response);
  response.end = (chunk, ...rest) => {
    if (typeof chunk === "string" && chunk.startsWith("{")) {
      const body = JSON.parse(chunk);
      // The account advertises https:// endpoints even when served over http://.
      for (const location of [...(body.writableLocations || []), ...(body.readableLocations || [])]) {
        location.databaseAccountEndpoint = location.databaseAccountEndpoint.replace(/^https:/, "http:");
      }
      // Partition key range ids are strings on the real service; this server writes numbers.
      for (const range of body.PartitionKeyRanges || []) {
        range.id = String(range.id);
      }
      chunk = JSON.stringify(body);
    }
    return end(chunk, ...rest);
  };
});

// `--exit-with-stdin`: stop when the standard input closes, that is when the test process that
// started this one ends, however it ends.
if (process.argv.includes("--exit-with-stdin")) {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}

server.listen(port, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
