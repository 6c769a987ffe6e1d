// The shell: asks for the API key when the server wants one, then routes #/… to a page.
// Every page has its own deep link (#/runs/<id>), so a URL can be pasted in chat.

import { api, apiKey, AuthError } from './api.js';
import { h, clear, errorBox } from './dom.js';
import { overviewPage } from './overview.js';
import { runsPage, runPage } from './runs.js';
import { deploymentsPage, deploymentPage } from './deployments.js';
import { queuesPage } from './queues.js';
import { agentsPage } from './agents.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const forget = document.getElementById('forget');

const ROUTES = [
  [/^\/?$/, 'overview', overviewPage],
  [/^\/runs$/, 'runs', runsPage],
  [/^\/runs\/([0-9a-f-]{36})$/, 'runs', runPage],
  [/^\/deployments$/, 'deployments', deploymentsPage],
  [/^\/deployments\/([0-9a-f-]{36})$/, 'deployments', deploymentPage],
  [/^\/queues$/, 'queues', queuesPage],
  [/^\/agents$/, 'agents', agentsPage],
];

let leave = null; // the shown page's clean-up (stops its streams and timers)
let unlocked = false;

function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/';
  const [path, qs = ''] = raw.split('?');
  return { path, query: Object.fromEntries(new URLSearchParams(qs)) };
}

async function show() {
  if (leave) leave();
  leave = null;
  if (!unlocked) return;
  const { path, query } = parseHash();
  const route = ROUTES.find(([pattern]) => pattern.test(path));
  for (const link of nav.querySelectorAll('a')) {
    link.classList.toggle('active', route && link.dataset.page === route[1]);
  }
  clear(main);
  if (!route) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, path), '.'));
    return;
  }
  const [pattern, , page] = route;
  const args = path.match(pattern).slice(1);
  const controller = new AbortController();
  leave = () => controller.abort();
  try {
    await page(main, { args, query, signal: controller.signal, refresh: show });
  } catch (error) {
    if (controller.signal.aborted) return;
    if (error instanceof AuthError) lock(error.message);
    else main.append(errorBox(String(error.message || error)));
  }
}

// Nothing of the API is shown until the server accepts the key (or needs none).
async function unlock() {
  try {
    await api('work_queues');
  } catch (error) {
    if (error instanceof AuthError) {
      const hadKey = apiKey.get() !== null;
      apiKey.clear();
      return lock(hadKey ? `The server refused that key: ${error.message}` : null);
    }
    throw error;
  }
  unlocked = true;
  nav.hidden = false;
  forget.hidden = apiKey.get() === null;
  await show();
}

function lock(message) {
  unlocked = false;
  if (leave) leave();
  leave = null;
  nav.hidden = true;
  forget.hidden = true;
  const input = h('input', { type: 'password', id: 'api-key', name: 'api-key', autocomplete: 'off',
    required: true, placeholder: 'the server\'s AGENT_API_KEY' });
  const form = h('form', { class: 'login', id: 'login' },
    h('h1', {}, 'API key needed'),
    h('p', {}, 'This server was started with an API key. Enter it to see its runs, queues and ',
      'agents. It is kept in this tab only (sessionStorage) and sent as an Authorization header.'),
    message ? errorBox(message) : null,
    h('label', { for: 'api-key' }, 'API key'), input,
    h('button', { type: 'submit' }, 'Unlock'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    apiKey.set(input.value);
    unlock().catch((error) => main.append(errorBox(String(error.message || error))));
  });
  clear(main).append(form);
  input.focus();
}

forget.addEventListener('click', () => {
  apiKey.clear();
  lock(null);
});
window.addEventListener('hashchange', () => show());
unlock().catch((error) => clear(main).append(errorBox(`Cannot reach the server: ${error.message}`)));
