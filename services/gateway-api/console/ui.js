// Small DOM helpers: elements built with textContent (never HTML from data), tables, states.

import { ApiError } from './api.js';

/// h('button', {class: 'x', onclick}, 'text', child...)
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'class') el.className = value;
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

let fieldIds = 0;
/// A labelled input: field('Name', {name: 'name', required: true}, 'optional hint').
export function field(label, props = {}, hint) {
  const id = props.id || `f${++fieldIds}`;
  const tag = props.tag || 'input';
  const { tag: _t, options, ...rest } = props;
  const control = h(tag, { id, ...rest },
    ...(options || []).map(([value, text]) => h('option', { value }, text)));
  if (tag === 'textarea' && props.value) control.value = props.value;
  return h('label', { for: id }, label, hint ? h('span', { class: 'hint' }, ` ${hint}`) : null, control);
}

export const errorBox = (error) => h('p', { class: 'error', role: 'alert' },
  error instanceof ApiError ? error.message : `Something went wrong: ${error.message || error}`);
export const notice = (text) => h('p', { class: 'notice', role: 'status' }, text);
export const loading = () => h('p', { class: 'muted', role: 'status' }, 'Loading…');

/// Replaces the content of `el`.
export function show(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

/// Runs `load` with a loading state in `el`, then shows what `render` builds, or the error.
export async function section(el, load, render) {
  show(el, loading());
  try {
    show(el, render(await load()));
  } catch (error) {
    show(el, errorBox(error));
  }
}

/// A form whose submit handler gets the fields as an object, disables the button while it
/// runs, and shows the API's error message under the form.
export function form(props, children, onSubmit, submitText = 'Save') {
  const status = h('div', { 'aria-live': 'polite' });
  const button = h('button', { type: 'submit' }, submitText);
  const el = h('form', { ...props, novalidate: false }, children, h('div', {}, button), status);
  el.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(el).entries());
    button.disabled = true;
    show(status);
    try {
      const done = await onSubmit(data, el);
      if (done) show(status, done instanceof Node ? done : notice(done));
    } catch (error) {
      show(status, errorBox(error));
    } finally {
      button.disabled = false;
    }
  });
  return el;
}

/// A table of rows: columns are [header, row => cell, {num: true}?]; empty states named.
export function table(caption, columns, rows, empty = 'Nothing yet.') {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': caption },
    h('table', {},
      h('caption', { class: 'skip' }, caption),
      h('thead', {}, h('tr', {}, columns.map(([name, , o]) =>
        h('th', { scope: 'col', class: o?.num ? 'num' : null }, name)))),
      h('tbody', {}, rows.map((row) => h('tr', {}, columns.map(([, cell, o]) =>
        h('td', { class: o?.num ? 'num' : null }, cell(row))))))));
}

export const when = (t) => (t ? new Date(t).toLocaleString() : '—');
export const day = (t) => t.slice(0, 10);

export function badge(status) {
  const kind = { COMPLETED: 'ok', active: 'ok', PENDING: 'warn', PROCESSING: 'warn' }[status] || 'bad';
  return h('span', { class: `badge ${kind}` }, status);
}

/// Exact decimal sum of money strings (no floats): scaled to 8 decimals as BigInt.
export function sumMoney(values) {
  let total = 0n;
  for (const v of values) {
    const [whole, frac = ''] = String(v).replace('-', '').split('.');
    const n = BigInt(whole + frac.padEnd(8, '0').slice(0, 8));
    total += String(v).startsWith('-') ? -n : n;
  }
  const sign = total < 0n ? '-' : '';
  const abs = (total < 0n ? -total : total).toString().padStart(9, '0');
  const frac = abs.slice(-8).replace(/0+$/, '');
  return `${sign}${abs.slice(0, -8)}${frac ? `.${frac}` : ''}`;
}

export async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Select and copy by hand';
  }
}

export function download(name, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

const SVG = 'http://www.w3.org/2000/svg';
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  el.append(...children);
  return el;
}
/// Series colours, each with at least 3:1 contrast on white.
const COLOURS = ['#1d4ed8', '#b45309', '#047857', '#b91c1c', '#6d28d9', '#0e7490', '#be185d', '#4d7c0f'];

/// A stacked bar chart drawn as inline SVG: one bar per label, one stack part per series
/// (`values[i]` numbers or decimal strings, drawn only), with a legend and the same numbers as
/// a table (the accessible fallback). `format` shows a value in the table and tooltips.
export function chart(title, labels, series, { format = String, unit = '' } = {}) {
  const W = 640; const H = 220; const left = 56; const bottom = 22; const top = 8;
  const totals = labels.map((_, i) => series.reduce((t, x) => t + Number(x.values[i] || 0), 0));
  const max = Math.max(...totals, 0) || 1;
  const step = (W - left) / Math.max(labels.length, 1);
  const y = (v) => top + (H - top - bottom) * (1 - v / max);
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title} (chart; the table below has the numbers)`, class: 'chart' },
    s('line', { x1: left, x2: W, y1: y(0), y2: y(0), stroke: '#6b7280' }),
    s('text', { x: left - 4, y: y(max) + 4, 'text-anchor': 'end', class: 'tick' }, `${+max.toPrecision(3)}${unit}`),
    s('text', { x: left - 4, y: y(0), 'text-anchor': 'end', class: 'tick' }, `0${unit}`));
  labels.forEach((label, i) => {
    let base = 0;
    series.forEach((x, k) => {
      const v = Number(x.values[i] || 0);
      if (v <= 0) return;
      svg.append(s('rect', { x: left + i * step + step * 0.1, width: Math.max(step * 0.8, 1), y: y(base + v), height: y(base) - y(base + v), fill: COLOURS[k % COLOURS.length] },
        s('title', {}, `${label} · ${x.name}: ${format(x.values[i])}`)));
      base += v;
    });
    if (labels.length <= 12 || i % Math.ceil(labels.length / 8) === 0) {
      svg.append(s('text', { x: left + i * step + step / 2, y: H - 6, 'text-anchor': 'middle', class: 'tick' }, label));
    }
  });
  const legend = h('ul', { class: 'legend' }, series.map((x, k) => {
    const swatch = h('span', { class: 'swatch' });
    swatch.style.background = COLOURS[k % COLOURS.length]; // CSSOM: allowed by the page's CSP
    return h('li', {}, swatch, x.name);
  }));
  const numbers = table(title, [['When', (i) => labels[i]], ...series.map((x) => [x.name, (i) => format(x.values[i] ?? 0), { num: true }])],
    labels.map((_, i) => i), 'No data in this range.');
  return h('figure', { class: 'card' }, h('figcaption', {}, h('h2', {}, title)), svg, legend,
    h('details', {}, h('summary', {}, `${title}: the numbers`), numbers));
}
