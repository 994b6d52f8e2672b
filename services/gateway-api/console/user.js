// The screens of every signed-in user, and signing up and in.

import { all, api, get, post, session, streamChat } from './api.js';
import {
  badge, chart, copy, download, errorBox, field, form, h, notice, section, show, table, when,
} from './ui.js';

export function login(main) {
  main.append(h('div', { class: 'card auth' }, form({ 'aria-label': 'Sign in' }, [
    field('Email', { name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field('Password', { name: 'password', type: 'password', autocomplete: 'current-password', required: true }),
  ], async ({ email, password }) => {
    const answer = await post('/v1/auth/login', { email, password });
    session.save(answer.access_token, answer.user);
    location.hash = '#/';
  }, 'Sign in'), h('p', {}, 'No account yet? ', h('a', { href: '#/register' }, 'Sign up'))));
}

export function register(main) {
  main.append(h('div', { class: 'card auth' }, form({ 'aria-label': 'Sign up' }, [
    field('Email', { name: 'email', type: 'email', autocomplete: 'username', required: true }),
    field('Password', { name: 'password', type: 'password', autocomplete: 'new-password', required: true, minlength: 8 }, '(at least 8 characters)'),
  ], async ({ email, password }) => {
    await post('/v1/auth/register', { email, password });
    const answer = await post('/v1/auth/login', { email, password });
    session.save(answer.access_token, answer.user);
    location.hash = '#/';
  }, 'Create account'), h('p', {}, 'Already registered? ', h('a', { href: '#/login' }, 'Sign in'))));
}

const stat = (label, value, id) => h('div', { class: 'card stat' },
  h('div', { class: 'label', id: `${id}-label` }, label),
  h('div', { class: 'value', id, 'aria-labelledby': `${id}-label` }, value));

/// `YYYY-MM-DD` of a Date, in UTC (the API's days are UTC days).
const isoDay = (d) => d.toISOString().slice(0, 10);
const daysAgo = (n) => isoDay(new Date(Date.now() - n * 86400000));

/// Spend per UTC day, stacked by model, from GET /v1/me/spend.
function spendChart(spend) {
  const days = spend.days.map((d) => d.day);
  const series = spend.models.map((m) => ({
    name: m.model,
    values: days.map((d) => spend.series.find((x) => x.day === d && x.model === m.model)?.spend ?? '0'),
  }));
  return [chart('Spend per day and model', days.map((d) => d.slice(5)), series),
    table('Spend per model', [['Model', (m) => m.model], ['Calls', (m) => m.calls, { num: true }], ['Spend', (m) => m.spend, { num: true }]],
      spend.models, 'No calls in this range.')];
}

export async function overview(main) {
  const me = h('div');
  const charts = h('div');
  const range = form({ class: 'row', 'aria-label': 'Spend range' }, [
    field('From', { type: 'date', name: 'from', value: daysAgo(29) }), field('To', { type: 'date', name: 'to', value: daysAgo(0) }),
  ], ({ from, to }) => section(charts, () => get(`/v1/me/spend?from=${from}&to=${to}`), (spend) => [
    h('div', { class: 'stats' }, stat('Spend in range', spend.total.spend, 'spend'), stat('Calls in range', String(spend.total.calls), 'calls')),
    ...spendChart(spend),
  ]), 'Show');
  main.append(me, h('p', {}, h('a', { class: 'button', href: '#/topup' }, 'Top up'), ' ', h('a', { href: '#/keys' }, 'Create an access key')),
    range, charts);
  await Promise.all([
    section(me, () => get('/v1/me'), (user) => { session.setUser(user); return h('div', { class: 'stats' }, stat('Balance', user.balance, 'balance')); }),
    range.requestSubmit(),
  ]);
}

export async function topup(main) {
  const list = h('div');
  const refresh = () => section(list, () => get('/v1/me/orders?limit=50'), (page) => table('Orders', [
    ['Order', (o) => o.order_no], ['Amount', (o) => o.amount, { num: true }],
    ['Status', (o) => badge(o.status)], ['Created', (o) => when(o.created_at)], ['Updated', (o) => when(o.updated_at)],
  ], page.data, 'No orders yet.'));
  main.append(h('div', { class: 'card' }, form({ 'aria-label': 'New order' }, [
    field('Amount', { name: 'amount', inputmode: 'decimal', required: true, pattern: '[0-9]+(\\.[0-9]{1,2})?', placeholder: '10.00' }, '(up to 2 decimals)'),
  ], async ({ amount }, el) => {
    const order = await post('/v1/me/orders', { amount });
    el.reset();
    refresh();
    return `Order ${order.order_no} created for ${order.amount}: it is credited once payment completes.`;
  }, 'Create order')), h('h2', {}, 'Your orders'), list);
  await refresh();
}

const LIMITS = [
  ['rpm_limit', 'Requests per minute'], ['tpm_limit', 'Tokens per minute'],
  ['max_concurrency', 'Concurrent calls'], ['spend_limit', 'Spend limit'],
];

const PERIODS = [['total', 'total'], ['day', 'per day'], ['month', 'per month']];

/// The limits of a key form as the API takes them; an empty field is left out, or `empty`.
function limitsOf(data, empty) {
  const body = {};
  for (const [name] of LIMITS) {
    if (data[name] === '') {
      if (empty !== undefined) body[name] = empty;
    } else {
      body[name] = name === 'spend_limit' ? data[name] : Number(data[name]);
    }
  }
  return body;
}

export async function keys(main) {
  const list = h('div');
  const secret = h('div', { 'aria-live': 'polite' });
  const refresh = () => section(list, () => get('/v1/me/access-keys?limit=200'), (page) => table('Access keys', [
    ['Name', (k) => k.name], ['Prefix', (k) => h('code', {}, k.prefix)],
    ['Limits', (k) => LIMITS.filter(([f]) => k[f] !== null).map(([f, n]) => `${n}: ${k[f]}`).join(', ') + (k.spend_limit ? ` (${k.spend_limit_period})` : '') || 'defaults'],
    ['Created', (k) => when(k.created_at)], ['Last used', (k) => when(k.last_used_at)],
    ['Status', (k) => badge(k.revoked ? 'revoked' : 'active')],
    ['', (k) => (k.revoked ? '' : h('span', { class: 'row' }, h('button', {
      type: 'button', class: 'secondary', 'aria-label': `Edit limits of ${k.name}`, onclick: () => edit(k),
    }, 'Edit limits'), h('button', {
      type: 'button', class: 'danger', 'aria-label': `Revoke ${k.name}`,
      onclick: async (e) => {
        if (!confirm(`Revoke the key "${k.name}"? Calls with it stop at once.`)) return;
        e.target.disabled = true;
        try { await api('DELETE', `/v1/me/access-keys/${k.id}`); await refresh(); } catch (error) { list.prepend(errorBox(error)); }
      },
    }, 'Revoke')))],
  ], page.data, 'No access keys yet: create one to call models.'));
  // A key's limits changed in place: an emptied field removes that limit (the default applies).
  const edit = (k) => {
    const inputs = LIMITS.map(([name, label]) => field(label, { name, inputmode: 'decimal', value: k[name] ?? '' }, '(empty: default)'));
    const period = field('Spend period', { tag: 'select', name: 'spend_limit_period', options: PERIODS });
    period.querySelector('select').value = k.spend_limit_period;
    show(secret, h('div', { class: 'card' }, h('h2', {}, `Limits of "${k.name}"`), form({ 'aria-label': `Limits of ${k.name}` },
      [h('div', { class: 'row' }, inputs, period)], async (data) => {
        const body = limitsOf(data, null);
        body.spend_limit_period = data.spend_limit_period;
        await api('PATCH', `/v1/me/access-keys/${k.id}`, body);
        await refresh();
        return `Limits of "${k.name}" saved.`;
      }, 'Save limits')));
    secret.querySelector('input').focus();
  };
  main.append(h('div', { class: 'card' }, form({ 'aria-label': 'New access key' }, [
    field('Name', { name: 'name', required: true, placeholder: 'my app' }),
    h('div', { class: 'row' },
      LIMITS.map(([name, label]) => field(label, { name, inputmode: 'decimal' }, '(optional)')),
      field('Spend period', { tag: 'select', name: 'spend_limit_period', options: PERIODS })),
  ], async (data, el) => {
    const body = { name: data.name, ...limitsOf(data) };
    if (body.spend_limit) body.spend_limit_period = data.spend_limit_period;
    const key = await post('/v1/me/access-keys', body);
    el.reset();
    sessionStorage.setItem('gw.lastKey', key.key);
    const button = h('button', { type: 'button', class: 'secondary', onclick: (e) => copy(key.key, e.target) }, 'Copy');
    show(secret, h('div', { class: 'card' },
      h('p', {}, h('strong', {}, `Key "${key.name}" created.`), ' Copy it now: it is shown only once.'),
      h('div', { class: 'secret' }, h('code', { id: 'new-secret' }, key.key), button)));
    button.focus();
    refresh();
  }, 'Create key')), secret, h('h2', {}, 'Your keys'), list);
  await refresh();
}

const csvCell = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));

/// The most rows a CSV export holds (all pages of the filtered list, up to this).
const EXPORT_MAX = 10000;

export async function usage(main) {
  const out = h('div');
  const keys = (await get('/v1/me/access-keys?limit=200').catch(() => ({ data: [] }))).data;
  let query = '';
  const filters = form({ class: 'row', 'aria-label': 'Filter usage' }, [
    field('Key', { tag: 'select', name: 'access_key_id', options: [['', 'all keys'], ...keys.map((k) => [k.id, k.name])] }),
    field('Model', { name: 'model', placeholder: 'all models' }),
    field('From', { type: 'date', name: 'from' }), field('To', { type: 'date', name: 'to' }, '(included)'),
    field('Status', { tag: 'select', name: 'status', options: [['', 'all'], ['charged', 'charged'], ['overrun', 'overrun']] }),
  ], async (f) => {
    // Days are UTC days; `to` is the last day shown, so the API's (exclusive) end is the next day.
    const next = (d) => isoDay(new Date(Date.parse(d) + 86400000));
    const params = new URLSearchParams(Object.entries({
      access_key_id: f.access_key_id, model: f.model.trim(), status: f.status,
      from: f.from && `${f.from}T00:00:00Z`, to: f.to && `${next(f.to)}T00:00:00Z`,
    }).filter(([, v]) => v));
    query = params.toString();
    await section(out, () => get(`/v1/me/usage?limit=100&${query}`), (page) => [
      h('p', { class: 'muted', role: 'status' }, `${page.total} calls match; the latest ${page.data.length} shown`),
      table('Usage log', [
        ['Time', (r) => when(r.created_at)], ['Model', (r) => r.model], ['Key', (r) => keys.find((k) => k.id === r.access_key_id)?.name ?? r.access_key_id ?? '—'],
        ['Prompt', (r) => r.prompt_tokens, { num: true }], ['Completion', (r) => r.completion_tokens, { num: true }],
        ['Images', (r) => r.images, { num: true }], ['Cost', (r) => r.cost, { num: true }], ['Status', (r) => r.status],
      ], page.data, 'No calls match.')]);
  }, 'Apply');
  const exportCsv = async () => {
    const rows = await all(`/v1/me/usage?${query}`, EXPORT_MAX);
    const head = ['created_at', 'request_id', 'access_key_id', 'model', 'prompt_tokens', 'completion_tokens', 'images', 'cost', 'status'];
    const lines = [head.join(','), ...rows.map((r) => head.map((c) => csvCell(r[c] ?? '')).join(','))];
    download('usage.csv', `${lines.join('\n')}\n`);
  };
  main.append(filters, h('p', {}, h('button', { type: 'button', class: 'secondary', onclick: exportCsv }, 'Export CSV'),
    h('span', { class: 'muted' }, ` the filtered calls, up to ${EXPORT_MAX}`)), out);
  await filters.requestSubmit();
}

export async function ledger(main) {
  const body = h('div');
  main.append(body);
  await section(body, () => get('/v1/me/ledger?limit=200'), (page) => table('Ledger', [
    ['Time', (e) => when(e.created_at)], ['Kind', (e) => e.kind], ['Change', (e) => e.delta, { num: true }],
    ['Balance after', (e) => e.balance_after, { num: true }], ['Reference', (e) => e.reference ?? ''],
  ], page.data, 'No entries yet: a top-up or a call writes one.'));
}

/// The access key the key-based screens use: the one just created, or one the user pastes.
function keyField() {
  return field('Access key', { name: 'key', type: 'password', autocomplete: 'off', required: true, value: sessionStorage.getItem('gw.lastKey') || '' }, '(paste one, or create one under Access keys)');
}

/// Fills `list` (a datalist) with the models the key may call.
async function offerModels(key, list) {
  if (!key) return;
  try {
    const models = await api('GET', '/v1/models', undefined, { key });
    show(list, models.data.map((m) => h('option', { value: m.id })));
  } catch { /* a wrong key is reported when it is used */ }
}

const pause = (ms) => new Promise((r) => setTimeout(r, ms));

/// The images of a job's result, as thumbnails linking to themselves.
const images = (job) => h('span', { class: 'row' }, (job.result?.data || []).map((img, i) => h('a', { href: img.url || '#', target: '_blank', rel: 'noreferrer' },
  h('img', { class: 'thumb', src: img.url || (img.b64_json ? `data:image/png;base64,${img.b64_json}` : ''), alt: `image ${i + 1} of job ${job.job_id.slice(0, 8)}` }))));

export async function jobs(main) {
  const list = h('div');
  const keyInput = keyField();
  const key = () => keyInput.querySelector('input').value;
  // Lists leave results out: the newest completed jobs' images come from each job's own GET.
  const load = async () => {
    const page = await api('GET', '/v1/jobs?limit=50', undefined, { key: key() });
    await Promise.all(page.data.filter((j) => j.status === 'COMPLETED').slice(0, 10).map(async (j) => {
      j.result = (await api('GET', `/v1/jobs/${j.job_id}`, undefined, { key: key() })).result;
    }));
    return page;
  };
  const refresh = () => (key() ? section(list, load, (page) => table('Jobs', [
    ['Job', (j) => h('code', {}, j.job_id.slice(0, 8))], ['Model', (j) => j.model], ['Status', (j) => badge(j.status)],
    ['Cost', (j) => j.cost ?? '—', { num: true }], ['Created', (j) => when(j.created_at)],
    ['Result', (j) => (j.error ? j.error.message ?? JSON.stringify(j.error) : images(j))],
  ], page.data, 'No jobs yet: submit one from the Playground.')) : show(list, h('p', { class: 'muted' }, 'Enter an access key to see its user\'s jobs.')));
  keyInput.querySelector('input').addEventListener('change', refresh);
  main.append(h('div', { class: 'card' }, keyInput), h('p', {}, h('button', { type: 'button', class: 'secondary', onclick: () => refresh() }, 'Refresh')), list);
  await refresh();
}

/// Submits an image job and polls it until it ends and, once completed, is billed (or ~30 s pass).
async function runImageJob(key, body, onStatus) {
  const submitted = await api('POST', '/v1/jobs/image-generation', body, { key });
  let job = submitted;
  for (let i = 0; i < 60; i += 1) {
    job = await api('GET', `/v1/jobs/${submitted.job_id}`, undefined, { key });
    onStatus(job);
    if (job.status === 'FAILED' || (job.status === 'COMPLETED' && job.cost !== null)) break;
    await pause(500);
  }
  return job;
}

export async function playground(main) {
  const answer = h('div', { class: 'answer', id: 'answer', 'aria-live': 'polite', 'aria-label': 'Answer' });
  const cost = h('div', { 'aria-live': 'polite' });
  const picture = h('div', { 'aria-live': 'polite' });
  const keyInput = keyField();
  const key = () => keyInput.querySelector('input').value;
  const models = h('datalist', { id: 'chat-models' });
  keyInput.querySelector('input').addEventListener('change', (e) => offerModels(e.target.value, models));
  offerModels(key(), models);
  main.append(h('div', { class: 'card' }, keyInput, models), h('div', { class: 'card' }, h('h2', {}, 'Chat'), form({ 'aria-label': 'Chat' }, [
    field('Model', { name: 'model', required: true, placeholder: 'model name', list: 'chat-models' }),
    field('Message', { tag: 'textarea', name: 'prompt', required: true }),
  ], async ({ model, prompt }) => {
    show(answer);
    show(cost);
    const before = (await get('/v1/me/usage?limit=1')).data[0]?.id ?? 0;
    await streamChat(key(), { model, messages: [{ role: 'user', content: prompt }] }, (text) => answer.append(text));
    show(cost, h('p', { class: 'muted', role: 'status' }, 'Waiting for the charge…'));
    for (let i = 0; i < 40; i += 1) {
      const row = (await get('/v1/me/usage?limit=5')).data.find((r) => r.id > before && r.model === model);
      if (row) {
        show(cost, notice(`Cost ${row.cost} (${row.prompt_tokens} prompt + ${row.completion_tokens} completion tokens)`));
        return null;
      }
      await pause(500);
    }
    show(cost, h('p', { class: 'muted' }, 'The charge is not in the usage log yet; see Usage later.'));
    return null;
  }, 'Send'), h('h3', {}, 'Answer'), answer, cost),
  h('div', { class: 'card' }, h('h2', {}, 'Image'), form({ 'aria-label': 'Image job' }, [
    h('div', { class: 'row' },
      field('Image model', { name: 'model', required: true, list: 'chat-models' }),
      field('Images', { name: 'n', type: 'number', min: 1, max: 10, value: 1 })),
    field('Image prompt', { tag: 'textarea', name: 'prompt', required: true }),
  ], async ({ model, n, prompt }) => {
    show(picture);
    const job = await runImageJob(key(), { model, prompt, n: Number(n) },
      (j) => show(picture, h('p', { class: 'muted' }, `Job ${j.job_id.slice(0, 8)}: ${j.status}…`)));
    show(picture, job.status === 'FAILED' ? errorBox(new Error(job.error?.message ?? 'the job failed')) : images(job));
    return `Job ${job.job_id.slice(0, 8)}: ${job.status}${job.cost === null ? '' : `, cost ${job.cost}`}.`;
  }, 'Generate'), picture));
}
