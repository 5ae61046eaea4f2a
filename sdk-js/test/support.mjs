// Starting the real binaries the tests talk to. Their paths: HITCOUNT_AGGREGATOR_BIN and
// HITCOUNT_DEV_BIN, or the debug builds under CARGO_TARGET_DIR (default ../target). Missing
// binaries fail the tests under CI=true and skip them elsewhere.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

const targetDir = process.env.CARGO_TARGET_DIR ?? new URL("../../target", import.meta.url).pathname;

export function binary(name, variable) {
  const path = process.env[variable] ?? join(targetDir, "debug", name);
  if (existsSync(path)) return path;
  if (process.env.CI === "true") throw new Error(`${path} is missing (build it with cargo build) and CI=true`);
  return undefined;
}

export const ADMIN_TOKEN = "sdk-test-admin-token-0123456789";

function lines(stream, onLine) {
  createInterface({ input: stream }).on("line", onLine);
}

/** The aggregator binary on a port-0 listener with a fresh data directory, and `flags`. */
export async function startAggregator(flags = []) {
  const path = binary("hitcount-aggregator", "HITCOUNT_AGGREGATOR_BIN");
  if (!path) return undefined;
  const dataDir = mkdtempSync(join(tmpdir(), "hitcount-sdk-"));
  const child = spawn(path, ["--listen", "127.0.0.1:0", "--data-dir", dataDir, "--admin-token", ADMIN_TOKEN,
    "--rate-limit-ip-per-second", "0", "--rate-limit-token-per-second", "0", ...flags], { env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" } });
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the aggregator did not start")), 30_000);
    lines(child.stderr, (line) => {
      const match = /listening.*address=(\S+)/.exec(line) ?? /address=(\S+).*listening/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(`http://${match[1]}`);
      }
    });
    child.on("exit", (code) => reject(new Error(`the aggregator exited with ${code}`)));
  });
  return { base, stop: () => child.kill("SIGTERM") };
}

/** `hitcount-dev` (edge, aggregator and demo) on port-0 listeners. */
export async function startDev() {
  const path = binary("hitcount-dev", "HITCOUNT_DEV_BIN");
  if (!path) return undefined;
  const dataDir = mkdtempSync(join(tmpdir(), "hitcount-dev-"));
  const child = spawn(path, ["--listen", "127.0.0.1:0", "--aggregator-listen", "127.0.0.1:0",
    "--window-ms", "200", "--data-dir", dataDir], { env: { ...process.env, RUST_LOG: "warn" } });
  const found = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("hitcount-dev did not start")), 60_000);
    const result = {};
    lines(child.stdout, (line) => {
      const addresses = /^hitcount dev: edge on (\S+), aggregator on (\S+),/.exec(line);
      if (addresses) [, result.edge, result.aggregator] = addresses;
      const token = /Bearer ([^']+)'/.exec(line);
      if (token) {
        result.token = token[1];
        clearTimeout(timer);
        resolve(result);
      }
    });
    child.on("exit", (code) => reject(new Error(`hitcount-dev exited with ${code}`)));
  });
  return { ...found, stop: () => new Promise((resolve) => { child.on("exit", resolve); child.kill("SIGTERM"); }) };
}
