// Builds the beacon (dist/hitcount.js, minified, checked to stay under 1 KB gzipped) and the
// typed client (dist/client.js with its declarations).
import { build } from "esbuild";
import { readFileSync, writeFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { execFileSync } from "node:child_process";

// The snippet's budget: what a site pays for counting, on every page view.
const BEACON_GZIP_BYTES_MAX = 1024;

await build({
  entryPoints: ["src/beacon.ts"],
  outfile: "dist/hitcount.js",
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2019"],
  legalComments: "none",
});
const beacon = readFileSync("dist/hitcount.js");
const gzipped = gzipSync(beacon, { level: 9 }).length;
console.log(`dist/hitcount.js: ${beacon.length} bytes, ${gzipped} bytes gzipped (limit ${BEACON_GZIP_BYTES_MAX})`);
if (gzipped > BEACON_GZIP_BYTES_MAX) {
  console.error(`the beacon is over its budget of ${BEACON_GZIP_BYTES_MAX} gzipped bytes`);
  process.exit(1);
}

await build({
  entryPoints: ["src/client.ts"],
  outfile: "dist/client.js",
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: ["es2020"],
});
execFileSync("npx", ["tsc", "--declaration", "--emitDeclarationOnly", "--noEmit", "false", "--outDir", "dist", "src/client.ts",
  "--target", "ES2020", "--module", "ESNext", "--moduleResolution", "Bundler", "--lib", "ES2020,DOM", "--strict", "--skipLibCheck"], { stdio: "inherit" });
writeFileSync("dist/.gitattributes", "* -diff linguist-generated\n");
