// Drives a running `twokey demo` in Debian's chromium to take the README's screenshots.
//   node tests/peers/screenshots.mjs http://127.0.0.1:18080 docs/
// Signs in as Alice, asks to delete a vault on demo-dual, signs in as Bob, opens his review
// link from the outbox, and captures the pages (laptop and phone width).
import { chromium } from 'playwright-core';
import fs from 'node:fs';

const [base, out] = [process.argv[2], process.argv[3] || 'docs'];
fs.mkdirSync(out, { recursive: true });
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

async function signIn(page, who) {
  await page.goto(`${base}/auth/dev`);
  await page.click(`form:has(input[value="${who}"]) button`);
}

const laptop = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const alice = await laptop.newPage();
await signIn(alice, 'alice@demo.twokey');
await alice.goto(`${base}/requests/new`);
await alice.screenshot({ path: `${out}/new-request.png`, fullPage: false });
const value = await alice.locator('#vault_id option', { hasText: 'rsv-finance' }).first().getAttribute('value');
await alice.selectOption('#vault_id', value);
await alice.check('#op-rsv\\.delete_vault');
await alice.fill('#justification', 'Vault replaced by rsv-finance-2 (CHG-2041); all items moved and verified.');
await alice.fill('#ticket', 'CHG-2041');
await alice.fill('#duration_minutes', '30');
await alice.click('button[type=submit]:has-text("Send for approval")');
const requestUrl = alice.url();

const bobCtx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
const bob = await bobCtx.newPage();
await signIn(bob, 'bob@demo.twokey');
await bob.goto(`${base}/dev/outbox`);
await bob.click('tr:has-text("bob@demo.twokey") a:has-text("Approval needed")');
const link = await bob.locator('ul a[href*="/review/"]').first().getAttribute('href');
await bob.goto(link);
await bob.screenshot({ path: `${out}/review.png`, fullPage: true });
const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true });
const bobPhone = await phone.newPage();
await signIn(bobPhone, 'bob@demo.twokey');
await bobPhone.goto(link);
await bobPhone.screenshot({ path: `${out}/review-phone.png`, fullPage: false });
await bob.fill('#comment', 'Checked CHG-2041 with the finance team.');
await bob.click('button[value=approve]');
await alice.goto(requestUrl);
await alice.screenshot({ path: `${out}/request.png`, fullPage: true });

// The approver mail as a mail client shows it: the HTML part of the .eml.
if (process.argv[4]) {
  const mail = await laptop.newPage();
  await mail.setViewportSize({ width: 720, height: 900 });
  await mail.goto(`file://${process.argv[4]}`);
  await mail.screenshot({ path: `${out}/mail.png`, fullPage: true });
}
await browser.close();
console.log('screenshots written to', out);
