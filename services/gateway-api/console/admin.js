// The screens of admins: the platform overview, users, orders, models, providers.

import { api, get, post } from './api.js';
import { badge, chart, errorBox, field, form, h, loading, section, show, table, when } from './ui.js';

/// A button that runs `action` and then `after`, showing an error next to itself.
function action(text, label, run, after, kind = 'secondary') {
  const button = h('button', { type: 'button', class: kind, 'aria-label': label }, text);
  button.addEventListener('click', async () => {
    button.disabled = true;
    try {
      await run();
      await after();
    } catch (error) {
      button.replaceWith(errorBox(error));
    }
  });
  return button;
}

export async function users(main) {
  const list = h('div');
  const search = field('Search by email', { type: 'search', name: 'q' });
  const detail = h('div', { 'aria-live': 'polite' });
  let rows = [];
  const draw = () => {
    const q = search.querySelector('input').value.toLowerCase();
    show(list, table('Users', [
      ['Id', (u) => u.id, { num: true }], ['Email', (u) => u.email], ['Role', (u) => u.role],
      ['Status', (u) => badge(u.status)], ['Balance', (u) => u.balance, { num: true }], ['Created', (u) => when(u.created_at)],
      ['', (u) => h('span', { class: 'row' },
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Adjust balance of ${u.email}`, onclick: () => adjust(u) }, 'Adjust balance'),
        u.status === 'active' ? action('Disable', `Disable ${u.email}`, () => api('DELETE', `/v1/admin/users/${u.id}`), refresh, 'danger')
          : action('Enable', `Enable ${u.email}`, () => api('PATCH', `/v1/admin/users/${u.id}`, { status: 'active' }), refresh))],
    ], rows.filter((u) => u.email.toLowerCase().includes(q)), 'No users match.'));
  };
  const refresh = async () => {
    show(list, loading());
    try {
      rows = (await get('/v1/admin/users?limit=200')).data;
      draw();
    } catch (error) {
      show(list, errorBox(error));
    }
  };
  const adjust = (u) => {
    show(detail, h('div', { class: 'card' }, h('h2', {}, `Adjust the balance of ${u.email} (now ${u.balance})`),
      form({ 'aria-label': 'Balance adjustment' }, [h('div', { class: 'row' },
        field('Amount', { name: 'amount', required: true, inputmode: 'decimal' }, '(negative to debit)'),
        field('Reason', { name: 'reason', required: true }))],
      async ({ amount, reason }) => {
        const done = await post(`/v1/admin/users/${u.id}/balance-adjustments`, { amount, reason });
        await refresh();
        return `Balance of ${done.user.email} is now ${done.user.balance}.`;
      }, 'Adjust')));
    detail.querySelector('input').focus();
  };
  search.querySelector('input').addEventListener('input', draw);
  main.append(h('div', { class: 'row' }, search), detail, list);
  await refresh();
}

export async function orders(main) {
  const list = h('div');
  const refresh = () => section(list, () => get('/v1/admin/orders?limit=200'), (page) => table('Orders', [
    ['Order', (o) => o.order_no], ['User', (o) => o.user_id, { num: true }], ['Amount', (o) => o.amount, { num: true }],
    ['Status', (o) => badge(o.status)], ['Created', (o) => when(o.created_at)],
    ['', (o) => (o.status === 'PENDING' ? h('span', { class: 'row' },
      action('Complete', `Complete order ${o.order_no}`, () => post(`/v1/orders/${encodeURIComponent(o.order_no)}/complete`), refresh, ''),
      action('Fail', `Fail order ${o.order_no}`, () => post(`/v1/orders/${encodeURIComponent(o.order_no)}/fail`), refresh, 'danger'))
      : '')],
  ], page.data, 'No orders yet.'));
  main.append(h('p', { class: 'muted' }, 'Completing an order credits its user once; it stands in for a payment provider\'s callback. Failing it (the payment did not happen) credits nothing.'), list);
  await refresh();
}

const PRICING_EXAMPLE = '{\n  "input_per_million": "0.15",\n  "output_per_million": "0.60"\n}';

export async function models(main) {
  const list = h('div');
  const refresh = () => section(list, () => get('/v1/admin/models?limit=200'), (page) => table('Models', [
    ['Id', (m) => m.id, { num: true }], ['Name', (m) => m.name], ['Kind', (m) => m.kind],
    ['Provider', (m) => m.provider_id, { num: true }], ['Upstream', (m) => m.upstream_model],
    ['Pricing', (m) => h('code', {}, JSON.stringify(m.pricing))], ['Enabled', (m) => (m.enabled ? 'yes' : 'no')],
  ], page.data, 'No models yet: add a provider, then a model.'));
  main.append(h('div', { class: 'card' }, h('h2', {}, 'New model'), form({ 'aria-label': 'New model' }, [
    h('div', { class: 'row' },
      field('Name', { name: 'name', required: true }, '(what clients send)'),
      field('Kind', { tag: 'select', name: 'kind', options: [['chat', 'chat'], ['image', 'image'], ['embedding', 'embedding']] }),
      field('Provider id', { name: 'provider_id', type: 'number', required: true, min: 1 }),
      field('Upstream model', { name: 'upstream_model', required: true })),
    field('Pricing (JSON)', { tag: 'textarea', name: 'pricing', required: true, value: PRICING_EXAMPLE, spellcheck: 'false' }),
  ], async (data) => {
    let pricing;
    try {
      pricing = JSON.parse(data.pricing);
    } catch (error) {
      throw new Error(`the pricing is not valid JSON: ${error.message}`);
    }
    if (pricing === null || typeof pricing !== 'object' || Array.isArray(pricing)) {
      throw new Error('the pricing must be a JSON object');
    }
    const model = await post('/v1/admin/models', {
      name: data.name, kind: data.kind, provider_id: Number(data.provider_id), upstream_model: data.upstream_model, pricing,
    });
    await refresh();
    return `Model ${model.name} created.`;
  }, 'Create model')), h('h2', {}, 'Models'), list);
  await refresh();
}

export async function providers(main) {
  const body = h('div');
  main.append(body);
  await section(body, async () => {
    const page = await get('/v1/admin/providers?limit=200');
    return Promise.all(page.data.map(async (p) => ({ ...p, keys: (await get(`/v1/admin/providers/${p.id}/keys?limit=200`)).data })));
  }, (list) => (list.length ? list.map((p) => h('div', { class: 'card' },
    h('h2', {}, `${p.name} `, h('span', { class: 'muted' }, `#${p.id} · ${p.kind} · ${p.base_url}`), ' ', badge(p.enabled ? 'active' : 'disabled')),
    table(`Keys of ${p.name}`, [
      ['Name', (k) => k.name ?? ''], ['Key', (k) => h('code', {}, `…${k.key_hint}`)], ['Weight', (k) => k.weight, { num: true }],
      ['Enabled', (k) => (k.enabled ? 'yes' : 'no')], ['Created', (k) => when(k.created_at)],
      ['Test', (k) => keyTest(k)],
    ], p.keys, 'No keys: calls to this provider cannot be served.')))
    : h('p', { class: 'muted' }, 'No providers yet (POST /v1/admin/providers).')));
}

/// A button that tests a provider key and shows the outcome beside itself.
function keyTest(k) {
  const result = h('span', { role: 'status' });
  const button = h('button', { type: 'button', class: 'secondary', 'aria-label': `Test key ${k.name || k.key_hint}` }, 'Test');
  button.addEventListener('click', async () => {
    button.disabled = true;
    show(result, ' testing…');
    try {
      const t = await post(`/v1/admin/provider-keys/${k.id}/test`);
      show(result, h('span', { class: `badge ${t.ok ? 'ok' : 'bad'}` }, t.ok ? 'works' : 'fails'),
        ` HTTP ${t.status ?? '—'} in ${t.latency_ms} ms${t.error ? `: ${t.error}` : ''}`);
    } catch (error) {
      show(result, errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return h('span', { class: 'row' }, button, result);
}

const QUEUES = [['invocation_queue', 'Invocation queue'], ['billing_queue', 'Billing queue'], ['outbox', 'Billing outbox'], ['pending_jobs', 'Pending jobs']];

/// The platform over time (GET /v1/admin/overview): calls by outcome, spend, latency, queues.
export async function overview(main) {
  const out = h('div');
  const range = form({ class: 'row', 'aria-label': 'Overview range' }, [
    field('Buckets', { tag: 'select', name: 'bucket', options: [['hour', 'hour (last 24)'], ['day', 'day (last 30)']] }),
  ], ({ bucket }) => section(out, () => get(`/v1/admin/overview?bucket=${bucket}`), (o) => {
    const labels = o.buckets.map((b) => (bucket === 'hour' ? b.start.slice(11, 16) : b.start.slice(5, 10)));
    const of = (name) => o.buckets.map((b) => b[name]);
    const calls = o.buckets.reduce((t, b) => t + b.ok + b.client_errors + b.provider_errors + b.refused, 0);
    return [
      h('div', { class: 'stats' }, h('div', { class: 'card stat' }, h('div', { class: 'label' }, 'Calls in range'), h('div', { class: 'value', id: 'overview-calls' }, String(calls))),
        QUEUES.map(([name, label]) => h('div', { class: 'card stat' }, h('div', { class: 'label' }, `${label} now`),
          h('div', { class: 'value', id: `now-${name}` }, String(o.current[name] ?? '—'))))),
      chart('Calls by outcome', labels, [['ok', 'ok'], ['client_errors', 'client errors'], ['provider_errors', 'provider errors'], ['refused', 'refused']]
        .map(([name, label]) => ({ name: label, values: of(name) }))),
      chart('Spend', labels, [{ name: 'spend', values: of('spend') }]),
      chart('Latency (highest, ms)', labels, [{ name: 'highest', values: of('latency_ms_max').map((v) => v ?? 0) }], { unit: ' ms' }),
      chart('Queue depths (deepest sample)', labels, QUEUES.map(([name, label]) => ({ name: label, values: o.buckets.map((b) => b.queues[name] ?? 0) }))),
    ];
  }), 'Show');
  main.append(range, out);
  range.requestSubmit();
}

/// A filterable admin list (`?user_id=`).
async function byUser(main, path, caption, columns, empty) {
  const list = h('div');
  const filter = h('form', { class: 'row', 'aria-label': `Filter ${caption}` },
    field('User id', { name: 'user_id', type: 'number', min: 1 }, '(optional)'), h('div', {}, h('button', { type: 'submit' }, 'Filter')));
  const refresh = (userId) => section(list, () => get(`${path}?limit=200${userId ? `&user_id=${userId}` : ''}`),
    (page) => [h('p', { class: 'muted', role: 'status' }, `${page.total} in all, the latest ${page.data.length} shown`), table(caption, columns, page.data, empty)]);
  filter.addEventListener('submit', (e) => { e.preventDefault(); refresh(new FormData(filter).get('user_id')); });
  main.append(filter, list);
  await refresh();
}

export const usage = (main) => byUser(main, '/v1/admin/usage-logs', 'All usage', [
  ['Time', (r) => when(r.created_at)], ['User', (r) => r.user_id, { num: true }], ['Model', (r) => r.model],
  ['Prompt', (r) => r.prompt_tokens, { num: true }], ['Completion', (r) => r.completion_tokens, { num: true }],
  ['Images', (r) => r.images, { num: true }], ['Cost', (r) => r.cost, { num: true }],
], 'No calls yet.');

export const jobs = (main) => byUser(main, '/v1/admin/jobs', 'All jobs', [
  ['Job', (j) => h('code', {}, j.job_id.slice(0, 8))], ['Model', (j) => j.model], ['Status', (j) => badge(j.status)],
  ['Cost', (j) => j.cost ?? '—', { num: true }], ['Created', (j) => when(j.created_at)], ['Updated', (j) => when(j.updated_at)],
], 'No jobs yet.');
