// Drives Debian's Chromium with playwright-core for test_panic_alerts_browser.py.
//
// The Python test owns the servers (it must restart reverb-py mid-test), so this script only
// holds the browser and answers one JSON command per stdin line with one JSON reply per stdout
// line: {"op": "open", "page": NAME, "url": URL} opens URL in its own browser context (own
// cookies), {"op": "wait", "page", "selector", "timeout"} waits until a CSS selector is visible
// and returns its text and data-* attributes, {"op": "click", "page", "selector"},
// {"op": "screenshot", "page", "path"}, {"op": "quit"}. Failures carry the page's console output.
import { createRequire } from 'node:module';
import readline from 'node:readline';

const require = createRequire(new URL('../../examples/panic-alerts/package.json', import.meta.url));
const { chromium } = require('playwright-core');

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const pages = new Map(); // name -> { page, console: string[] }

function reply(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function pageNamed(name) {
  const entry = pages.get(name);
  if (!entry) throw new Error(`no page named ${name}`);
  return entry;
}

const ops = {
  async open({ page: name, url }) {
    const context = await browser.newContext({ viewport: { width: 1000, height: 720 } });
    const page = await context.newPage();
    const entry = { page, console: [] };
    page.on('console', (msg) => entry.console.push(`${msg.type()}: ${msg.text()}`));
    page.on('pageerror', (error) => entry.console.push(`pageerror: ${error.message}`));
    pages.set(name, entry);
    await page.goto(url);
    return {};
  },
  async wait({ page: name, selector, timeout }) {
    const locator = pageNamed(name).page.locator(selector).first();
    await locator.waitFor({ state: 'visible', timeout });
    return locator.evaluate((node) => ({ text: node.textContent.trim(), data: { ...node.dataset } }));
  },
  async click({ page: name, selector }) {
    await pageNamed(name).page.locator(selector).first().click();
    return {};
  },
  async screenshot({ page: name, path }) {
    await pageNamed(name).page.screenshot({ path, fullPage: true });
    return {};
  },
};

reply({ ready: true, browser: browser.version() });

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const command = JSON.parse(line);
  if (command.op === 'quit') break;
  try {
    reply({ ok: true, result: await ops[command.op](command) });
  } catch (error) {
    const consoleLines = command.page && pages.has(command.page) ? pages.get(command.page).console : [];
    reply({ ok: false, error: String(error.message || error), console: consoleLines.slice(-20) });
  }
}
await browser.close();
