// The JSON API the CLI uses, with the API key (if any) in an Authorization header. The key
// lives in sessionStorage: gone with the tab, never in a URL, never in a cookie, so a request
// another site makes the browser send carries no credential.

const KEY = 'flowagent.apiKey';

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const apiKey = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

function headers(extra = {}) {
  const all = { Accept: 'application/json', ...extra };
  const key = apiKey.get();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

export function url(path, query = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    for (const one of [].concat(value)) {
      if (one !== undefined && one !== null && one !== '') params.append(name, one);
    }
  }
  const qs = params.toString();
  return `/api/${path}${qs ? `?${qs}` : ''}`;
}

async function failure(response) {
  let detail = `${response.status} ${response.statusText}`;
  try {
    detail = (await response.json()).detail ?? detail;
  } catch { /* not JSON: keep the status line */ }
  if (typeof detail !== 'string') detail = JSON.stringify(detail);
  return response.status === 401 ? new AuthError(detail) : new ApiError(response.status, detail);
}

export async function api(path, { method = 'GET', body, query } = {}) {
  const init = { method, headers: headers(), cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url(path, query), init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

// Server-sent events read with fetch, not EventSource: EventSource cannot send a header, and
// the key must not go in the URL. Calls onEvent(name, data) for each event until the stream
// ends or `signal` aborts it.
export async function stream(path, query, onEvent, signal) {
  const response = await fetch(url(path, query), {
    headers: headers({ Accept: 'text/event-stream' }), cache: 'no-store', credentials: 'omit', signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event: ')) name = line.slice(7);
        else if (line.startsWith('data: ')) data.push(line.slice(6));
      }
      if (data.length) onEvent(name, JSON.parse(data.join('\n')));
    }
  }
}
