// Builds the dashboard into dist/ (index.html, app.js, app.css): what the aggregator embeds and
// serves at / and /dashboard/*. Every dependency is bundled; nothing is loaded from elsewhere.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: { app: "src/app.ts" },
  outdir: "dist",
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  legalComments: "none",
});
copyFileSync("src/index.html", "dist/index.html");
writeFileSync("dist/.gitattributes", "* -diff linguist-generated\n");
