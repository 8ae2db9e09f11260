// The browser demo, driven in real headless Chromium (Debian's /usr/bin/chromium, never a
// downloaded browser): load /demo, start a session, see an echo, reuse the token, see the
// rejection with close code 4003. A screenshot of each state goes to ./output/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.STREAMTOKEN_BIN ?? resolve(here, "../../target/debug/streamtoken");
const chromiumPath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const output = join(here, "output");

let server;
let keysDir;
let baseUrl;
let serverLog = "";
let browser;

function startServer() {
  keysDir = mkdtempSync(join(tmpdir(), "streamtoken-demo-"));
  const env = { ...process.env, STREAMTOKEN_KEYS_DIR: keysDir, STREAMTOKEN_BIND: "127.0.0.1:0", STREAMTOKEN_DEMO: "on", RUST_LOG: "info" };
  execFileSync(bin, ["keys", "init"], { env, stdio: "ignore" });
  server = spawn(bin, ["serve"], { env, stdio: ["ignore", "pipe", "pipe"] });
  server.stderr.on("data", (chunk) => { serverLog += chunk; });
  return new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error("server did not start:\n" + serverLog)), 30_000);
    let out = "";
    server.stdout.on("data", (chunk) => {
      out += chunk;
      const match = out.match(/streamtoken listening on (http:\/\/\S+)/);
      if (match) { clearTimeout(timer); resolveUrl(match[1]); }
    });
    server.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${serverLog}`)));
  });
}

before(async () => {
  mkdirSync(output, { recursive: true });
  baseUrl = await startServer();
  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
      "--no-first-run", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (keysDir) rmSync(keysDir, { recursive: true, force: true });
});

test("the demo opens a stream, echoes, and refuses the reused token with 4003", async () => {
  const page = await browser.newPage();
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));

  await page.goto(`${baseUrl}/demo`);
  assert.equal(await page.title(), "streamtoken demo");

  await page.click("#start");
  await page.locator("#log li", { hasText: "session_begins" }).waitFor({ timeout: 10_000 });
  await page.locator("#status.ok").waitFor();

  await page.fill("#message", "hello from the browser");
  await page.click("#send");
  await page.locator("#log li.in", { hasText: "echo: hello from the browser" }).waitFor({ timeout: 10_000 });
  await page.screenshot({ path: join(output, "demo-session.png"), fullPage: true });

  await page.click("#reuse");
  await page.locator("#log li.err", { hasText: "error token_already_used" }).waitFor({ timeout: 10_000 });
  await page.locator("#log li.err", { hasText: "closed 4003" }).waitFor({ timeout: 10_000 });
  const status = await page.textContent("#status");
  assert.match(status, /already used/);
  assert.match(status, /4003/);
  await page.screenshot({ path: join(output, "demo-reused.png"), fullPage: true });

  // Self-contained: every request stayed on our server (no CDN, no external assets).
  assert.ok(requests.length > 0);
  for (const url of requests) {
    assert.ok(url.startsWith(baseUrl.replace("http", "ws")) || url.startsWith(baseUrl), url);
  }
  // The access log shows the stream request with its token redacted.
  assert.match(serverLog, /\/v1\/stream\?token=\[redacted\]/);
  assert.doesNotMatch(serverLog, /eyJ/);
});
