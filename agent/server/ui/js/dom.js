// DOM helpers. Every node is made with createElement and every text set as a text node, so
// nothing the API returns (a log line, a run name) is ever parsed as HTML.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  add(el, children);
  return el;
}

const SVG = 'http://www.w3.org/2000/svg';

export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  setAttrs(el, attrs);
  add(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
}

export function add(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

// Times in the browser's own time zone.
export function when(iso) {
  if (!iso) return '–';
  return new Date(iso).toLocaleString();
}

export function ago(iso) {
  if (!iso) return '–';
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  const abs = Math.abs(seconds);
  const text = abs < 90 ? `${abs} s` : abs < 5400 ? `${Math.round(abs / 60)} min`
    : abs < 129600 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
  return seconds >= 0 ? `${text} ago` : `in ${text}`;
}

export function badge(state, name) {
  const label = name && name.toUpperCase() !== state ? `${state} · ${name}` : state;
  return h('span', { class: `badge st-${state}`, 'data-state': state }, label);
}

export function json(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

export function table(headings, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, headings.map((x) => h('th', {}, x)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((c) => h('td', {}, c))))));
}

export function runLink(run) {
  return h('a', { href: `#/runs/${run.id}` }, run.name);
}

export function errorBox(message) {
  return h('p', { class: 'error', role: 'alert' }, message);
}

export const STATES = ['SCHEDULED', 'PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CRASHED',
  'CANCELLING', 'CANCELLED'];

export function go(path, query = {}) {
  const qs = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v != null));
  const text = qs.toString();
  location.hash = `#${path}${text ? `?${text}` : ''}`;
}

// Re-renders a page every `seconds` while it is shown (counts and ages, not logs: those stream).
export function every(seconds, signal, fn) {
  const timer = setInterval(() => fn().catch(() => {}), seconds * 1000);
  signal.addEventListener('abort', () => clearInterval(timer));
}

export function firstSteps() {
  return h('div', { class: 'empty' },
    h('p', {}, 'Nothing here yet. To run a first flow from a shell on this machine:'),
    h('pre', {}, [
      'agent work-queue create default',
      'agent deployment create flows.py:hello --name hello --queue default',
      'agent start default            # an agent that runs what the queue holds',
      'agent deployment run hello     # or the Run button on the deployment\'s page',
    ].join('\n')));
}
