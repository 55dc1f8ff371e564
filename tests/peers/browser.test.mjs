// End-to-end tests in Debian's chromium, driven by playwright-core, against `twokey demo`
// started on a random port with its own data directory. Run by scripts/test.sh after the Rust
// tests (which build target/debug/twokey):  node --test tests/peers/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const bin = process.env.TWOKEY_BIN || path.join(root, 'target/debug/twokey');
const shots = path.join(root, 'target/browser-screens');
let demo, base, browser, dataDir;

before(async () => {
  fs.mkdirSync(shots, { recursive: true });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'twokey-browser-'));
  demo = spawn(bin, ['demo', '--bind', '127.0.0.1:0', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'ignore'] });
  const first = await new Promise((resolve, reject) => {
    const rl = readline.createInterface({ input: demo.stdout });
    rl.once('line', resolve);
    demo.once('exit', (code) => reject(new Error(`twokey demo exited with ${code}`)));
  });
  base = first.trim().split(' ').pop();
  assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/);
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  demo?.kill('SIGTERM');
  fs.rmSync(dataDir, { recursive: true, force: true });
});

/** A page that fails the test if it ever asks another origin for anything. */
async function newPage(opts = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...opts });
  const page = await ctx.newPage();
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (u.protocol.startsWith('http')) assert.equal(u.origin, base, `request to another origin: ${r.url()}`);
  });
  page.on('pageerror', (e) => assert.fail(`script error: ${e}`));
  return page;
}

async function signIn(page, who, next = '/') {
  await page.goto(`${base}/auth/dev?next=${encodeURIComponent(next)}`);
  await page.click(`form:has(input[value="${who}"]) button`);
}

async function vaultValue(page, name) {
  return page.locator('#vault_id option', { hasText: name }).first().getAttribute('value');
}

/** Reload until the state badge says `state` (the demo's worker runs in the background). */
async function waitForState(page, state) {
  for (let i = 0; i < 50; i++) {
    const badge = await page.locator('h1 .badge').textContent();
    if (badge.trim() === state) return;
    await page.waitForTimeout(200);
    await page.reload();
  }
  assert.fail(`request never reached ${state}`);
}

async function reviewLinkFor(page, who, requestId) {
  await page.goto(`${base}/dev/outbox`);
  const rows = page.locator(`tr:has-text("${who}") a:has-text("Approval needed")`);
  const n = await rows.count();
  for (let i = 0; i < n; i++) {
    await page.goto(`${base}/dev/outbox`);
    await page.locator(`tr:has-text("${who}") a:has-text("Approval needed")`).nth(i).click();
    const body = await page.locator('pre.mail').textContent();
    if (body.includes(requestId) || n === 1) {
      return page.locator('ul a[href*="/review/"]').first().getAttribute('href');
    }
  }
  // The mail names the request by its details link only in other mail kinds; fall back to newest.
  await page.goto(`${base}/dev/outbox`);
  await page.locator(`tr:has-text("${who}") a:has-text("Approval needed")`).first().click();
  return page.locator('ul a[href*="/review/"]').first().getAttribute('href');
}

test('alice asks to delete a vault on demo-dual, bob and carol approve from their mail, alice ends the window early', async () => {
  const alice = await newPage();
  await signIn(alice, 'alice@demo.twokey', '/requests/new');
  await alice.selectOption('#vault_id', await vaultValue(alice, 'rsv-finance'));
  await alice.check('#op-rsv\\.delete_vault');
  await alice.fill('#justification', 'Vault replaced by rsv-finance-2 (CHG-2041); items moved and verified.');
  await alice.fill('#ticket', 'CHG-2041');
  await alice.fill('#duration_minutes', '30');
  await alice.click('button:has-text("Send for approval")');
  await alice.waitForURL(/\/requests\/[0-9a-f-]+$/);
  const requestId = alice.url().split('/').pop();
  assert.equal((await alice.locator('h1 .badge').textContent()).trim(), 'pending');
  assert.match(await alice.locator('.card.waiting').textContent(), /2 more approval/);
  await alice.screenshot({ path: `${shots}/request-pending.png`, fullPage: true });

  for (const who of ['bob@demo.twokey', 'carol@demo.twokey']) {
    const page = await newPage();
    // The link comes from the mail; following it signed out leads through sign-in and back.
    const link = await reviewLinkFor(page, who, requestId);
    await page.goto(link);
    assert.match(page.url(), /\/auth\/dev\?next=%2Freview%2F/);
    await page.click(`form:has(input[value="${who}"]) button`);
    await page.waitForURL(/\/review\//);
    assert.match(await page.locator('h1').textContent(), /Delete the vault/);
    await page.screenshot({ path: `${shots}/review-${who.split('@')[0]}.png`, fullPage: true });
    await page.fill('#comment', `ok from ${who}`);
    await page.click('button[value=approve]');
    assert.match(await page.locator('h1').textContent(), /approv/i);
    await page.context().close();
  }

  await alice.reload();
  await waitForState(alice, 'active');
  // The countdown is live (script), and says how long is left.
  await alice.waitForFunction(() => /left$/.test(document.querySelector('.countdown')?.textContent || ''));
  await alice.screenshot({ path: `${shots}/request-active.png`, fullPage: true });
  await alice.click('button:has-text("End the access window now")');
  await waitForState(alice, 'ended');
  const timeline = await alice.locator('ol.timeline').textContent();
  for (const line of ['Requested by alice@demo.twokey', 'Approved by bob@demo.twokey', 'Approved by carol@demo.twokey', 'Access window open', 'Window ended early']) {
    assert.ok(timeline.includes(line), `timeline lacks "${line}"`);
  }
  await alice.context().close();

  // Erin (auditor) downloads the CSV for this request: it holds the whole story.
  const erin = await newPage({ acceptDownloads: true });
  await signIn(erin, 'erin@demo.twokey', `/audit?request=${requestId}`);
  await erin.click('a:has-text("Verify the hash chain now")');
  assert.match(await erin.locator('.chain-ok').textContent(), /chain is whole/);
  await erin.screenshot({ path: `${shots}/audit.png`, fullPage: true });
  const [download] = await Promise.all([erin.waitForEvent('download'), erin.click('#download-csv')]);
  const csv = fs.readFileSync(await download.path(), 'utf8');
  for (const action of ['request.created', 'review.opened', 'decision.approved', 'grant.requested', 'grant.active', 'grant.ended']) {
    assert.ok(csv.includes(action), `the CSV lacks ${action}`);
  }
  assert.equal((csv.match(/decision\.approved/g) || []).length, 2, 'both approvals');
  assert.ok(csv.includes('CHG-2041'));
  await erin.context().close();
});

test('form errors appear next to their fields and keep the input', async () => {
  const page = await newPage();
  await signIn(page, 'alice@demo.twokey', '/requests/new');
  await page.selectOption('#vault_id', await vaultValue(page, 'rsv-prod-weu'));
  await page.check('#op-rsv\\.stop_protection_retain_data');
  await page.fill('#justification', 'short');
  await page.fill('#ticket', 'T-77');
  await page.fill('#duration_minutes', '30');
  await page.click('button:has-text("Send for approval")');
  const err = page.locator('#justification-error');
  assert.match(await err.textContent(), /at least 10/);
  assert.equal(await page.locator('#justification').getAttribute('aria-invalid'), 'true');
  assert.equal(await page.inputValue('#justification'), 'short');
  assert.equal(await page.inputValue('#ticket'), 'T-77');
  assert.ok(await page.isChecked('#op-rsv\\.stop_protection_retain_data'));
  await page.fill('#justification', 'Now a proper reason for the change');
  await page.fill('#duration_minutes', '100000');
  await page.click('button:has-text("Send for approval")');
  assert.match(await page.locator('#duration-error').textContent(), /at most 240/);
  await page.screenshot({ path: `${shots}/form-errors.png`, fullPage: true });
  await page.context().close();
});

test('the review page cannot be framed by another site', async () => {
  const bob = await newPage();
  const link = await reviewLinkFor(bob, 'bob@demo.twokey', '');
  await signIn(bob, 'bob@demo.twokey');
  const framer = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`<!doctype html><p>evil</p><iframe id="f" src="${base}${new URL(link, base).pathname}" width="800" height="600"></iframe>`);
  });
  await new Promise((r) => framer.listen(0, '127.0.0.1', r));
  const ctx = bob.context();
  const evil = await ctx.newPage();
  await evil.goto(`http://127.0.0.1:${framer.address().port}/`);
  await evil.waitForLoadState('load');
  const frame = evil.frames().find((f) => f !== evil.mainFrame());
  const approve = frame ? await frame.locator('button[value=approve]').count().catch(() => 0) : 0;
  assert.equal(approve, 0, 'the framed review page must not render');
  framer.close();
  await ctx.close();
});

test('the request form works with the keyboard alone', async () => {
  const page = await newPage();
  await signIn(page, 'alice@demo.twokey', '/requests/new');
  const focusId = () => page.evaluate(() => document.activeElement?.id || '');
  async function tabTo(id) {
    for (let i = 0; i < 80; i++) {
      if ((await focusId()) === id) return;
      await page.keyboard.press('Tab');
    }
    assert.fail(`Tab never reached #${id}`);
  }
  await tabTo('vault_id');
  await page.keyboard.press('ArrowDown');
  assert.notEqual(await page.inputValue('#vault_id'), '');
  await tabTo('op-rsv.stop_protection_retain_data');
  await page.keyboard.press('Space');
  await tabTo('justification');
  await page.keyboard.type('Keyboard-only request for the runbook test');
  await tabTo('duration_minutes');
  await page.keyboard.press('Control+A');
  await page.keyboard.type('15');
  await page.keyboard.press('Enter');
  await page.waitForURL(/\/requests\/[0-9a-f-]+$/);
  assert.equal((await page.locator('h1 .badge').textContent()).trim(), 'pending');
  await page.context().close();
});

test('every page works with JavaScript off, and looks right on a phone', async () => {
  const page = await newPage({ javaScriptEnabled: false, viewport: { width: 390, height: 844 }, isMobile: true });
  await signIn(page, 'alice@demo.twokey', '/requests/new');
  await page.screenshot({ path: `${shots}/new-request-phone.png`, fullPage: true });
  await page.selectOption('#vault_id', await vaultValue(page, 'bv-prod-weu'));
  await page.check('#op-bv\\.suspend_backups');
  await page.fill('#justification', 'Suspending while the database is migrated');
  await page.click('button:has-text("Send for approval")');
  await page.waitForURL(/\/requests\/[0-9a-f-]+$/);
  await page.screenshot({ path: `${shots}/request-phone.png`, fullPage: true });
  for (const p of ['/', '/guards', '/dev/outbox']) {
    await page.goto(`${base}${p}`);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `${p} scrolls sideways on a phone by ${overflow}px`);
    await page.screenshot({ path: `${shots}/phone${p.replaceAll('/', '_') || '_home'}.png`, fullPage: true });
  }
  await page.context().close();
});
