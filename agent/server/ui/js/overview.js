// Overview: runs by state over a window (a stacked chart), late and failed runs called out,
// agents online and offline, queues and their backlog.

import { api } from './api.js';
import { h, s, add, clear, when, ago, badge, table, runLink, every, firstSteps, go, STATES } from './dom.js';

const WINDOWS = { 1: 'last hour', 6: 'last 6 hours', 24: 'last 24 hours', 168: 'last 7 days' };

export async function overviewPage(main, { query, signal }) {
  const hours = WINDOWS[query.hours] ? Number(query.hours) : 24;
  const picker = h('select', { id: 'window', 'aria-label': 'window' },
    Object.entries(WINDOWS).map(([value, label]) =>
      h('option', { value, selected: Number(value) === hours }, label)));
  picker.addEventListener('change', () => go('/', { hours: picker.value }));
  const body = h('div', {});
  main.append(h('div', { class: 'title' }, h('h1', {}, 'Overview'), picker), body);

  const render = async () => {
    const [overview, agents] = await Promise.all([
      api('overview', { query: { hours, buckets: 24 } }), api('agents')]);
    if (signal.aborted) return;
    clear(body);
    if (!overview.queues.length) {
      body.append(firstSteps());
      return;
    }
    const online = agents.filter((a) => a.status === 'ONLINE').length;
    body.append(
      h('div', { class: 'tiles' },
        STATES.map((state) => h('a', { class: `tile st-${state}`, href: `#/runs?state=${state}` },
          h('span', { class: 'count', 'data-count': state }, overview.totals[state] ?? 0),
          h('span', {}, state))),
        h('a', { class: 'tile', href: '#/agents' },
          h('span', { class: 'count', id: 'agents-online' }, `${online} / ${agents.length}`),
          h('span', {}, 'agents online'))),
      h('section', {}, h('h2', {}, `Runs by state, ${WINDOWS[hours]}`), chart(overview)),
      h('div', { class: 'columns' },
        h('section', { class: 'callout late' }, h('h2', {}, `Late (${overview.late.length})`),
          table(['run', 'deployment', 'due'],
            overview.late.map((r) => [runLink(r), r.deployment_name, ago(r.expected_start_time)]),
            'No run is late.')),
        h('section', { class: 'callout failed' }, h('h2', {}, `Failed (${overview.failed.length})`),
          table(['run', 'deployment', 'state', 'when'],
            overview.failed.map((r) => [runLink(r), r.deployment_name, badge(r.state.type),
              ago(r.state.timestamp)]),
            'No run failed in this window.'))),
      h('div', { class: 'columns' },
        h('section', {}, h('h2', {}, 'Work queues'),
          table(['queue', 'status', 'waiting', 'late', 'active'],
            overview.queues.map((q) => [q.name, q.paused ? 'paused' : 'ready', q.scheduled,
              q.late, q.concurrency_limit == null ? q.active : `${q.active} / ${q.concurrency_limit}`]),
            'No work queue.')),
        h('section', {}, h('h2', {}, 'Agents'),
          table(['agent', 'status', 'last heartbeat'],
            agents.map((a) => [a.name, h('span', { class: `badge ag-${a.status}` }, a.status),
              ago(a.last_heartbeat)]),
            'No agent has called in yet. Start one with: agent start <queue>'))));
  };
  await render();
  every(5, signal, render);
}

function chart(overview) {
  const width = 760;
  const height = 180;
  const top = Math.max(1, ...overview.buckets.map((b) => STATES.reduce((n, st) => n + (b.counts[st] || 0), 0)));
  const slot = width / overview.buckets.length;
  const svg = s('svg', { viewBox: `0 0 ${width} ${height + 20}`, class: 'chart', role: 'img',
    'aria-label': 'runs per state over time' });
  overview.buckets.forEach((bucket, i) => {
    let y = height;
    for (const state of STATES) {
      const n = bucket.counts[state] || 0;
      if (!n) continue;
      const tall = (n / top) * height;
      y -= tall;
      svg.append(s('rect', { x: i * slot + 1, y, width: slot - 2, height: tall, class: `st-${state}` },
        s('title', {}, `${when(bucket.start)}: ${n} ${state}`)));
    }
  });
  svg.append(s('text', { x: 0, y: height + 15, class: 'axis' }, when(overview.since)),
    s('text', { x: width, y: height + 15, class: 'axis', 'text-anchor': 'end' }, when(overview.until)),
    s('text', { x: 0, y: 12, class: 'axis' }, `${top} runs`));
  const legend = h('div', { class: 'legend' },
    STATES.map((state) => h('span', {}, h('i', { class: `swatch st-${state}` }), state)));
  return add(h('div', {}), [svg, legend]);
}
