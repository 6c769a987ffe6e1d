// Work queues: filter (tags), concurrency limit, paused state with Pause/Resume, and a preview
// of the runs each will hand out next.

import { api } from './api.js';
import { h, clear, when, badge, table, runLink, firstSteps, errorBox } from './dom.js';

export async function queuesPage(main, { refresh }) {
  const [queues, overview] = await Promise.all([api('work_queues'), api('overview', { query: { hours: 1, buckets: 1 } })]);
  const backlog = Object.fromEntries(overview.queues.map((q) => [q.id, q]));
  const preview = h('section', { id: 'preview' });
  main.append(h('h1', {}, 'Work queues'));
  if (!queues.length) {
    main.append(firstSteps());
    return;
  }
  const toggle = (queue) => async () => {
    try {
      await api(`work_queues/${queue.id}`, { method: 'PATCH', body: { paused: !queue.paused } });
      refresh();
    } catch (error) {
      main.prepend(errorBox(error.message));
    }
  };
  const show = (queue) => async () => {
    const runs = await api(`work_queues/${queue.id}/preview`, { query: { hours: 24 } });
    clear(preview).append(h('h2', {}, `Next runs of ${queue.name} (24 h)`),
      table(['run', 'deployment', 'expected start', 'state'], runs.map((r) => [runLink(r),
        r.deployment_name, when(r.expected_start_time), badge(r.state.type, r.state.name)]),
      'Nothing due in the next 24 hours.'));
  };
  main.append(table(['queue', 'filter (tags)', 'concurrency limit', 'status', 'waiting', 'active', ''],
    queues.map((q) => [q.name, q.tags.join(', ') || 'any run', q.concurrency_limit ?? 'none',
      h('span', { class: q.paused ? 'badge paused' : 'badge ready', 'data-queue': q.name }, q.paused ? 'paused' : 'ready'),
      backlog[q.id]?.scheduled ?? 0, backlog[q.id]?.active ?? 0,
      h('span', { class: 'actions' },
        h('button', { type: 'button', 'data-toggle': q.name, onclick: toggle(q) }, q.paused ? 'Resume' : 'Pause'),
        h('button', { type: 'button', 'data-preview': q.name, onclick: show(q) }, 'Preview'))]), ''),
  preview);
}
