// Agents: which are up, what they serve, how loaded their hosts are, what they are running.

import { api } from './api.js';
import { h, clear, ago, table, every } from './dom.js';

export async function agentsPage(main, { signal }) {
  const body = h('div', {});
  main.append(h('h1', {}, 'Agents'), body);
  const render = async () => {
    const [agents, queues] = await Promise.all([api('agents'), api('work_queues')]);
    if (signal.aborted) return;
    const names = Object.fromEntries(queues.map((q) => [q.id, q.name]));
    const percent = (x) => (x == null ? '–' : `${Math.round(x)} %`);
    clear(body).append(table(
      ['agent', 'status', 'queues', 'last heartbeat', 'runs in flight', 'CPU', 'memory', 'load', 'host', 'version'],
      agents.map((a) => [a.name, h('span', { class: `badge ag-${a.status}` }, a.status),
        a.work_queue_ids.map((q) => names[q] ?? q).join(', '), ago(a.last_heartbeat), a.runs_in_flight,
        percent(a.metrics?.cpu_percent), percent(a.metrics?.memory_percent),
        a.metrics?.load_1m == null ? '–' : a.metrics.load_1m.toFixed(2), `${a.hostname} (pid ${a.pid})`, a.version]),
      'No agent has called in yet. Start one on a machine that has your flows\' code: agent start <queue>'));
  };
  await render();
  every(5, signal, render);
}
