// Flow runs: the filtered list (keyset paging, newest first) and one run's page with its state
// history, details and a live log tail streamed from the server (server-sent events).

import { api, stream, AuthError } from './api.js';
import { h, clear, when, ago, badge, json, table, runLink, errorBox, go, STATES } from './dom.js';

const PAGE = 50;

export async function runsPage(main, { query, signal }) {
  const [queues, deployments] = await Promise.all([api('work_queues'), api('deployments')]);
  const select = (name, label, options) => h('label', {}, label,
    h('select', { name, id: `filter-${name}` }, h('option', { value: '' }, 'any'),
      options.map(([value, text]) => h('option', { value, selected: query[name] === value }, text))));
  const form = h('form', { class: 'filters', id: 'run-filters' },
    select('state', 'State', STATES.map((st) => [st, st])),
    select('queue', 'Queue', queues.map((q) => [q.id, q.name])),
    select('deployment', 'Deployment', deployments.map((d) => [d.id, d.name])),
    h('label', {}, 'Tag', h('input', { name: 'tag', id: 'filter-tag', value: query.tag || '' })),
    h('label', {}, 'Created since', h('input', { name: 'since', id: 'filter-since',
      type: 'datetime-local', value: query.since || '' })),
    h('label', {}, 'Created before', h('input', { name: 'until', id: 'filter-until',
      type: 'datetime-local', value: query.until || '' })),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    go('/runs', Object.fromEntries(new FormData(form)));
  });
  const runs = await api('flow_runs', { query: {
    state: query.state, work_queue_id: query.queue, deployment_id: query.deployment, tag: query.tag,
    created_after: query.since ? new Date(query.since).toISOString() : undefined,
    created_before: query.until ? new Date(query.until).toISOString() : undefined,
    before: query.before, limit: PAGE,
  } });
  if (signal.aborted) return;
  const names = Object.fromEntries(queues.map((q) => [q.id, q.name]));
  const pager = h('p', { class: 'pager' },
    query.before ? h('a', { href: '#/runs', onclick: (e) => { e.preventDefault(); go('/runs', { ...query, before: '' }); } }, '← Newest') : null,
    runs.length === PAGE ? h('a', { id: 'older', href: '#/runs', onclick: (e) => {
      e.preventDefault();
      go('/runs', { ...query, before: runs[runs.length - 1].id });
    } }, 'Older →') : null);
  main.append(h('h1', {}, 'Flow runs'), form,
    table(['run', 'deployment', 'queue', 'state', 'attempt', 'expected start', 'created'],
      runs.map((r) => [runLink(r), h('a', { href: `#/deployments/${r.deployment_id}` }, r.deployment_name),
        names[r.work_queue_id] ?? '–', badge(r.state.type, r.state.name), r.attempt,
        when(r.expected_start_time), ago(r.created)]),
      query.before || Object.values(query).some(Boolean) ? 'No run matches these filters.'
        : 'No flow run yet: start one from a deployment\'s page, or with agent deployment run NAME.'),
    pager);
}

export async function runPage(main, { args: [id], signal, refresh }) {
  let run = await api(`flow_runs/${id}`);
  const [agents, queues] = await Promise.all([api('agents'), api('work_queues')]);
  const agentNames = Object.fromEntries(agents.map((a) => [a.id, a.name]));
  const queueNames = Object.fromEntries(queues.map((q) => [q.id, q.name]));
  const head = h('div', { class: 'title' });
  const message = h('div', { id: 'action-message' });
  const details = h('div', { class: 'columns' });
  const history = h('ol', { class: 'timeline', id: 'history' });
  const logs = h('div', { class: 'logs', id: 'logs', role: 'log', 'aria-live': 'polite' });
  const streamNote = h('span', { id: 'stream-status', class: 'muted' }, 'connecting…');
  main.append(head, message, details,
    h('div', { class: 'columns' },
      h('section', {}, h('h2', {}, 'State history'), history),
      h('section', { class: 'wide' }, h('h2', {}, 'Logs ', streamNote), logs)));

  const act = async (label, fn) => {
    clear(message);
    try {
      await fn();
    } catch (error) {
      if (error instanceof AuthError) throw error;
      message.append(errorBox(`${label}: ${error.message}`));
    }
  };
  const cancel = () => act('Cancel', async () => {
    run = await api(`flow_runs/${id}/cancel`, { method: 'POST' });
    renderRun();
  });
  const retry = () => act('Retry', async () => {
    await api(`flow_runs/${id}/retry`, { method: 'POST' });
    refresh(); // a new attempt: start over with a fresh stream
  });
  const rerun = () => act('Rerun', async () => {
    const form = rerunForm(run, async (parameters) => {
      const created = await api(`flow_runs/${id}/rerun`, { method: 'POST', body: { parameters } });
      go(`/runs/${created.id}`);
    });
    message.append(form);
  });

  function renderRun() {
    const st = run.state.type;
    const active = ['SCHEDULED', 'PENDING', 'RUNNING'].includes(st);
    clear(head).append(
      h('h1', {}, run.name, ' ', badge(st, run.state.name)),
      h('div', { class: 'actions' },
        h('button', { id: 'cancel', type: 'button', disabled: !active, onclick: cancel }, 'Cancel'),
        h('button', { id: 'retry', type: 'button', onclick: retry,
          disabled: !['FAILED', 'CRASHED', 'CANCELLED'].includes(st) }, 'Retry'),
        h('button', { id: 'rerun', type: 'button', onclick: rerun }, 'Rerun…')));
    const info = run.runner_info || {};
    const { result, result_note: note, ...runner } = info;
    clear(details).append(
      h('section', {}, h('h2', {}, 'Run'), h('dl', {},
        row('id', h('code', {}, run.id)),
        row('deployment', h('a', { href: `#/deployments/${run.deployment_id}` }, run.deployment_name)),
        row('queue', queueNames[run.work_queue_id] ?? run.work_queue_id),
        row('state', h('span', { id: 'state' }, st), run.state.message ? ` — ${run.state.message}` : ''),
        row('attempt', h('span', { id: 'attempt' }, run.attempt)),
        row('agent', run.agent_id ? agentNames[run.agent_id] ?? run.agent_id : '–'),
        row('tags', run.tags.join(', ') || '–'),
        row('expected start', when(run.expected_start_time)),
        row('started', when(run.start_time)),
        row('ended', when(run.end_time)),
        run.rerun_of ? row('rerun of', h('a', { id: 'rerun-of', href: `#/runs/${run.rerun_of}` }, run.rerun_of)) : null)),
      h('section', {}, h('h2', {}, 'Parameters'), h('div', { id: 'parameters' }, json(run.parameters)),
        h('h2', {}, 'Result'), 'result' in info ? h('div', { id: 'result' }, json(result)) : h('p', { class: 'muted' }, 'none yet'),
        note ? h('p', { class: 'muted' }, note) : null,
        h('h2', {}, 'Runner'), json(runner)));
  }

  async function renderHistory() {
    const states = await api(`flow_runs/${id}/states`);
    clear(history).append(...states.map((state) => h('li', {},
      h('time', { datetime: state.timestamp }, when(state.timestamp)), ' ',
      badge(state.type, state.name), state.message ? h('span', { class: 'msg' }, state.message) : null)));
  }

  renderRun();
  await renderHistory();
  let lines = 0;
  let lastId = 0;
  let ended = false;
  const onEvent = (event, data) => {
    if (event === 'log') {
      lines += 1;
      lastId = data.id;
      // textContent only: a line holding <script> shows as that text.
      logs.append(h('div', { class: `line ${data.stream}` },
        h('time', { datetime: data.timestamp }, new Date(data.timestamp).toLocaleTimeString()), ' ',
        h('span', {}, data.line)));
      logs.scrollTop = logs.scrollHeight;
    } else if (event === 'run') {
      run = data;
      renderRun();
      renderHistory().catch(() => {});
      streamNote.textContent = 'live';
    } else if (event === 'end') {
      ended = true;
      streamNote.textContent = `run ended · ${lines} lines`;
    }
  };
  // Followed until the run ends; a dropped stream (a server restart, a proxy timeout) is
  // picked up again after the last line shown, so no line is shown twice or lost.
  (async () => {
    while (!ended && !signal.aborted) {
      try {
        await stream(`flow_runs/${id}/logs/stream`, { after: lastId }, onEvent, signal);
        if (!ended) streamNote.textContent = 'reconnecting…';
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof AuthError || (error.status && error.status < 500)) {
          streamNote.textContent = `stream stopped: ${error.message}`;
          return; // asking again would get the same answer
        }
        streamNote.textContent = `reconnecting (${error.message})…`;
      }
      if (!ended) await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
}

function row(label, ...value) {
  return [h('dt', {}, label), h('dd', {}, ...value)];
}

function rerunForm(run, submit) {
  const area = h('textarea', { id: 'rerun-parameters', rows: 6, cols: 60 },
    JSON.stringify(run.parameters, null, 2));
  const problem = h('p', { class: 'error', role: 'alert', hidden: true });
  const form = h('form', { class: 'panel', id: 'rerun-form' },
    h('label', { for: 'rerun-parameters' }, 'Parameters of the new run (a JSON object)'), area,
    problem, h('button', { type: 'submit' }, 'Start rerun'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let parameters;
    try {
      parameters = JSON.parse(area.value);
      if (typeof parameters !== 'object' || parameters === null || Array.isArray(parameters)) {
        throw new Error('parameters must be a JSON object, like {"x": 1}');
      }
    } catch (error) {
      problem.textContent = `Not sent: ${error.message}`;
      problem.hidden = false;
      return;
    }
    try {
      await submit(parameters);
    } catch (error) {
      problem.textContent = error.message;
      problem.hidden = false;
    }
  });
  return form;
}
