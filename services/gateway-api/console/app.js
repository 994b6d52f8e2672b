// The console's shell: hash routes, navigation, sign-in state.

import { get, session } from './api.js';
import { h, show } from './ui.js';
import * as user from './user.js';
import * as admin from './admin.js';

const USER_ROUTES = [
  ['#/', 'Overview', user.overview],
  ['#/topup', 'Top up', user.topup],
  ['#/keys', 'Access keys', user.keys],
  ['#/usage', 'Usage', user.usage],
  ['#/ledger', 'Ledger', user.ledger],
  ['#/playground', 'Playground', user.playground],
  ['#/jobs', 'Jobs', user.jobs],
];
const ADMIN_ROUTES = [
  ['#/admin/overview', 'Platform', admin.overview],
  ['#/admin/users', 'Users', admin.users],
  ['#/admin/orders', 'Orders', admin.orders],
  ['#/admin/usage', 'All usage', admin.usage],
  ['#/admin/jobs', 'All jobs', admin.jobs],
  ['#/admin/models', 'Models', admin.models],
  ['#/admin/providers', 'Providers', admin.providers],
];
const PUBLIC_ROUTES = [
  ['#/login', 'Sign in', user.login],
  ['#/register', 'Sign up', user.register],
];

function routes() {
  if (!session.token()) return PUBLIC_ROUTES;
  return session.user()?.role === 'admin' ? [...USER_ROUTES, ...ADMIN_ROUTES] : USER_ROUTES;
}

function nav(current) {
  const links = routes().map(([hash, name]) => h('a', {
    href: hash, 'aria-current': hash === current ? 'page' : null,
  }, name));
  const adminAt = USER_ROUTES.length;
  if (links.length > adminAt) links.splice(adminAt, 0, h('span', { class: 'sep', 'aria-hidden': 'true' }, '| Admin:'));
  show(document.getElementById('nav'), links);
  const who = document.getElementById('who');
  const me = session.user();
  if (session.token() && me) {
    show(who, h('span', {}, me.email), h('button', {
      type: 'button', class: 'secondary', onclick: () => { session.clear(); location.hash = '#/login'; },
    }, 'Sign out'));
  } else {
    show(who);
  }
}

async function render() {
  const hash = location.hash || '#/';
  const list = routes();
  const route = list.find(([path]) => path === hash);
  if (!route) {
    location.replace(session.token() ? '#/' : '#/login');
    return;
  }
  const [, title, view] = route;
  document.title = `${title} · AI Gateway console`;
  nav(route[0]);
  const main = document.getElementById('main');
  show(main, h('h1', {}, title));
  await view(main);
  if (document.activeElement === document.body) main.focus({ preventScroll: true });
}

/// Refreshes the signed-in user (role, status) once per page load.
async function start() {
  if (session.token()) {
    try {
      session.setUser(await get('/v1/me'));
    } catch {
      session.clear();
    }
  }
  addEventListener('hashchange', render);
  await render();
}

start();
