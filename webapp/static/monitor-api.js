/* relayhouse monitor: REST calls to the relay with the tokens this browser keeps, and the token dialogs. */

import { $, setText, toast } from './monitor-dom.js';

const TOKEN_KEYS = { api: 'relayhouse.apiToken', admin: 'relayhouse.adminToken' };

const storage = {
  get(key) { try { return window.localStorage.getItem(key); } catch { return null; } },
  set(key, value) { try { window.localStorage.setItem(key, value); } catch { /* private mode: keep it in memory only */ } },
  remove(key) { try { window.localStorage.removeItem(key); } catch { /* same */ } },
};

// -- tokens ------------------------------------------------------------------

export const tokens = { api: storage.get(TOKEN_KEYS.api), admin: storage.get(TOKEN_KEYS.admin) };

export function saveToken(kind, value) {
  tokens[kind] = value || null;
  if (value) storage.set(TOKEN_KEYS[kind], value);
  else storage.remove(TOKEN_KEYS[kind]);
}

let tokenQuestion = null; // one prompt at a time

/** Ask for the API or admin token; resolves to the token, or null when cancelled. */
export function askToken(kind, why) {
  if (tokenQuestion) {
    return tokenQuestion.kind === kind ? tokenQuestion.promise : tokenQuestion.promise.then(() => askToken(kind, why));
  }
  const dialog = $('token-dialog');
  const input = $('token-input');
  setText('token-title', kind === 'admin' ? 'Admin token required' : 'API token required');
  setText('token-label', kind === 'admin' ? 'Admin token (ADMIN_TOKEN)' : 'API token (one of API_TOKENS)');
  setText('token-why', why || '');
  input.value = '';
  const promise = new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      const value = dialog.returnValue === 'save' ? input.value.trim() : '';
      input.value = '';
      tokenQuestion = null;
      if (value) saveToken(kind, value);
      resolve(value || null);
    }, { once: true });
  });
  tokenQuestion = { kind, promise };
  dialog.returnValue = '';
  dialog.showModal();
  input.focus();
  return promise;
}

/** The token dialogs; `onApiTokenChanged` runs when the Tokens dialog saves a different API token. */
export function setupDialogs(onApiTokenChanged) {
  for (const button of document.querySelectorAll('dialog [data-close]')) {
    button.addEventListener('click', () => button.closest('dialog').close('cancel'));
  }
  const manage = $('tokens-dialog');
  $('tokens-button').addEventListener('click', () => {
    $('tokens-api').value = tokens.api || '';
    $('tokens-admin').value = tokens.admin || '';
    setText('tokens-api-state', tokens.api ? '(saved)' : '(none)');
    setText('tokens-admin-state', tokens.admin ? '(saved)' : '(none)');
    manage.returnValue = '';
    manage.showModal();
  });
  manage.addEventListener('close', () => {
    if (manage.returnValue !== 'save') return;
    const api = $('tokens-api').value.trim();
    const apiChanged = api !== (tokens.api || '');
    saveToken('api', api);
    saveToken('admin', $('tokens-admin').value.trim());
    toast('Tokens saved in this browser.', 'ok', 3000);
    if (apiChanged) onApiTokenChanged();
  });
}

// -- REST --------------------------------------------------------------------

/** fetch with the right token; a 401 asks for one and tries again. Never throws. */
export async function api(method, path, { body, admin = false, prompt = true, timeoutMs = 15000 } = {}) {
  for (;;) {
    const kind = admin ? 'admin' : 'api';
    const token = tokens[kind];
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const controller = new AbortController();
    const timer = window.setTimeout(() => controller.abort(), timeoutMs);
    init.signal = controller.signal;
    let response, text;
    try {
      response = await fetch(path, init);
      text = await response.text();
    } catch (err) {
      const timedOut = err && err.name === 'AbortError';
      return { ok: false, status: 0, statusText: timedOut ? 'no answer in time' : 'network error',
               data: null, text: timedOut ? `no answer within ${timeoutMs / 1000} s` : String((err && err.message) || err) };
    } finally {
      window.clearTimeout(timer);
    }
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (response.status === 401 && prompt) {
      if (token) saveToken(kind, null); // refused: never send it again
      const reason = (data && data.error) || 'The relay answered 401 Unauthorized.';
      const got = await askToken(kind, (token ? 'The saved token was refused. ' : '') + reason);
      if (got) continue;
    }
    return { ok: response.ok, status: response.status, statusText: response.statusText, data, text };
  }
}

/** "HTTP 404 NOT FOUND" and the body as the relay sent it (pretty when JSON). */
export function describeFailure(res) {
  const head = res.status ? `HTTP ${res.status} ${res.statusText || ''}`.trim() : `Relay unreachable (${res.statusText})`;
  const body = res.data !== null ? JSON.stringify(res.data, null, 2) : (res.text || '(empty body)').slice(0, 4000);
  const message = (res.data && typeof res.data.error === 'string') ? res.data.error : (res.text || '').slice(0, 200);
  return { head, body, message };
}
