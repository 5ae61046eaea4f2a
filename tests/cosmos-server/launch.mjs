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

server.listen(port, "127.0.0.1", () => {
  console.log(`listening ${server.address().port}`);
});
