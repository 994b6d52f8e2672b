// The public JSON API, with the JWT from POST /v1/auth/login kept in sessionStorage.

const TOKEN = 'gw.token';
const USER = 'gw.user';

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  token: () => sessionStorage.getItem(TOKEN),
  user: () => JSON.parse(sessionStorage.getItem(USER) || 'null'),
  save(token, user) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(USER, JSON.stringify(user));
  },
  setUser: (user) => sessionStorage.setItem(USER, JSON.stringify(user)),
  clear() {
    sessionStorage.removeItem(TOKEN);
    sessionStorage.removeItem(USER);
  },
};

/// Reads an error body in API.md's format (or Anthropic's), else says what came back.
async function failure(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON */ }
  const message = body?.error?.message || `${response.status} ${response.statusText}`;
  return new ApiError(response.status, message, body?.error?.code || body?.error?.type);
}

/// Calls the API with the session's token (or `key`, an access key); answers the JSON body.
export async function api(method, path, body, { key } = {}) {
  const headers = { Accept: 'application/json' };
  const credential = key || session.token();
  if (credential) headers.Authorization = `Bearer ${credential}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401 && !key && session.token()) {
    session.clear();
    location.hash = '#/login';
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  return response.json();
}

export const get = (path) => api('GET', path);
export const post = (path, body) => api('POST', path, body ?? {});

/// Every page of a list route (up to `max` rows), newest first.
export async function all(path, max = 1000) {
  const rows = [];
  const sep = path.includes('?') ? '&' : '?';
  for (let offset = 0; offset < max; offset += 200) {
    const page = await get(`${path}${sep}limit=200&offset=${offset}`);
    rows.push(...page.data);
    if (rows.length >= page.total || page.data.length === 0) break;
  }
  return rows;
}

/// Streams a chat completion with an access key; calls `onText` with each piece of text.
export async function streamChat(key, body, onText) {
  const response = await fetch('/v1/chat/completions', {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split('\n')) {
        if (!line.startsWith('data:')) continue;
        const data = line.slice(5).trim();
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new ApiError(500, chunk.error.message, chunk.error.code);
        const text = chunk.choices?.[0]?.delta?.content;
        if (text) onText(text);
      }
    }
  }
}
