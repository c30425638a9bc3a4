#!/usr/bin/env node
// End-to-end test of the hub's dashboard in a real headless browser (Debian's Chromium driven
// by playwright-core): sign in, open a branch, see a lend made at an edge appear live on the
// posts grid, send "out of service" for a post and see it applied, change the branch's kiosk
// language and see the running edge apply it; with --admin-login, sign in again as a chain
// admin and create, then disable, a user on the Users page.
//
//   node dashboard.mjs --url URL --login NAME --password PASS --branch UUID [--screenshots DIR]
//                      [--admin-login NAME --admin-password PASS]
//
// --url       the hub's dashboard (http://HOST:PORT/dashboard/ or the root, which redirects)
// --branch    the branch to open; its posts must show on the grid
//
// The lend happens outside the browser: once the branch view is open and live, the script
// prints `LEND?` and reads one line `LENT <post> SPARE <post>` on stdin (the test makes the
// lend at the edge and answers with the lent post and another post of the same edge, which
// the script then takes out of service). No reload happens after that: the post must change through the pushed
// update alone.
//
// Exit 0 and `dashboard e2e: 1 passed, 0 failed` on success; otherwise the failed step, a
// screenshot if asked, exit 1 and `dashboard e2e: 0 passed, 1 failed` (2 for bad arguments).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

function usage(message) {
  if (message) console.error(`dashboard: ${message}`);
  console.error('usage: node dashboard.mjs --url URL --login NAME --password PASS --branch UUID [--screenshots DIR]');
  console.log('dashboard e2e: 0 passed, 1 failed');
  process.exit(2);
}

function parseArgs(argv) {
  const known = new Set(['url', 'login', 'password', 'branch', 'screenshots', 'admin-login', 'admin-password']);
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !known.has(m[1])) usage(`unknown argument ${argv[i]}`);
    let value = m[2];
    if (value === undefined) { value = argv[i + 1]; i += 1; }
    if (value === undefined || value === '') usage(`--${m[1]} needs a value`);
    out[m[1]] = value;
  }
  for (const required of ['url', 'login', 'password', 'branch']) {
    if (!out[required]) usage(`--${required} is required`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const origin = new URL(args.url).origin;
const shotsDir = args.screenshots ? path.resolve(args.screenshots) : null;
const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve, reject) => {
  lines.once('line', resolve);
  lines.once('close', () => reject(new Error('stdin closed before the lend was reported')));
});

let page;
let context;
let userDataDir = null;
let currentStep = 'start';
const pageErrors = [];
const foreignRequests = [];

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function step(name, fn) {
  currentStep = name;
  const started = Date.now();
  const result = await fn();
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
  if (shotsDir && page) {
    await page.screenshot({ path: path.join(shotsDir, `${name.replace(/[^a-z0-9]+/gi, '-')}.png`), fullPage: true });
  }
  return result;
}

let spare = null;
const post = (n) => page.locator(`#posts .post[data-post="${n}"]`);

async function run() {
  if (shotsDir) fs.mkdirSync(shotsDir, { recursive: true });
  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cartwise-dashboard-'));
  await step('launch Chromium', async () => {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1400, height: 1000 },
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(20000);
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith('data:') && !url.startsWith(`${origin}/`)) foreignRequests.push(url);
    });
  });

  await step('sign in', async () => {
    await page.goto(args.url, { waitUntil: 'load' });
    await page.locator('#login').waitFor({ state: 'visible' });
    await page.fill('#login-name', args.login);
    await page.fill('#login-password', args.password);
    await page.click('#login-submit');
    await page.locator('#branches').waitFor({ state: 'visible' });
    await page.locator('#login').waitFor({ state: 'hidden' });
  });

  await step('switch to Hebrew and back', async () => {
    await page.click('#lang');
    await page.waitForFunction(() => document.documentElement.dir === 'rtl' && document.documentElement.lang === 'he');
    await page.locator('#branches').waitFor({ state: 'visible' });
    await page.click('#lang');
    await page.waitForFunction(() => document.documentElement.dir === 'ltr');
  });

  await step('open the branch', async () => {
    await page.click(`#branches a[data-branch="${args.branch}"]`);
    await page.locator('#posts .post').first().waitFor({ state: 'visible' });
    await page.locator('#live[data-state="on"]').waitFor({ state: 'attached' });
    const count = await page.locator('#posts .post').count();
    assert(count > 0, 'the posts grid is empty');
    const charts = await page.locator('figure.chart svg').count();
    assert(charts >= 4, `${charts} charts drawn, expected 4`);
  });

  const lent = await step('a lend at the edge appears live', async () => {
    console.log('LEND?');
    const line = await nextLine();
    const m = /^LENT (\d+) SPARE (\d+)$/.exec(line.trim());
    assert(m, `expected "LENT <post> SPARE <post>", got ${line}`);
    const n = Number(m[1]);
    spare = Number(m[2]);
    await post(n).waitFor({ state: 'attached' });
    await page.waitForFunction((n) => {
      const row = document.querySelector(`#active-rentals`);
      const el = document.querySelector(`#posts .post[data-post="${n}"]`);
      return el && el.dataset.status === 'in_use' && row &&
        [...row.querySelectorAll('tbody tr td:first-child')].some((td) => td.textContent === String(n));
    }, n, { timeout: 30000 });
    return n;
  });

  await step('out of service is applied', async () => {
    const target = spare;
    assert(target !== lent, 'the spare post is the lent one');
    await page.waitForFunction((n) => {
      const el = document.querySelector(`#posts .post[data-post="${n}"]`);
      return el && el.dataset.status === 'available';
    }, target);
    await post(target).locator('button[data-act="out_of_service"]').click();
    await page.waitForFunction((n) => {
      const intent = document.querySelector(`#posts .post[data-post="${n}"] .intent[data-kind="out_of_service"]`);
      return intent && ['pending', 'applied'].includes(intent.dataset.status);
    }, target);
    await page.waitForFunction((n) => {
      const el = document.querySelector(`#posts .post[data-post="${n}"]`);
      const intent = el && el.querySelector('.intent[data-kind="out_of_service"]');
      return intent && intent.dataset.status === 'applied' && el.dataset.status === 'out_of_service';
    }, target, { timeout: 30000 });
    console.log(`  post ${target} out of service`);
  });

  await step('a branch setting is applied by the edge', async () => {
    await page.locator('#settings-form').waitFor({ state: 'visible' });
    await page.selectOption('#settings-form select[name="language"]', 'en');
    await page.click('#settings-form button[type="submit"]');
    // One intent per device of the branch; the running edge answers, the others stay pending.
    await page.waitForFunction(() => document.querySelectorAll('#settings .setting-intent[data-setting="language"]').length > 0);
    await page.waitForFunction(() => [...document.querySelectorAll('#settings .setting-intent[data-setting="language"]')]
      .some((el) => el.dataset.status === 'applied'), null, { timeout: 30000 });
  });

  if (args['admin-login']) {
    await step('an admin creates and disables a user', async () => {
      page.on('dialog', (dialog) => dialog.accept());
      await page.click('#logout');
      await page.locator('#login').waitFor({ state: 'visible' });
      await page.fill('#login-name', args['admin-login']);
      await page.fill('#login-password', args['admin-password']);
      await page.click('#login-submit');
      await page.locator('#nav-users').waitFor({ state: 'visible' });
      await page.locator('#login').waitFor({ state: 'hidden' });
      await page.click('#nav-users');
      await page.locator('#users').waitFor({ state: 'visible' });
      const form = page.locator('#user-form');
      await form.locator('input[name="login"]').fill('e2e-viewer');
      await form.locator('input[name="password"]').fill('a long enough password');
      await form.locator('select[name="role"]').selectOption('viewer');
      await form.locator('button[type="submit"]').click();
      const row = page.locator('#users tbody tr', { hasText: 'e2e-viewer' });
      await row.waitFor({ state: 'visible' });
      await row.locator('button[data-user-act="disable"]').click();
      await page.locator('#users tbody tr', { hasText: 'e2e-viewer' })
        .locator('[data-active="false"]').waitFor({ state: 'attached' });
    });
  }

  assert(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
  assert(foreignRequests.length === 0, `requests outside ${origin}: ${foreignRequests.join(', ')}`);
}

function cleanUp() {
  if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
}

try {
  await run();
  console.log('dashboard e2e: 1 passed, 0 failed');
  await context.close();
  cleanUp();
  process.exit(0);
} catch (error) {
  console.log(`not ok - ${currentStep}: ${error.message}`);
  if (page) {
    try { console.log(`  posts: ${await page.locator('#posts').innerText()}`); } catch (_) { /* ignore */ }
  }
  if (shotsDir && page) {
    try { await page.screenshot({ path: path.join(shotsDir, 'failure.png'), fullPage: true }); } catch (_) { /* ignore */ }
  }
  console.log('dashboard e2e: 0 passed, 1 failed');
  if (context) await context.close().catch(() => {});
  cleanUp();
  process.exit(1);
}
