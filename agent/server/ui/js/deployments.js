// Deployments: the list, and one deployment's page: its schedules and next runs, a Run form
// (defaults filled in, every value checked before it is sent) and its recent runs.

import { api } from './api.js';
import { h, when, ago, badge, json, table, runLink, firstSteps, go, STATES } from './dom.js';

export async function deploymentsPage(main) {
  const [deployments, queues] = await Promise.all([api('deployments'), api('work_queues')]);
  const names = Object.fromEntries(queues.map((q) => [q.id, q.name]));
  main.append(h('h1', {}, 'Deployments'));
  if (!deployments.length) {
    main.append(firstSteps());
    return;
  }
  main.append(table(['deployment', 'queue', 'runs', 'runner', 'retries', 'tags'],
    deployments.map((d) => [h('a', { href: `#/deployments/${d.id}` }, d.name), names[d.work_queue_id] ?? '–',
      h('code', {}, d.entrypoint ?? (d.command || []).join(' ')), d.runner, d.retries, d.tags.join(', ')]),
    ''));
}

export async function deploymentPage(main, { args: [id] }) {
  const [deployment, schedules, recent, upcoming] = await Promise.all([
    api(`deployments/${id}`), api(`deployments/${id}/schedules`),
    // Recent: what has been picked up or ended; next: the waiting runs soonest first (the
    // scheduler makes a day of them ahead, so the list is newest-created first otherwise).
    api('flow_runs', { query: { deployment_id: id, limit: 10,
      state: STATES.filter((st) => st !== 'SCHEDULED') } }),
    api('flow_runs', { query: { deployment_id: id, state: 'SCHEDULED', limit: 1000 } })]);
  upcoming.sort((a, b) => new Date(a.expected_start_time) - new Date(b.expected_start_time));
  main.append(h('h1', {}, deployment.name),
    h('p', {}, h('code', {}, deployment.entrypoint ?? (deployment.command || []).join(' '))),
    h('div', { class: 'columns' },
      h('section', {}, h('h2', {}, 'Run'), runForm(deployment)),
      h('section', {}, h('h2', {}, 'Schedules'),
        table(['schedule', 'active', 'next run'], schedules.map((sc) => [describe(sc),
          sc.active ? 'yes' : 'paused', when(sc.next_run_time)]), 'No schedule: runs start only when asked.'),
        h('h2', {}, 'Next runs'),
        table(['run', 'expected start', 'state'], upcoming.slice(0, 10).map((r) => [runLink(r),
          `${when(r.expected_start_time)} (${ago(r.expected_start_time)})`, badge(r.state.type, r.state.name)]),
        'No run waiting.'))),
    h('section', {}, h('h2', {}, 'Recent runs'),
      table(['run', 'state', 'attempt', 'created'], recent.map((r) => [runLink(r),
        badge(r.state.type, r.state.name), r.attempt, ago(r.created)]), 'No run yet.')),
    h('section', {}, h('h2', {}, 'Settings'), json({
      queue: deployment.work_queue_id, runner: deployment.runner, runner_options: deployment.runner_options,
      tags: deployment.tags, retries: deployment.retries, retry_delay_seconds: deployment.retry_delay_seconds,
      timeout_seconds: deployment.timeout_seconds, concurrency_limit: deployment.concurrency_limit,
      source: deployment.source })));
}

function describe(schedule) {
  if (schedule.cron) return `cron ${schedule.cron} (${schedule.timezone || 'UTC'})`;
  if (schedule.interval_seconds) return `every ${schedule.interval_seconds} s`;
  return `once at ${when(schedule.at)}`;
}

// One field per default parameter, holding its JSON (a string default: plain text), and a
// field for any other parameters as a JSON object. Nothing is sent until all of it parses.
function runForm(deployment) {
  const fields = Object.entries(deployment.parameters).map(([name, value]) => {
    const plain = typeof value === 'string';
    const input = h('input', { name, id: `param-${name}`, 'data-plain': plain,
      value: plain ? value : JSON.stringify(value) });
    return { name, plain, input };
  });
  const extra = h('textarea', { id: 'param-extra', rows: 3, placeholder: '{"other": 1}' });
  const problem = h('p', { class: 'error', role: 'alert', hidden: true, id: 'run-problem' });
  const form = h('form', { class: 'panel', id: 'run-form' },
    fields.length ? null : h('p', { class: 'muted' }, 'This deployment has no default parameters.'),
    fields.map(({ name, plain, input }) => h('label', {}, h('span', {}, name,
      h('small', {}, plain ? ' (text)' : ' (JSON)')), input)),
    h('label', {}, h('span', {}, 'more parameters', h('small', {}, ' (JSON object)')), extra),
    problem, h('button', { type: 'submit', id: 'run-submit' }, 'Run'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    problem.hidden = true;
    const parameters = {};
    try {
      for (const { name, plain, input } of fields) {
        try {
          parameters[name] = plain ? input.value : JSON.parse(input.value);
        } catch {
          throw new Error(`${name}: not valid JSON (${input.value}); a text value needs "quotes"`);
        }
      }
      if (extra.value.trim()) {
        const more = JSON.parse(extra.value);
        if (typeof more !== 'object' || more === null || Array.isArray(more)) {
          throw new Error('more parameters: must be a JSON object, like {"x": 1}');
        }
        Object.assign(parameters, more);
      }
    } catch (error) {
      problem.textContent = `Not sent: ${error.message}`;
      problem.hidden = false;
      return;
    }
    try {
      const run = await api(`deployments/${deployment.id}/runs`, { method: 'POST', body: { parameters } });
      go(`/runs/${run.id}`);
    } catch (error) {
      problem.textContent = error.message;
      problem.hidden = false;
    }
  });
  return form;
}
