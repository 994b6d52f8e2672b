// The web console in Debian's headless Chromium: a user and an admin go through the main
// flows, and each flow is checked both on the page and in what the API then holds.
// Driven by tests/api/console.rs; env: BASE_URL, ADMIN_EMAIL, ADMIN_PASSWORD, USER_EMAIL,
// USER_PASSWORD, MODEL, ARTIFACTS (screenshot directory).

import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set`);
  return value;
};
const BASE = env('BASE_URL');
const MODEL = env('MODEL');
const ARTIFACTS = env('ARTIFACTS');
mkdirSync(ARTIFACTS, { recursive: true });
const AXE = readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/// The API, called directly: what it holds after each flow.
async function api(method, path, token, body) {
  const response = await fetch(`${BASE}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body && JSON.stringify(body),
  });
  const json = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}
async function tokenOf(email, password) {
  const response = await fetch(`${BASE}/v1/auth/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email, password }),
  });
  return (await response.json()).access_token;
}

const violations = [];
/// axe-core on the current page: serious and critical violations are collected.
async function audit(page, name) {
  await page.evaluate(AXE);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  for (const v of result.violations.filter((v) => ['serious', 'critical'].includes(v.impact))) {
    violations.push(`${name}: ${v.id} (${v.impact}) ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  }
}
/// No horizontal scrolling of the page itself (wide tables scroll inside their region).
async function fitsWidth(page, name) {
  const [scroll, width, wide] = await page.evaluate(() => [
    document.documentElement.scrollWidth, window.innerWidth,
    [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth)
      .slice(0, 5).map((e) => `${e.tagName}.${e.className}#${e.id}`),
  ]);
  assert.ok(scroll <= width, `${name} is ${scroll}px wide in a ${width}px window: ${wide}`);
}
async function visit(page, hash, heading) {
  await page.goto(`${BASE}/${hash}`);
  await page.getByRole('heading', { level: 1, name: heading }).waitFor();
  await page.getByText('Loading…').first().waitFor({ state: 'detached' }).catch(() => {});
}
const shot = (page, name) => page.screenshot({ path: `${ARTIFACTS}/${name}.png`, fullPage: true });

/// Signs in with the keyboard only: Tab from the top of the page to the form, Enter submits.
async function signIn(page, email, password) {
  await page.goto(`${BASE}/`);
  await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor();
  await audit(page, 'sign in');
  const focused = () => page.evaluate(() => document.activeElement?.getAttribute('name') || document.activeElement?.textContent);
  for (let i = 0; i < 10 && (await focused()) !== 'email'; i += 1) await page.keyboard.press('Tab');
  assert.equal(await focused(), 'email', 'the email field is reached with Tab');
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  assert.notEqual(outline, 'none', 'the focused field shows its focus');
  await page.keyboard.type(email);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
}

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const failing = [];
try {
  const userToken = await tokenOf(env('USER_EMAIL'), env('USER_PASSWORD'));
  const adminToken = await tokenOf(env('ADMIN_EMAIL'), env('ADMIN_PASSWORD'));

  // A wrong password shows the API's message.
  const userContext = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const user = await userContext.newPage();
  failing.push(['user', user]);
  const pageErrors = [];
  user.on('pageerror', (e) => pageErrors.push(String(e)));
  await user.goto(`${BASE}/`);
  await user.getByLabel('Email').fill(env('USER_EMAIL'));
  await user.getByLabel('Password').fill('not-the-password');
  await user.getByRole('button', { name: 'Sign in' }).click();
  const loginError = await user.getByRole('alert').textContent();
  assert.ok(loginError.length > 0 && !loginError.includes('Something went wrong'), loginError);

  // The user signs in: the overview shows the API's balance.
  await signIn(user, env('USER_EMAIL'), env('USER_PASSWORD'));
  let me = await api('GET', '/v1/me', userToken);
  await user.locator('#balance').filter({ hasText: me.balance }).waitFor();
  await audit(user, 'overview');
  await shot(user, 'overview');

  // An access key with limits: its secret is shown once, the API holds the limits.
  await visit(user, '#/keys', 'Access keys');
  await user.getByLabel('Name').fill('console key');
  await user.getByLabel('Requests per minute').fill('60');
  await user.getByLabel('Spend limit').fill('5');
  await user.getByLabel('Spend period').selectOption('day');
  await user.getByRole('button', { name: 'Create key' }).click();
  const secret = (await user.locator('#new-secret').textContent()).trim();
  assert.match(secret, /^sk-/);
  await user.getByRole('cell', { name: 'console key', exact: true }).waitFor();
  const keys = (await api('GET', '/v1/me/access-keys', userToken)).data;
  const created = keys.find((k) => k.name === 'console key');
  assert.ok(created, JSON.stringify(keys));
  assert.equal(created.rpm_limit, 60);
  assert.equal(created.spend_limit_period, 'day');
  assert.ok(secret.startsWith(created.prefix), `${secret} / ${created.prefix}`);
  await audit(user, 'access keys');
  await shot(user, 'keys');
  await user.reload();
  await user.getByRole('cell', { name: 'console key', exact: true }).waitFor();
  assert.equal(await user.locator('#new-secret').count(), 0, 'the secret is shown only once');

  // Limits edited in place (an emptied field removes the limit), and a key revoked.
  await user.getByRole('button', { name: 'Edit limits of console key' }).click();
  await user.getByLabel('Requests per minute').nth(1).fill('');
  await user.getByLabel('Tokens per minute').nth(1).fill('100000');
  await user.getByRole('button', { name: 'Save limits' }).click();
  await user.getByRole('status').filter({ hasText: 'Limits of "console key" saved.' }).waitFor();
  const edited = (await api('GET', '/v1/me/access-keys', userToken)).data.find((k) => k.name === 'console key');
  assert.equal(edited.rpm_limit, null);
  assert.equal(edited.tpm_limit, 100000);
  assert.equal(edited.spend_limit_period, 'day');
  user.once('dialog', (dialog) => dialog.accept());
  await user.getByRole('button', { name: 'Revoke test' }).click();
  await user.getByRole('row', { name: /^test .*revoked/ }).waitFor();
  const revoked = (await api('GET', '/v1/me/access-keys', userToken)).data.find((k) => k.name === 'test');
  assert.equal(revoked.revoked, true);

  // An order: shown pending, and pending in the API.
  await visit(user, '#/topup', 'Top up');
  await user.getByLabel('Amount').fill('25');
  await user.getByRole('button', { name: 'Create order' }).click();
  const created_notice = await user.getByRole('status').filter({ hasText: 'Order' }).textContent();
  const orderNo = created_notice.match(/Order (\S+)/)[1];
  const order = (await api('GET', '/v1/me/orders', userToken)).data.find((o) => o.order_no === orderNo);
  assert.equal(order?.status, 'PENDING');
  await user.getByRole('cell', { name: orderNo, exact: true }).waitFor();
  await audit(user, 'top up');

  // The admin completes it.
  const adminContext = await browser.newContext({ viewport: { width: 1200, height: 800 } });
  const admin = await adminContext.newPage();
  failing.push(['admin', admin]);
  admin.on('pageerror', (e) => pageErrors.push(String(e)));
  await signIn(admin, env('ADMIN_EMAIL'), env('ADMIN_PASSWORD'));
  await visit(admin, '#/admin/orders', 'Orders');
  await audit(admin, 'admin orders');
  await admin.getByRole('button', { name: `Complete order ${orderNo}` }).click();
  await admin.getByRole('row', { name: new RegExp(`${orderNo}.*COMPLETED`) }).waitFor();
  const done = (await api('GET', '/v1/admin/orders', adminToken)).data.find((o) => o.order_no === orderNo);
  assert.equal(done.status, 'COMPLETED');
  // Another order, failed: FAILED in the API, and nothing credited.
  const unpaid = await api('POST', '/v1/me/orders', userToken, { amount: '3' });
  const balanceBefore = (await api('GET', '/v1/me', userToken)).balance;
  await admin.reload();
  await admin.getByRole('button', { name: `Fail order ${unpaid.order_no}` }).click();
  await admin.getByRole('row', { name: new RegExp(`${unpaid.order_no}.*FAILED`) }).waitFor();
  const failed = (await api('GET', '/v1/admin/orders', adminToken)).data.find((o) => o.order_no === unpaid.order_no);
  assert.equal(failed.status, 'FAILED');
  assert.equal((await api('GET', '/v1/me', userToken)).balance, balanceBefore);
  await audit(admin, 'admin orders after failing');
  await shot(admin, 'admin-orders');

  // The balance the user's page shows is the API's.
  me = await api('GET', '/v1/me', userToken);
  await visit(user, '#/', 'Overview');
  assert.equal((await user.locator('#balance').textContent()).trim(), me.balance);
  await visit(user, '#/topup', 'Top up');
  await user.getByRole('row', { name: new RegExp(`${orderNo}.*COMPLETED`) }).waitFor();

  // The playground streams an answer with the key just created, then shows its cost.
  await visit(user, '#/playground', 'Playground');
  assert.equal(await user.getByLabel('Access key').inputValue(), secret);
  await user.getByLabel('Model', { exact: true }).fill(MODEL);
  await user.getByLabel('Message').fill('Say hello to the console');
  await user.getByRole('button', { name: 'Send' }).click();
  await user.locator('#answer').filter({ hasText: /\S/ }).waitFor();
  const costText = await user.getByRole('status').filter({ hasText: /^Cost / }).textContent({ timeout: 30000 });
  const usage = (await api('GET', '/v1/me/usage', userToken)).data;
  assert.equal(usage.length, 1, JSON.stringify(usage));
  assert.ok(costText.startsWith(`Cost ${usage[0].cost} `), `${costText} / ${usage[0].cost}`);
  assert.ok((await user.locator('#answer').textContent()).trim().length > 0);
  await audit(user, 'playground');
  await shot(user, 'playground');

  // An image job from the playground: its image and its cost shown, as the API holds them.
  await user.getByLabel('Image model').fill('demo-image');
  await user.getByLabel('Image prompt').fill('a red fox');
  await user.getByRole('button', { name: 'Generate' }).click();
  const jobText = await user.getByRole('status').filter({ hasText: /^Job .*cost/ }).textContent({ timeout: 40000 });
  const jobs = (await api('GET', '/v1/jobs', secret)).data;
  assert.equal(jobs.length, 1, JSON.stringify(jobs));
  assert.equal(jobs[0].status, 'COMPLETED', JSON.stringify(jobs[0]));
  assert.equal(jobText, `Job ${jobs[0].job_id.slice(0, 8)}: COMPLETED, cost ${jobs[0].cost}.`);
  await user.getByRole('img', { name: `image 1 of job ${jobs[0].job_id.slice(0, 8)}` }).waitFor();
  await audit(user, 'playground image');
  await shot(user, 'playground-image');
  // The jobs screen lists it with its image.
  await visit(user, '#/jobs', 'Jobs');
  await user.getByRole('row', { name: new RegExp(`${jobs[0].job_id.slice(0, 8)}.*demo-image.*COMPLETED`) }).waitFor();
  assert.equal(await user.getByRole('img', { name: `image 1 of job ${jobs[0].job_id.slice(0, 8)}` }).count(), 1);
  await audit(user, 'jobs');
  await shot(user, 'jobs');

  // The usage log lists it and exports it as CSV; the ledger has the top-up and the charge.
  // Filters go to the API: what the page counts is what the API answers for the same filter.
  await visit(user, '#/usage', 'Usage');
  await user.getByRole('cell', { name: MODEL, exact: true }).first().waitFor();
  const matches = async (label) => {
    const text = await user.getByRole('status').filter({ hasText: 'calls match' }).textContent();
    return Number(text.match(/^(\d+) calls match/)[1]);
  };
  const applied = async (query, expect) => {
    await user.getByRole('button', { name: 'Apply' }).click();
    await user.getByRole('status').filter({ hasText: `${expect} calls match` }).waitFor();
    assert.equal((await api('GET', `/v1/me/usage?${query}`, userToken)).total, expect, query);
  };
  assert.equal(await matches(), 2, 'the chat call and the image job');
  await user.getByLabel('Model', { exact: true }).fill(MODEL);
  await applied(`model=${MODEL}`, 1);
  await user.getByLabel('Status').selectOption('overrun');
  await applied(`model=${MODEL}&status=overrun`, 0);
  await user.getByRole('paragraph').filter({ hasText: 'No calls match.' }).waitFor();
  await user.getByLabel('Status').selectOption('charged');
  const today = new Date().toISOString().slice(0, 10);
  await user.getByLabel('From').fill(today);
  await user.getByLabel('To').fill(today);
  await applied(`model=${MODEL}&status=charged&from=${today}T00:00:00Z`, 1);
  await user.getByLabel('Key').selectOption({ label: 'console key' });
  await applied(`model=${MODEL}&status=charged&access_key_id=${created.id}`, 1);
  const [download] = await Promise.all([user.waitForEvent('download'), user.getByRole('button', { name: 'Export CSV' }).click()]);
  const csv = readFileSync(await download.path(), 'utf8');
  assert.ok(csv.startsWith('created_at,request_id,access_key_id,model'), csv);
  assert.equal(csv.trim().split('\n').length, 2, `the export holds the filtered rows: ${csv}`);
  assert.ok(csv.includes(usage[0].request_id) && csv.includes(usage[0].cost) && csv.includes(',charged'), csv);
  await user.getByLabel('Model', { exact: true }).fill('demo-image');
  await applied(`model=demo-image&access_key_id=${created.id}`, 1);
  await audit(user, 'usage');
  await visit(user, '#/ledger', 'Ledger');
  await user.getByRole('cell', { name: 'charge', exact: true }).first().waitFor();
  await user.getByRole('cell', { name: 'topup', exact: true }).first().waitFor();
  await audit(user, 'ledger');
  // The overview charts spend per day and model; its numbers are the API's.
  await visit(user, '#/', 'Overview');
  await user.getByRole('img', { name: /Spend per day and model/ }).waitFor();
  await user.getByRole('listitem').filter({ hasText: MODEL }).waitFor();
  const spend = await api('GET', '/v1/me/spend', userToken);
  assert.equal((await user.locator('#spend').textContent()).trim(), spend.total.spend);
  assert.equal(spend.total.calls, 2);
  await user.getByRole('cell', { name: spend.models.find((m) => m.model === MODEL).spend, exact: true }).first().waitFor();
  assert.ok(await user.locator('svg.chart rect').count() >= 1, 'the chart has bars');
  await user.getByText('Spend per day and model: the numbers').click();
  await user.getByRole('region', { name: 'Spend per day and model' }).getByRole('columnheader', { name: MODEL }).waitFor();
  await audit(user, 'overview chart');
  await shot(user, 'console');

  // Users: a balance adjustment with its reason, and disabling a user, both as the API holds them.
  await visit(admin, '#/admin/users', 'Users');
  await admin.getByLabel('Search by email').fill(env('USER_EMAIL'));
  await admin.getByRole('button', { name: `Adjust balance of ${env('USER_EMAIL')}` }).click();
  await admin.getByLabel('Amount').fill('1.5');
  await admin.getByLabel('Reason').fill('console goodwill');
  await admin.getByRole('button', { name: 'Adjust', exact: true }).click();
  const before = me.balance;
  const adjusted = await admin.getByRole('status').filter({ hasText: 'is now' }).textContent();
  me = await api('GET', '/v1/me', userToken);
  assert.ok(adjusted.endsWith(`is now ${me.balance}.`), `${adjusted} / ${me.balance}`);
  const adjustment = (await api('GET', '/v1/me/ledger', userToken)).data.find((e) => e.kind === 'adjustment' && e.delta.startsWith('1.5'));
  assert.ok(adjustment, `no adjustment of 1.5 in the ledger (balance ${before} -> ${me.balance})`);
  await admin.getByLabel('Amount').fill('-100000');
  await admin.getByLabel('Reason').fill('too much');
  await admin.getByRole('button', { name: 'Adjust', exact: true }).click();
  await admin.getByRole('alert').waitFor();
  assert.equal((await api('GET', '/v1/me', userToken)).balance, me.balance, 'a refused adjustment changes nothing');
  const extra = `x${Date.now()}@example.com`;
  await fetch(`${BASE}/v1/auth/register`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ email: extra, password: 'password-123' }) });
  await admin.reload();
  await admin.getByLabel('Search by email').fill(extra);
  await admin.getByRole('button', { name: `Disable ${extra}` }).click();
  await admin.getByRole('button', { name: `Enable ${extra}` }).waitFor();
  const extraUser = (await api('GET', '/v1/admin/users?limit=200', adminToken)).data.find((u) => u.email === extra);
  assert.equal(extraUser.status, 'disabled');
  await audit(admin, 'admin users');
  await shot(admin, 'admin-users');

  // Models: bad JSON is refused before sending, the server's message is shown.
  await visit(admin, '#/admin/models', 'Models');
  await admin.getByLabel('Name', { exact: false }).first().fill('console-model');
  await admin.getByLabel('Provider id').fill('1');
  await admin.getByLabel('Upstream model').fill('mock-gpt');
  await admin.getByLabel('Pricing (JSON)').fill('{"input_per_million": ');
  await admin.getByRole('button', { name: 'Create model' }).click();
  await admin.getByRole('alert').filter({ hasText: 'not valid JSON' }).waitFor();
  await admin.getByLabel('Pricing (JSON)').fill('{"input_per_million": "0.1"}');
  await admin.getByRole('button', { name: 'Create model' }).click();
  const serverError = await admin.getByRole('alert').textContent();
  assert.match(serverError, /output/i, 'the API names the missing output price');
  const models = (await api('GET', '/v1/admin/models', adminToken)).data;
  assert.ok(!models.some((m) => m.name === 'console-model'), 'a refused model is not saved');
  await audit(admin, 'admin models');
  await visit(admin, '#/admin/jobs', 'All jobs');
  await admin.getByRole('row', { name: new RegExp(`${jobs[0].job_id.slice(0, 8)}.*COMPLETED`) }).waitFor();
  await audit(admin, 'admin jobs');
  await visit(admin, '#/admin/usage', 'All usage');
  await admin.getByRole('cell', { name: 'demo-image', exact: true }).waitFor();
  await audit(admin, 'admin usage');
  for (const [hash, heading] of [['#/admin/users', 'Users'], ['#/admin/providers', 'Providers']]) {
    await visit(admin, hash, heading);
    await audit(admin, heading);
  }
  await admin.getByText('…-key').first().waitFor();
  // A provider key tested from its row.
  await admin.getByRole('button', { name: 'Test key -key' }).first().click();
  const tested = await admin.getByRole('status').filter({ hasText: /HTTP/ }).first().textContent({ timeout: 15000 });
  assert.match(tested, /^works HTTP 200 in \d+ ms$/, tested);
  await audit(admin, 'provider key tested');
  await shot(admin, 'admin-providers');

  // The platform overview: charts over time, the calls the API counts, the queues now.
  await visit(admin, '#/admin/overview', 'Platform');
  await admin.getByRole('img', { name: /Calls by outcome/ }).waitFor();
  await admin.getByRole('img', { name: /Queue depths/ }).waitFor();
  const overview = await api('GET', '/v1/admin/overview?bucket=hour', adminToken);
  const counted = overview.buckets.reduce((t, b) => t + b.ok + b.client_errors + b.provider_errors + b.refused, 0);
  assert.ok(counted >= 2, `the chat call and the image job are counted: ${counted}`);
  assert.equal((await admin.locator('#overview-calls').textContent()).trim(), String(counted));
  assert.equal((await admin.locator('#now-pending_jobs').textContent()).trim(), String(overview.current.pending_jobs));
  await admin.getByLabel('Buckets').selectOption('day');
  await admin.getByRole('button', { name: 'Show' }).click();
  await admin.getByRole('img', { name: /Spend/ }).first().waitFor();
  await audit(admin, 'platform overview');
  await shot(admin, 'admin-overview');

  // A phone-sized screen.
  await user.setViewportSize({ width: 390, height: 844 });
  for (const [hash, heading] of [['#/', 'Overview'], ['#/keys', 'Access keys'], ['#/usage', 'Usage'], ['#/playground', 'Playground']]) {
    await visit(user, hash, heading);
    await fitsWidth(user, heading);
  }
  await shot(user, 'phone-keys');

  assert.deepEqual(pageErrors, [], 'no script errors');
  assert.deepEqual(violations, [], 'axe: serious or critical violations');
  console.log('console e2e passed');
} catch (error) {
  // What each page showed when the flow failed, kept with the other screenshots.
  for (const [name, page] of failing) await shot(page, `failed-${name}`).catch(() => {});
  throw error;
} finally {
  await browser.close();
}
