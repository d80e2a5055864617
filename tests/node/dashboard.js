'use strict';
// Open the Agent Lightning dashboard served by lightning-otlp in headless Chromium (Debian's
// package, driven by playwright-core) and check what a person would look at: the rollout list,
// then one rollout's attempts and its spans.
//
//   node dashboard.js <base-url> <rollout-id> <attempt-id> <span-name> <screenshot-dir>
//
// With DASHBOARD_TOKEN set (the receiver requires a token), the first page must be the sign-in
// form and show nothing of the store; the token is entered there as a person would.
//
// Prints one JSON line: what was found on each page, and the screenshots' paths.
const path = require('node:path');
const { chromium } = require('playwright-core');

const [baseUrl, rolloutId, attemptId, spanName, outDir] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

async function main() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  const found = {};
  const failed = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    page.on('response', (response) => {
      if (response.url().includes('/v1/agl/') && response.status() >= 400) {
        failed.push(`${response.status()} ${response.url()}`);
      }
    });
    const token = process.env.DASHBOARD_TOKEN;
    if (token) {
      await page.goto(`${baseUrl}/rollouts`, { waitUntil: 'networkidle' });
      await page.getByRole('button', { name: 'Sign in' }).waitFor({ timeout: 30000 });
      found.signIn = await page.locator('body').innerText();
      await page.locator('input[name="token"]').fill('wrong-token');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByText('unknown token').waitFor({ timeout: 30000 });
      found.wrongToken = await page.locator('body').innerText();
      await page.locator('input[name="token"]').fill(token);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.waitForURL(`${baseUrl}/rollouts`, { timeout: 30000 });
    }
    // The rollout list.
    await page.goto(`${baseUrl}/rollouts`, { waitUntil: 'networkidle' });
    await page.getByText(rolloutId).first().waitFor({ timeout: 30000 });
    found.rollouts = await page.locator('body').innerText();
    const listShot = path.join(outDir, 'dashboard-rollouts.png');
    await page.screenshot({ path: listShot, fullPage: true });

    // One rollout: expand its row to show its attempts.
    await page.getByText(rolloutId).first().click();
    await page.getByText(attemptId).first().waitFor({ timeout: 30000 });
    found.attempts = await page.locator('body').innerText();
    const attemptShot = path.join(outDir, 'dashboard-attempts.png');
    await page.screenshot({ path: attemptShot, fullPage: true });

    // Its spans: the traces view for that rollout and attempt.
    const query = new URLSearchParams({ rolloutId, attemptId });
    await page.goto(`${baseUrl}/traces?${query}`, { waitUntil: 'networkidle' });
    await page.getByText(spanName).first().waitFor({ timeout: 30000 });
    found.spans = await page.locator('body').innerText();
    const spanShot = path.join(outDir, 'dashboard-spans.png');
    await page.screenshot({ path: spanShot, fullPage: true });
    console.log(
      JSON.stringify({ found, failed, screenshots: [listShot, attemptShot, spanShot] }),
    );
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
