#!/usr/bin/env node
// End-to-end test of the CartWise kiosk page in a real headless browser (Debian's Chromium
// driven by playwright-core): take a cart and return it in Hebrew, then switch to English.
//
//   node kiosk-flow.mjs --kiosk URL --outbox PATH --sim-control URL [--screenshots DIR]
//                       [--phone 05XXXXXXXX]
//
// --kiosk        the kiosk page (http://HOST:PORT/kiosk/ or the server root, which redirects)
// --outbox       the edge's development SMS outbox (JSON lines {"to","text","code"})
// --sim-control  the board simulator's control API (http://HOST:PORT)
// --screenshots  save a PNG of each screen (and of the failure) there
//
// Exit 0 and `kiosk e2e: 1 passed, 0 failed` on success; on failure the step that failed,
// a screenshot if asked, exit 1 and `kiosk e2e: 0 passed, 1 failed`.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

const HEBREW = /[\u0590-\u05FF]/;

function usage(message) {
  if (message) console.error(`kiosk-flow: ${message}`);
  console.error('usage: node kiosk-flow.mjs --kiosk URL --outbox PATH --sim-control URL [--screenshots DIR] [--phone 05XXXXXXXX]');
  console.log('kiosk e2e: 0 passed, 1 failed');
  process.exit(2);
}

function parseArgs(argv) {
  const known = new Set(['kiosk', 'outbox', 'sim-control', 'screenshots', 'phone']);
  const out = {};
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '-h' || arg === '--help') usage();
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(arg);
    if (!m || !known.has(m[1])) usage(`unknown argument ${arg}`);
    let value = m[2];
    if (value === undefined) {
      value = argv[i + 1];
      i += 1;
    }
    if (value === undefined || value === '') usage(`--${m[1]} needs a value`);
    out[m[1]] = value;
  }
  for (const required of ['kiosk', 'outbox', 'sim-control']) {
    if (!out[required]) usage(`--${required} is required`);
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));
const kioskUrl = new URL(args.kiosk);
const origin = kioskUrl.origin;
const simControl = args['sim-control'].replace(/\/+$/, '');
const phone = args.phone || '0521234567';
const phoneE164 = `+972${phone.slice(1)}`;
const shotsDir = args.screenshots ? path.resolve(args.screenshots) : null;
if (!/^05\d{8}$/.test(phone)) usage('--phone must be 05XXXXXXXX');

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let currentStep = 'start';
function log(message) {
  console.log(`  ${message}`);
}

async function step(name, fn) {
  currentStep = name;
  const started = Date.now();
  const result = await fn();
  console.log(`ok - ${name} (${Date.now() - started} ms)`);
  return result;
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function json(method, url, body) {
  let res;
  try {
    res = await fetch(url, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(10000),
    });
  } catch (err) {
    const why = (err.cause && (err.cause.code || err.cause.message)) || err.message;
    throw new Error(`${method} ${url}: ${why}`);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) throw new Error(`${method} ${url} -> ${res.status} ${typeof data === 'string' ? data : JSON.stringify(data)}`);
  return data;
}

// ------------------------------------------------------------------ SMS outbox

function outboxLines() {
  let text;
  try { text = fs.readFileSync(args.outbox, 'utf8'); } catch (err) {
    if (err.code === 'ENOENT') return [];
    throw err;
  }
  return text.split('\n').filter((line) => line.trim() !== '');
}

/** The code of the last outbox message to `to` written after line `skip`, waiting up to `ms`. */
async function waitForCode(to, skip, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const lines = outboxLines().slice(skip);
    for (let i = lines.length - 1; i >= 0; i -= 1) {
      let msg;
      try { msg = JSON.parse(lines[i]); } catch (_) { continue; }
      if (msg && msg.to === to) {
        const code = typeof msg.code === 'string' ? msg.code : (/\b(\d{4})\b/.exec(msg.text || '') || [])[1];
        assert(/^\d{4}$/.test(code || ''), `outbox message to ${to} has no 4-digit code: ${lines[i]}`);
        return code;
      }
    }
    if (Date.now() > deadline) throw new Error(`no SMS to ${to} appeared in ${args.outbox} within ${ms / 1000} s`);
    await sleep(200);
  }
}

// ------------------------------------------------------------------ simulator

async function boardState(board) {
  const state = await json('GET', `${simControl}/state`);
  const found = (state.boards || []).find((b) => b.address === board);
  assert(found, `the simulator has no board ${board}`);
  return found;
}

async function postLocation(post) {
  const cart = await json('GET', `${origin}/carts/${post}`);
  const board = Number(cart.controller_address);
  const lock = Number(cart.lock_number);
  assert(Number.isInteger(board) && board >= 0 && board <= 9, `GET /carts/${post}: bad controller_address ${JSON.stringify(cart.controller_address)}`);
  assert(Number.isInteger(lock) && lock >= 1 && lock <= 16, `GET /carts/${post}: bad lock_number ${JSON.stringify(cart.lock_number)}`);
  return { board, lock };
}

// ------------------------------------------------------------------ browser

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cartwise-kiosk-e2e-'));
let context;
let page;
const pageErrors = [];
const foreignRequests = [];

async function screenshot(name) {
  if (!shotsDir || !page) return;
  fs.mkdirSync(shotsDir, { recursive: true });
  const file = path.join(shotsDir, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false, animations: 'disabled', timeout: 10000 });
  log(`screenshot ${file}`);
}

const tid = (id) => page.getByTestId(id);

async function visibleText(id, timeout = 10000) {
  await tid(id).waitFor({ state: 'visible', timeout });
  return (await tid(id).innerText()).trim();
}

async function typeDigits(digits) {
  for (const d of digits) await tid(`key-${d}`).click();
}

async function run() {
  await step('launch Chromium', async () => {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1080, height: 1920 },
      hasTouch: true,
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(15000);
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('request', (req) => {
      const url = req.url();
      if (!url.startsWith('data:') && !url.startsWith(`${origin}/`)) foreignRequests.push(url);
    });
  });

  await step('open the kiosk in Hebrew', async () => {
    await page.goto(kioskUrl.href, { waitUntil: 'load' });
    await tid('screen-home').waitFor({ state: 'visible' });
    const dir = await page.getAttribute('html', 'dir');
    const lang = await page.getAttribute('html', 'lang');
    assert(dir === 'rtl', `<html dir> is ${dir}, expected rtl`);
    assert(lang === 'he', `<html lang> is ${lang}, expected he`);
    const heading = await visibleText('home-title');
    assert(HEBREW.test(heading), `the home heading is not Hebrew: "${heading}"`);
    const take = await visibleText('take');
    assert(take.includes('קח עגלה'), `the take button reads "${take}"`);
    await screenshot('01-home-he');
  });

  let cartNumber;
  await step(`take a cart with phone ${phone}`, async () => {
    await tid('take').click();
    await tid('screen-entry').waitFor({ state: 'visible' });
    await typeDigits(phone);
    const shown = await tid('entry-display').getAttribute('data-value');
    assert(shown === phone, `the phone display holds "${shown}"`);
    await screenshot('02-phone-he');
    const skip = outboxLines().length;
    await tid('submit').click();
    await page.waitForSelector('[data-testid="screen-entry"][data-mode="code"].active', { timeout: 15000 });
    const code = await waitForCode(phoneE164, skip, 10000);
    log(`code ${code} from the outbox`);
    await typeDigits(code);
    await screenshot('03-code-he');
    await tid('submit').click();
    const text = await visibleText('cart-number', 60000);
    cartNumber = Number(text);
    assert(Number.isInteger(cartNumber) && cartNumber >= 1, `the success screen shows "${text}", not a cart number`);
    const label = await page.locator('[data-testid="screen-taken"] .result-label').innerText();
    assert(HEBREW.test(label), `the success screen is not in Hebrew: "${label}"`);
    log(`take cart number ${cartNumber}`);
    await screenshot('04-taken-he');
  });

  await step(`the cart leaves post ${cartNumber}`, async () => {
    // With the simulator's auto-take the cart is already gone; otherwise take it out by hand
    // once the hook has opened.
    const { board, lock } = await postLocation(cartNumber);
    const deadline = Date.now() + 10000;
    for (;;) {
      const b = await boardState(board);
      if (!b.present[lock - 1]) break;
      if (!b.hooks[lock - 1]) {
        // Open hook, cart still there: the shopper pulls it out. (A 409 here means the
        // simulator's auto-take got there first; the next look at the state settles it.)
        try {
          await json('POST', `${simControl}/take`, { board, lock });
          break;
        } catch (err) {
          if (!/-> 409/.test(err.message)) throw err;
        }
      }
      if (Date.now() > deadline) throw new Error(`post ${cartNumber} (board ${board} lock ${lock}) never unlocked`);
      await sleep(200);
    }
    // The success screen goes home by itself after ~20 s; tap "done" if it is still there.
    if (await tid('taken-done').isVisible()) await tid('taken-done').click().catch(() => {});
    await tid('screen-home').waitFor({ state: 'visible', timeout: 30000 });
  });

  let returnPost;
  await step('ask to return the cart', async () => {
    await tid('return').click();
    await tid('screen-entry').waitFor({ state: 'visible' });
    await typeDigits(phone);
    await tid('submit').click();
    const text = await visibleText('return-post', 15000);
    returnPost = Number(text);
    assert(Number.isInteger(returnPost) && returnPost >= 1, `the dock screen shows "${text}", not a post number`);
    log(`dock the cart at post ${returnPost}`);
    await screenshot('05-dock-he');
  });

  await step(`dock the cart at post ${returnPost}`, async () => {
    const { board, lock } = await postLocation(returnPost);
    log(`post ${returnPost} is board ${board} lock ${lock}`);
    await json('POST', `${simControl}/dock`, { board, lock });
    const title = await visibleText('returned', 30000);
    assert(HEBREW.test(title), `the returned screen is not in Hebrew: "${title}"`);
    assert((await page.getAttribute('html', 'dir')) === 'rtl', 'the page left RTL');
    await screenshot('06-returned-he');
    if (await tid('returned-done').isVisible()) await tid('returned-done').click().catch(() => {});
    await tid('screen-home').waitFor({ state: 'visible', timeout: 30000 });
  });

  await step('switch to English', async () => {
    await tid('lang-toggle').click();
    const dir = await page.getAttribute('html', 'dir');
    const lang = await page.getAttribute('html', 'lang');
    assert(dir === 'ltr' && lang === 'en', `after the switch <html> is lang=${lang} dir=${dir}`);
    const heading = await visibleText('home-title');
    const take = await visibleText('take');
    const ret = await visibleText('return');
    assert(!HEBREW.test(heading) && /welcome/i.test(heading), `the home heading is not English: "${heading}"`);
    assert(/take a cart/i.test(take) && /return a cart/i.test(ret), `the home buttons read "${take}" / "${ret}"`);
    await screenshot('07-home-en');
    await page.reload({ waitUntil: 'load' });
    await tid('screen-home').waitFor({ state: 'visible' });
    assert((await page.getAttribute('html', 'lang')) === 'en', 'the language choice was not remembered across a reload');
  });

  await step('no page errors and no external requests', async () => {
    assert(pageErrors.length === 0, `page errors: ${pageErrors.join(' | ')}`);
    assert(foreignRequests.length === 0, `requests outside ${origin}: ${foreignRequests.join(', ')}`);
  });
}

let failed = false;
try {
  await run();
} catch (err) {
  failed = true;
  console.error(`FAILED at step "${currentStep}": ${err && err.message ? err.message : err}`);
  if (pageErrors.length) console.error(`page errors: ${pageErrors.join(' | ')}`);
  try { await screenshot('failure'); } catch (shotErr) { console.error(`(no screenshot: ${shotErr.message})`); }
} finally {
  if (context) await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}
console.log(failed ? 'kiosk e2e: 0 passed, 1 failed' : 'kiosk e2e: 1 passed, 0 failed');
process.exit(failed ? 1 : 0);
