// The dashboard of `agentswarm serve`: plain JavaScript, no build step.
// Every text from the API goes in through textContent (never innerHTML).
// API: docs/openapi.json. Live updates: the daemon's Server-Sent Events, read
// with fetch() so that a bearer token can be sent.
'use strict';

const API = 'api/v1';
const TOKEN_KEY = 'agentswarm.token';
const SVG_NS = 'http://www.w3.org/2000/svg';
const TASK_STATES = ['pending', 'ready', 'running', 'review', 'merging', 'done', 'failed', 'blocked', 'cancelled'];
// Cancel is for every project that has not ended for good (the API's 409 otherwise).
const TERMINAL = new Set(['done', 'failed', 'cancelled']);
const RESUMABLE = new Set(['failed', 'interrupted', 'budget_exhausted', 'paused']);
const STATUS_EVERY_MS = 2000;
const REFRESH_DELAY_MS = 300;

// ---------------------------------------------------------------- DOM helpers

/** Sets attributes: `text`, `value`, `checked`, `dataset`, `on<event>` are special. */
function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k === 'value') el.value = String(v);
    else if (k === 'checked') el.checked = Boolean(v);
    else if (k === 'dataset') for (const [dk, dv] of Object.entries(v)) el.dataset[dk] = String(dv);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

/** An HTML element: h('div', {class: 'x'}, child, 'text', …). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element. */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function clear(el) {
  el.replaceChildren();
  return el;
}

/** Replaces the children of `el`; null, undefined and false children are skipped. */
function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function debounce(fn, ms) {
  let timer = null;
  const wrapped = () => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/**
 * Calls `fn` once, `ms` after the first of a burst of calls: unlike a
 * debounce, a steady stream of events cannot postpone it for ever.
 */
function coalesce(fn, ms) {
  let timer = null;
  const wrapped = () => {
    if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
  wrapped.cancel = () => {
    clearTimeout(timer);
    timer = null;
  };
  return wrapped;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ formatting

function fmtDuration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} m`;
}

function fmtTime(ms) {
  if (!ms) return '';
  return new Date(ms).toLocaleString();
}

function fmtAgo(ms) {
  if (!ms) return '';
  const s = Math.round((Date.now() - ms) / 1000);
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

function fmtCost(usd) {
  if (usd === null || usd === undefined) return '';
  if (usd === 0) return '$0';
  return usd < 1 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(2)}`;
}

function fmtInt(n) {
  return n === null || n === undefined ? '' : Number(n).toLocaleString('en-US');
}

function shortSha(sha) {
  return sha ? sha.slice(0, 10) : '';
}

function truncate(text, n) {
  const chars = Array.from(text);
  return chars.length > n ? `${chars.slice(0, n - 1).join('')}…` : text;
}

function stateBadge(state, attrs = {}) {
  return h('span', { class: 'badge', ...attrs, dataset: { state } }, state.replace(/_/g, ' '));
}

// ------------------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage refused (private mode): the token lives until the page reloads.
  }
  memoryToken = token;
}
let memoryToken = '';

function authHeaders(extra = {}) {
  const token = getToken() || memoryToken;
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

/** A URL of the API: relative to the page, so that a path prefix of a proxy keeps working. */
function apiUrl(path) {
  return path.replace(/^\/(?=api\/)/, '');
}

async function errorMessage(res) {
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === 'string') return body.error;
  } catch {
    // not JSON
  }
  return text.trim() ? `HTTP ${res.status}: ${truncate(text.trim(), 300)}` : `HTTP ${res.status} ${res.statusText}`;
}

async function api(path, { method = 'GET', body, accept = 'application/json' } = {}) {
  const headers = authHeaders({ Accept: accept });
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(apiUrl(path), init);
  } catch (e) {
    throw new ApiError(0, `Cannot reach the daemon (${e.message}).`);
  }
  if (res.status === 401) auth.needed();
  if (!res.ok) throw new ApiError(res.status, await errorMessage(res));
  return res;
}

async function getJson(path) {
  return (await api(path)).json();
}

/** Downloads with the bearer header, then saves through a blob URL. */
async function download(path, filename, button) {
  const label = button ? button.textContent : '';
  if (button) {
    button.disabled = true;
    button.textContent = 'Downloading…';
  }
  try {
    const res = await api(path, { accept: 'application/gzip, application/octet-stream' });
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: filename, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    toast(`Saved ${filename}`);
  } catch (e) {
    toast(`Download failed: ${e.message}`, true);
  } finally {
    if (button) {
      button.disabled = false;
      button.textContent = label;
    }
  }
}

// ----------------------------------------------------------------------- toast

function toast(message, isError = false) {
  let box = document.getElementById('toasts');
  if (!box) {
    box = h('div', { id: 'toasts', class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.append(box);
  }
  const item = h('div', { class: isError ? 'toast error' : 'toast' }, message);
  box.append(item);
  setTimeout(() => item.remove(), isError ? 8000 : 4000);
}

// ------------------------------------------------------------------------ auth

const auth = {
  shown: false,
  needed() {
    if (this.shown) return;
    this.shown = true;
    // A token was sent and refused: say so, or the empty form looks like nothing happened.
    const refused = Boolean(getToken() || memoryToken);
    const why = document.getElementById('auth-error');
    why.textContent = refused ? 'That token was refused: check it against AGENTSWARM_API_TOKEN of the daemon.' : '';
    why.hidden = !refused;
    // A token that was refused is not worth keeping.
    setToken('');
    updateForgetButton();
    const section = document.getElementById('auth');
    section.hidden = false;
    document.getElementById('view').hidden = true;
    fill(document.getElementById('gauges'), h('span', { class: 'gauge gauge-warn' }, 'token needed'));
    const input = document.getElementById('token');
    input.value = '';
    input.focus();
    current?.pause?.();
    gauges.stop();
  },
  init() {
    document.getElementById('auth-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const token = document.getElementById('token').value.trim();
      if (!token) return;
      setToken(token);
      this.shown = false;
      document.getElementById('auth').hidden = true;
      document.getElementById('view').hidden = false;
      updateForgetButton();
      gauges.start();
      route(true);
    });
    const forget = document.getElementById('forget-token');
    forget.addEventListener('click', () => {
      setToken('');
      updateForgetButton();
      route(true);
    });
    updateForgetButton();
  },
};

function updateForgetButton() {
  document.getElementById('forget-token').hidden = !(getToken() || memoryToken);
}

// ------------------------------------------------------------ event streaming

/**
 * Server-Sent Events over fetch(): sends the bearer token and `Last-Event-ID`
 * when it reconnects, with a growing back-off. `onEvent(kind, data, id)` for
 * every event; `onOpen()` each time the stream (re)connects.
 */
class EventStream {
  constructor(path, { after, onEvent, onOpen, onState }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onOpen = onOpen || (() => {});
    this.onState = onState || (() => {});
    this.lastId = Number.isInteger(after) ? String(after) : null;
    this.retryMs = 1000;
    this.stopped = false;
    this.controller = null;
    this.run();
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  async run() {
    let backoff = 1000;
    while (!this.stopped) {
      this.opened = false;
      await this.connect().catch(() => {});
      if (this.stopped) return;
      if (this.opened) backoff = Math.max(this.retryMs, 1000);
      this.onState('reconnecting');
      await sleep(backoff + Math.random() * 500);
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  /** One connection, until it ends; sets `opened` once it is established. */
  async connect() {
    this.controller = new AbortController();
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (this.lastId !== null) headers['Last-Event-ID'] = this.lastId;
    const res = await fetch(apiUrl(this.path), { headers, cache: 'no-store', signal: this.controller.signal });
    if (res.status === 401) {
      this.stopped = true;
      auth.needed();
      return;
    }
    if (!res.ok || !res.body) {
      this.onState('error');
      return;
    }
    this.opened = true;
    this.onState('live');
    this.onOpen();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { data: [], kind: '', id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let text = buffer + value;
      // A trailing '\r' may be the first half of a '\r\n' split over two chunks.
      const hold = text.endsWith('\r') ? '\r' : '';
      if (hold) text = text.slice(0, -1);
      const lines = text.split(/\r\n|\r|\n/);
      buffer = lines.pop() + hold;
      for (const line of lines) event = this.line(line, event);
    }
  }

  /** One line of the stream (the SSE field rules); returns the event being built. */
  line(line, event) {
    if (line === '') {
      if (event.id !== null) this.lastId = event.id;
      if (event.data.length > 0) {
        const text = event.data.join('\n');
        let data = text;
        try {
          data = JSON.parse(text);
        } catch {
          // not JSON: keep the text
        }
        this.onEvent(event.kind || 'message', data, this.lastId);
      }
      return { data: [], kind: '', id: null };
    }
    if (line.startsWith(':')) return event; // comment (keep-alive)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') event.data.push(value);
    else if (field === 'event') event.kind = value;
    else if (field === 'id' && !value.includes('\0')) event.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retryMs = Number(value);
    return event;
  }
}

// ---------------------------------------------------------------------- gauges

const gauges = {
  timer: null,
  inFlight: false,
  start() {
    this.stop();
    this.refresh();
    this.timer = setInterval(() => {
      if (!document.hidden) this.refresh();
    }, STATUS_EVERY_MS);
  },
  stop() {
    clearInterval(this.timer);
    this.timer = null;
  },
  refreshSoon: null,
  async refresh() {
    if (this.inFlight || auth.shown) return;
    this.inFlight = true;
    try {
      this.render(await getJson(`${API}/status`));
    } catch (e) {
      if (e.status !== 401) this.renderError(e);
    } finally {
      this.inFlight = false;
    }
  },
  renderError(e) {
    const box = clear(document.getElementById('gauges'));
    box.dataset.state = 'error';
    box.append(h('span', { class: 'gauge gauge-bad', title: e.message }, 'daemon unreachable'));
  },
  render(st) {
    const box = clear(document.getElementById('gauges'));
    box.dataset.state = st.ready ? 'ready' : 'recovering';
    document.getElementById('version').textContent = st.version ? `agentswarm ${st.version}` : '';
    if (!st.ready) box.append(h('span', { class: 'gauge gauge-warn', dataset: { gauge: 'recovering' } }, 'recovering…'));

    const cap = st.workers_cap || 0;
    const meter = h('span', { class: 'meter', 'aria-hidden': 'true' }, h('span', { class: 'meter-fill' }));
    meter.firstChild.style.width = `${cap ? Math.min(100, (100 * st.workers_running) / cap) : 0}%`;
    box.append(
      h('span', { class: 'gauge', dataset: { gauge: 'workers' }, title: 'workers running / MAX_CONCURRENT_WORKERS' },
        h('span', { class: 'g-label' }, 'workers'),
        h('span', { class: 'g-value' }, `${st.workers_running} / ${cap}`),
        meter),
      h('span', { class: 'gauge', dataset: { gauge: 'ready' }, title: 'tasks ready to start' },
        h('span', { class: 'g-label' }, 'ready'),
        h('span', { class: 'g-value' }, String(st.ready_tasks))),
    );

    const gate = st.gate || {};
    const gateDetail = [];
    if (gate.free_memory_mb !== null && gate.free_memory_mb !== undefined) {
      gateDetail.push(`free memory ${fmtInt(gate.free_memory_mb)} MB (min ${fmtInt(gate.min_free_memory_mb)})`);
    }
    if (gate.load_1m !== null && gate.load_1m !== undefined) {
      gateDetail.push(`load ${Number(gate.load_1m).toFixed(2)} (max ${gate.max_load_average})`);
    }
    box.append(
      h('span', {
        class: gate.open ? 'gauge' : 'gauge gauge-warn',
        dataset: { gauge: 'gate', open: Boolean(gate.open) },
        title: gateDetail.join(', ') || 'resource gate',
      },
      h('span', { class: 'g-label' }, 'gate'),
      h('span', { class: 'g-value' }, gate.open ? 'open' : `closed${gate.reason ? `: ${gate.reason}` : ''}`)),
    );

    const rl = st.rate_limit || {};
    let rate;
    if (!rl.rpm) rate = 'no limit';
    else rate = `${rl.started_in_window ?? '?'} / ${rl.rpm} per min`;
    if (rl.waiting) rate += ` · ${rl.waiting} waiting`;
    const headroom = rl.rpm ? rl.rpm - (rl.started_in_window || 0) : null;
    box.append(
      h('span', {
        class: headroom !== null && (headroom <= 0 || rl.waiting) ? 'gauge gauge-warn' : 'gauge',
        dataset: { gauge: 'rate' },
        title: rl.wait_seconds_total ? `waited ${Number(rl.wait_seconds_total).toFixed(1)} s in total for the rate limit` : 'model requests started in the last 60 s / API_RATE_LIMIT_RPM',
      },
      h('span', { class: 'g-label' }, 'rate'),
      h('span', { class: 'g-value' }, rate)),
    );

    // The quota circuit breaker: providers out of quota hold their work.
    for (const q of st.quota_blocked || []) {
      const until = new Date(q.until_ms).toLocaleTimeString();
      box.append(
        h('span', {
          class: 'gauge gauge-warn',
          dataset: { gauge: 'quota', provider: q.provider },
          title: `${q.reason} — work that needs ${q.provider} resumes by itself at ${until}`,
        },
        h('span', { class: 'g-label' }, 'quota'),
        h('span', { class: 'g-value' }, `${q.provider} out until ${until}`)),
      );
    }

    // Worker nodes (docs/scale-out.md), when there are others than this machine.
    const nodes = st.nodes || [];
    if (nodes.length > 1) {
      for (const n of nodes) {
        const detail = [n.address || 'this machine'];
        if (n.free_memory_mb !== null && n.free_memory_mb !== undefined) detail.push(`free memory ${n.free_memory_mb} MB`);
        if (n.load_1m !== null && n.load_1m !== undefined) detail.push(`load ${Number(n.load_1m).toFixed(2)}`);
        if (n.sandbox) detail.push(`sandbox ${n.sandbox}`);
        if (n.labels && n.labels.length) detail.push(`labels ${n.labels.join(', ')}`);
        if (n.reason) detail.push(n.reason);
        if (n.gate) detail.push(`gate closed: ${n.gate}`);
        const ok = n.state === 'up' && !n.gate;
        box.append(
          h('span', {
            class: ok ? 'gauge' : 'gauge gauge-warn',
            dataset: { gauge: 'node', node: n.name, state: n.state },
            title: detail.join(' · '),
          },
          h('span', { class: 'g-label' }, `node ${n.name}`),
          h('span', { class: 'g-value' }, n.state === 'up' ? `${n.busy} / ${n.slots}` : n.state)),
        );
      }
    }
  },
};
gauges.refreshSoon = coalesce(() => gauges.refresh(), REFRESH_DELAY_MS);

// ------------------------------------------------------------------- list view

class ListView {
  constructor(root) {
    this.root = root;
    this.stream = null;
    this.timer = null;
    this.reload = coalesce(() => this.load(), REFRESH_DELAY_MS);
    this.build();
    // The stream starts after the first load, from the newest event that
    // load saw when the API tells it (`last_event_id`), so that it does not
    // replay the whole log.
    this.load().then(() => {
      if (this.destroyed || auth.shown) return;
      this.stream = new EventStream(`${API}/events`, {
        after: this.lastEventId,
        onEvent: () => {
          this.reload();
          gauges.refreshSoon();
        },
        onOpen: () => this.reload(),
      });
    });
    // The relative times ("3 min ago") age.
    this.timer = setInterval(() => {
      if (!document.hidden && this.projects) this.renderList();
    }, 30000);
  }

  destroy() {
    this.destroyed = true;
    this.stream?.stop();
    this.reload.cancel();
    clearInterval(this.timer);
  }

  pause() {
    this.stream?.stop();
  }

  build() {
    document.title = 'AgentSwarm';
    this.error = h('p', { id: 'submit-error', class: 'form-error', role: 'alert', hidden: true });
    this.goal = h('textarea', { id: 'goal', name: 'goal', rows: 3, required: true, placeholder: 'e.g. A small Python package with a CLI that counts words, with unit tests' });
    this.plan = h('textarea', { id: 'plan', name: 'plan', rows: 8, spellcheck: 'false', placeholder: '{"name": "…", "tasks": [ … ]}  (docs/plan.md)' });
    this.budget = h('input', { id: 'max-cost-usd', name: 'max_cost_usd', type: 'number', min: '0', step: '0.01', inputmode: 'decimal', placeholder: 'no limit' });
    this.network = h('input', { id: 'allow-network', name: 'allow_network', type: 'checkbox' });
    this.submitBtn = h('button', { id: 'submit-btn', type: 'submit', class: 'primary' }, 'Submit goal');
    const form = h('form', { id: 'submit-form', class: 'card submit-form', onsubmit: (ev) => this.submit(ev) },
      h('h2', null, 'New project'),
      h('label', { for: 'goal' }, 'Goal'),
      this.goal,
      h('details', { id: 'plan-details' },
        h('summary', null, 'Plan JSON (optional: skips the planner)'),
        this.plan),
      h('div', { class: 'form-row' },
        h('label', { for: 'max-cost-usd', class: 'inline' }, 'Budget (USD)', this.budget),
        h('label', { class: 'inline checkbox' }, this.network, 'Allow network for its commands')),
      this.error,
      h('div', { class: 'actions' }, this.submitBtn));

    this.list = h('div', { id: 'project-list', class: 'project-list', 'aria-busy': 'true' },
      h('p', { class: 'muted' }, 'Loading projects…'));
    this.listError = h('p', { class: 'form-error', role: 'alert', hidden: true });
    fill(this.root,
      h('div', { class: 'list-layout' },
        h('section', { class: 'card projects-card' },
          h('h2', null, 'Projects'),
          this.listError,
          this.list),
        form),
    );
  }

  async load() {
    try {
      const body = await getJson(`${API}/projects`);
      this.projects = body.projects || [];
      if (Number.isInteger(body.last_event_id)) this.lastEventId ??= body.last_event_id;
      this.listError.hidden = true;
      this.renderList();
    } catch (e) {
      if (e.status === 401) return;
      this.listError.textContent = e.message;
      this.listError.hidden = false;
    }
  }

  renderList() {
    const list = clear(this.list);
    list.setAttribute('aria-busy', 'false');
    if (this.projects.length === 0) {
      list.append(h('p', { class: 'muted empty' }, 'No projects yet. Submit a goal to start one.'));
      return;
    }
    for (const p of this.projects) {
      const pct = p.tasks_total ? Math.round((100 * p.tasks_done) / p.tasks_total) : 0;
      const bar = h('span', { class: 'progress', 'aria-hidden': 'true' }, h('span', { class: 'progress-fill' }));
      bar.firstChild.style.width = `${pct}%`;
      list.append(
        h('a', { class: 'project-row', href: `#/projects/${encodeURIComponent(p.id)}`, dataset: { project: p.id, state: p.state } },
          h('span', { class: 'pr-state' }, stateBadge(p.state)),
          h('span', { class: 'pr-main' },
            h('span', { class: 'pr-goal' }, p.goal),
            h('span', { class: 'pr-sub muted' },
              p.name ? h('span', { class: 'pr-name' }, p.name) : null,
              h('code', { class: 'pr-id' }, p.id),
              p.waiting ? h('span', { class: 'pr-waiting' }, `waiting: ${p.waiting.replace(/^waiting:\s*/i, '')}`) : null,
              p.error ? h('span', { class: 'pr-error' }, truncate(p.error, 120)) : null)),
          h('span', { class: 'pr-tasks' },
            h('span', { class: 'pr-count' }, `${p.tasks_done} / ${p.tasks_total}`),
            bar),
          h('span', { class: 'pr-created muted', title: fmtTime(p.created_ms) }, fmtAgo(p.created_ms))),
      );
    }
  }

  async submit(ev) {
    ev.preventDefault();
    this.error.hidden = true;
    const goal = this.goal.value.trim();
    if (!goal) return this.showError('Write a goal first.');
    const body = { goal };
    const planText = this.plan.value.trim();
    if (planText) {
      try {
        body.plan = JSON.parse(planText);
      } catch (e) {
        return this.showError(`The plan is not valid JSON: ${e.message}`);
      }
    }
    const options = {};
    if (this.budget.value !== '') {
      const budget = Number(this.budget.value);
      if (!(budget > 0)) return this.showError('The budget must be a positive number of dollars.');
      options.max_cost_usd = budget;
    }
    if (this.network.checked) options.allow_network = true;
    if (Object.keys(options).length) body.options = options;

    this.submitBtn.disabled = true;
    try {
      const project = await (await api(`${API}/projects`, { method: 'POST', body })).json();
      this.goal.value = '';
      this.plan.value = '';
      location.hash = `#/projects/${encodeURIComponent(project.id)}`;
    } catch (e) {
      this.showError(e.message);
    } finally {
      this.submitBtn.disabled = false;
    }
    return undefined;
  }

  showError(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }
}

// ---------------------------------------------------------------- task graph

const NODE_W = 196;
const NODE_H = 62;
const GAP_X = 36;
const GAP_Y = 16;
const PAD = 14;

/** Columns by dependency depth; rows ordered to keep edges short. */
function layoutGraph(tasks) {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle cannot be stored, but do not hang on one
    visiting.add(id);
    let d = 0;
    for (const dep of byId.get(id).depends_on || []) {
      if (byId.has(dep)) d = Math.max(d, depthOf(dep) + 1);
    }
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  const layers = [];
  for (const t of tasks) {
    const d = depthOf(t.id);
    (layers[d] ||= []).push(t);
  }
  const row = new Map();
  layers.forEach((layer, i) => {
    if (i > 0) {
      const key = (t) => {
        const rows = (t.depends_on || []).filter((d) => row.has(d)).map((d) => row.get(d));
        return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : 0;
      };
      const keyed = layer.map((t, idx) => [key(t), idx, t]);
      keyed.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      layers[i] = keyed.map((k) => k[2]);
    }
    layers[i].forEach((t, r) => row.set(t.id, r));
  });
  const maxRows = Math.max(1, ...layers.map((l) => l.length));
  const pos = new Map();
  layers.forEach((layer, col) => {
    const offset = ((maxRows - layer.length) * (NODE_H + GAP_Y)) / 2;
    layer.forEach((t, r) => {
      pos.set(t.id, { x: PAD + col * (NODE_W + GAP_X), y: PAD + offset + r * (NODE_H + GAP_Y) });
    });
  });
  return {
    pos,
    width: PAD * 2 + layers.length * NODE_W + Math.max(0, layers.length - 1) * GAP_X,
    height: PAD * 2 + maxRows * NODE_H + (maxRows - 1) * GAP_Y,
  };
}

function renderGraph(tasks, selected, fetchedAt, onSelect) {
  if (tasks.length === 0) return h('p', { class: 'muted graph-empty' }, 'No tasks yet: the planner is at work.');
  const { pos, width, height } = layoutGraph(tasks);
  const root = svg('svg', {
    id: 'graph-svg',
    class: 'graph',
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: 'group',
    'aria-label': 'Task graph',
    dataset: { width, height },
  });
  root.append(svg('defs', null,
    svg('marker', { id: 'arrow', viewBox: '0 0 8 8', refX: 8, refY: 4, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      svg('path', { d: 'M0,0 L8,4 L0,8 z', class: 'arrow-head' }))));

  const edges = svg('g', { class: 'edges' });
  for (const t of tasks) {
    const to = pos.get(t.id);
    for (const dep of t.depends_on || []) {
      const from = pos.get(dep);
      if (!from) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x - 2;
      const y2 = to.y + NODE_H / 2;
      const dx = Math.max(24, (x2 - x1) / 2);
      const active = selected && (selected === t.id || selected === dep);
      edges.append(svg('path', {
        class: active ? 'edge active' : 'edge',
        d: `M${x1},${y1} C${x1 + dx},${y1} ${x2 - dx},${y2} ${x2},${y2}`,
        'marker-end': 'url(#arrow)',
        dataset: { from: dep, to: t.id },
      }));
    }
  }
  root.append(edges);

  for (const t of tasks) {
    const p = pos.get(t.id);
    const g = svg('g', {
      class: t.id === selected ? 'task-node selected' : 'task-node',
      transform: `translate(${p.x},${p.y})`,
      tabindex: 0,
      role: 'button',
      'aria-label': `${t.id}: ${t.title} (${t.state})`,
      dataset: { task: t.id, state: t.state, kind: t.kind, attempt: t.attempt },
    });
    g.addEventListener('click', () => onSelect(t.id));
    g.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        onSelect(t.id);
      }
    });
    g.append(
      svg('title', null, `${t.id}: ${t.title}\n${t.state}${t.last_error ? `\n${t.last_error}` : ''}`),
      svg('rect', { class: 'node-box', width: NODE_W, height: NODE_H, rx: 8 }),
      svg('rect', { class: 'node-stripe', x: 0, y: 0, width: 6, height: NODE_H, rx: 3 }),
      svg('text', { class: 'node-id', x: 14, y: 20 }, truncate(t.kind === 'verify' ? `✓ ${t.id}` : t.id, 24)),
    );
    const meta = [t.state];
    if (t.attempt > 0) meta.push(`#${t.attempt}`);
    const metaText = svg('text', { class: 'node-meta', x: 14, y: 38 }, meta.join(' · '));
    if (t.attempt > 0) g.dataset.attempts = t.attempts_counted;
    const live = t.state === 'running' || t.state === 'merging';
    if (t.duration_ms !== null && t.duration_ms !== undefined) {
      const dur = svg('tspan', { class: live ? 'node-duration live-duration' : 'node-duration' }, ` · ${fmtDuration(t.duration_ms)}`);
      if (live) {
        dur.dataset.base = t.duration_ms;
        dur.dataset.at = fetchedAt;
      }
      metaText.append(dur);
    }
    g.append(metaText);
    if (t.worker) {
      const w = t.worker;
      const bits = [];
      if (w.pid) bits.push(`pid ${w.pid}`);
      bits.push(`${w.turns} turn${w.turns === 1 ? '' : 's'}`);
      if (w.last_tool) bits.push(w.last_tool);
      g.append(svg('text', { class: 'node-worker', x: 14, y: 54 }, truncate(bits.join(' · '), 32)));
    } else if (t.state === 'failed' || t.state === 'blocked') {
      g.append(svg('text', { class: 'node-worker node-error', x: 14, y: 54 }, truncate(t.last_error || '', 32)));
    } else {
      g.append(svg('text', { class: 'node-worker', x: 14, y: 54 }, truncate(t.title, 32)));
    }
    root.append(g);
  }
  return root;
}

function legend() {
  return h('ul', { class: 'legend', 'aria-label': 'Task states' },
    TASK_STATES.map((s) => h('li', { dataset: { state: s } }, h('span', { class: 'swatch' }), s)));
}

// --------------------------------------------------------------- transcripts

function formatArguments(raw) {
  let args = raw;
  if (typeof raw === 'string') {
    try {
      args = JSON.parse(raw);
    } catch {
      return raw;
    }
  }
  if (!args || typeof args !== 'object' || Array.isArray(args)) return JSON.stringify(args, null, 2);
  // Short values first (path, command), then multi-line ones (file contents).
  const long = (v) => typeof v !== 'string' || v.includes('\n');
  const entries = Object.entries(args).sort((a, b) => Number(long(a[1])) - Number(long(b[1])));
  return entries.map(([k, v]) => {
    if (typeof v === 'string') return v.includes('\n') ? `${k}:\n${v}` : `${k}: ${v}`;
    return `${k}: ${JSON.stringify(v, null, 2)}`;
  }).join('\n');
}

function contentText(content) {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.map((b) => (typeof b === 'string' ? b : b.text ?? (typeof b.content === 'string' ? b.content : ''))).join('\n');
  }
  return JSON.stringify(content, null, 2);
}

function toolCallView(name, id, args) {
  return h('details', { class: 'tool-call', open: true, dataset: { tool: name } },
    h('summary', null, h('span', { class: 'arrow' }, '→ '), h('strong', null, name), h('span', { class: 'muted call-id' }, id ? ` ${id}` : '')),
    h('pre', null, formatArguments(args)));
}

function toolResultView(name, id, text, isError) {
  const lines = text.split('\n');
  const first = truncate(lines[0] || '', 80);
  return h('details', { class: isError ? 'tool-result error' : 'tool-result', dataset: { tool: name || '' } },
    h('summary', null, h('span', { class: 'arrow' }, '← '), h('strong', null, name || 'result'),
      h('span', { class: 'muted' }, ` ${lines.length} line${lines.length === 1 ? '' : 's'}`),
      first ? h('span', { class: 'preview' }, ` ${first}`) : null),
    h('pre', null, text));
}

function renderTranscript(doc) {
  const names = new Map();
  const out = [];
  (doc.messages || []).forEach((m, i) => {
    const role = m.role || 'unknown';
    const box = h('div', { class: 'msg', dataset: { role, index: i } }, h('div', { class: 'msg-role' }, role));
    if (Array.isArray(m.content)) {
      // Anthropic-shaped blocks, should a transcript hold them.
      for (const b of m.content) {
        if (b.type === 'tool_use') {
          names.set(b.id, b.name);
          box.append(toolCallView(b.name, b.id, b.input));
        } else if (b.type === 'tool_result') {
          box.append(toolResultView(names.get(b.tool_use_id), b.tool_use_id, contentText(b.content), b.is_error));
        } else {
          const text = contentText([b]);
          if (text) box.append(h('div', { class: 'msg-text' }, text));
        }
      }
    } else if (role === 'tool') {
      box.append(toolResultView(names.get(m.tool_call_id), m.tool_call_id, contentText(m.content), false));
    } else if (role === 'system' || (role === 'user' && i > 1)) {
      const text = contentText(m.content);
      box.append(h('details', { class: 'msg-fold' },
        h('summary', null, truncate(text.split('\n')[0] || '(empty)', 90)),
        h('div', { class: 'msg-text' }, text)));
    } else {
      const text = contentText(m.content);
      if (text) box.append(h('div', { class: 'msg-text' }, text));
    }
    for (const c of m.tool_calls || []) {
      const name = c.function?.name ?? c.name ?? '?';
      names.set(c.id, name);
      box.append(toolCallView(name, c.id, c.function?.arguments ?? c.arguments));
    }
    out.push(box);
  });
  return out;
}

/** A unified diff, each line marked as added, removed, hunk or header. */
function renderDiff(text) {
  const lines = (text || '').replace(/\n$/, '').split('\n');
  return h('pre', { class: 'diff' }, lines.map((line) => {
    let cls = null;
    if (/^(diff --git|index |--- |\+\+\+ |new file|deleted file|similarity|Binary files)/.test(line)) cls = 'meta';
    else if (line.startsWith('@@')) cls = 'hunk';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    return h('span', { class: cls }, line);
  }));
}

function outcomeText(outcome) {
  if (!outcome || typeof outcome !== 'object') return '';
  const bits = [outcome.result || outcome.outcome || ''];
  if (outcome.turns !== undefined) bits.push(`${outcome.turns} turns`);
  if (outcome.reason) bits.push(outcome.reason);
  if (outcome.summary) bits.push(outcome.summary);
  return bits.filter(Boolean).join(' · ');
}

function renderCommands(doc) {
  const cmds = doc.commands || [];
  if (cmds.length === 0) return [h('p', { class: 'muted' }, 'This attempt ran no commands.')];
  return cmds.map((c, i) => h('div', { class: 'command', dataset: { index: i, passed: c.passed ?? '' } },
    h('div', { class: 'command-head' },
      h('code', { class: 'command-line' }, `$ ${c.command}`),
      c.passed === true ? h('span', { class: 'badge', dataset: { state: 'done' } }, 'passed') : null,
      c.passed === false ? h('span', { class: 'badge', dataset: { state: 'failed' } }, 'failed') : null,
      c.turn !== null && c.turn !== undefined ? h('span', { class: 'muted' }, `turn ${c.turn}`) : null,
      c.duration_ms !== null && c.duration_ms !== undefined ? h('span', { class: 'muted' }, fmtDuration(c.duration_ms)) : null),
    h('pre', { class: 'output' }, c.output || '(no output)')));
}

// ---------------------------------------------------------------- project view

class ProjectView {
  constructor(root, id, task) {
    this.root = root;
    this.id = id;
    this.selected = task;
    this.detail = null;
    this.fetchedAt = 0;
    this.sigs = {};
    this.viewer = null; // {kind: 'transcript'|'output', attempt, live}
    this.cache = new Map(); // url → document of an ended attempt
    this.loading = false;
    this.again = false;
    this.refresh = coalesce(() => this.load(), REFRESH_DELAY_MS);
    this.build();
    this.load().then(() => {
      if (this.destroyed || auth.shown) return;
      this.stream = new EventStream(`${API}/projects/${encodeURIComponent(id)}/events`, {
        after: this.lastEventId,
        onEvent: () => {
          this.refresh();
          gauges.refreshSoon();
        },
        onOpen: () => this.refresh(),
        onState: (st) => {
          this.liveDot.dataset.live = st;
          this.liveText.textContent = st === 'live' ? 'live' : st;
        },
      });
    });
    this.ticker = setInterval(() => this.tick(), 1000);
    this.onResize = debounce(() => this.fitGraph(), 100);
    window.addEventListener('resize', this.onResize);
    // The box itself may change width without the window (the layout settling).
    this.boxWatch = typeof ResizeObserver === 'function' ? new ResizeObserver(this.onResize) : null;
    this.boxWatch?.observe(this.graphBox);
  }

  destroy() {
    this.destroyed = true;
    window.removeEventListener('resize', this.onResize);
    this.boxWatch?.disconnect();
    this.stream?.stop();
    this.refresh.cancel();
    clearInterval(this.ticker);
  }

  pause() {
    this.stream?.stop();
  }

  build() {
    this.goal = h('h1', { id: 'project-goal', class: 'goal' });
    this.stateBadge = h('span', { id: 'project-state', class: 'badge' });
    this.liveDot = h('span', { class: 'live-dot', dataset: { live: 'connecting' } });
    this.liveText = h('span', { class: 'live-text' }, 'connecting');
    // While the project runs: whether its updates arrive by themselves.
    this.live = h('span', { class: 'live', title: 'updates arrive by themselves while this is green' }, this.liveDot, this.liveText);
    this.counts = h('span', { id: 'project-tasks', class: 'muted' });
    this.meta = h('div', { class: 'project-meta muted' });
    this.errorBox = h('p', { id: 'project-error', class: 'alert', hidden: true });
    this.waitingBox = h('p', { id: 'project-waiting', class: 'notice', hidden: true });
    this.deliveryReview = h('div', { id: 'delivery-review', class: 'review', hidden: true });
    this.actionError = h('p', { class: 'form-error', role: 'alert', hidden: true });

    this.cancelBtn = h('button', { id: 'cancel-btn', type: 'button', class: 'danger', hidden: true, onclick: () => this.cancel() }, 'Cancel');
    this.resumeBudget = h('input', { id: 'resume-budget', type: 'number', min: '0', step: '0.01', inputmode: 'decimal', placeholder: 'budget USD (optional)', 'aria-label': 'New budget in USD (optional)' });
    this.resumeBtn = h('button', { id: 'resume-btn', type: 'submit', class: 'primary' }, 'Resume');
    this.resumeForm = h('form', { id: 'resume-form', class: 'inline-form', hidden: true, onsubmit: (ev) => this.resume(ev) }, this.resumeBudget, this.resumeBtn);
    this.downloadBtn = h('button', { id: 'download-btn', type: 'button', class: 'primary', hidden: true, onclick: () => this.downloadDelivery() }, 'Download delivery');

    this.graphBox = h('div', { id: 'graph', class: 'graph-box' });
    this.graphHint = h('p', { id: 'graph-hint', class: 'scroll-hint', hidden: true }, 'The graph is wider than the screen: scroll it sideways →');
    this.graphBox.addEventListener('scroll', () => this.showGraphHint());
    this.taskPanel = h('section', { id: 'task-panel', class: 'card task-panel', hidden: true });
    this.taskInfo = h('div', { class: 'task-info' });
    this.viewerBox = h('div', { class: 'viewer' });
    this.reviewBox = h('div', { class: 'review-box' });
    this.taskPanel.append(this.taskInfo, this.reviewBox, this.viewerBox);
    this.taskHint = h('section', { id: 'task-hint', class: 'card muted' }, 'Select a task in the graph to see its attempts, transcripts and command output.');
    this.verify = h('section', { id: 'verify', class: 'card' }, h('h2', null, 'Verify'), h('p', { class: 'muted' }, 'Not run yet.'));
    this.usage = h('section', { id: 'usage', class: 'card' }, h('h2', null, 'Model usage'));

    fill(this.root,
      h('div', { id: 'project-view', class: 'project-view', dataset: { project: this.id } },
        h('nav', { class: 'crumbs' }, h('a', { href: '#/' }, '← Projects')),
        h('section', { class: 'card project-head' },
          h('div', { class: 'head-top' }, this.stateBadge, this.live, this.counts),
          this.goal,
          this.meta,
          this.errorBox,
          this.waitingBox,
          this.deliveryReview,
          h('div', { class: 'actions' }, this.downloadBtn, this.resumeForm, this.cancelBtn),
          this.actionError),
        h('section', { class: 'card graph-card' },
          h('div', { class: 'card-head' }, h('h2', null, 'Tasks'), legend()),
          this.graphBox,
          this.graphHint),
        h('div', { class: 'columns' },
          h('div', { class: 'col-main' }, this.taskHint, this.taskPanel),
          h('div', { class: 'col-side' }, this.verify, this.usage))),
    );
  }

  async load() {
    if (this.loading) {
      this.again = true;
      return;
    }
    this.loading = true;
    try {
      const detail = await getJson(`${API}/projects/${encodeURIComponent(this.id)}`);
      this.detail = detail;
      if (Number.isInteger(detail.last_event_id)) this.lastEventId ??= detail.last_event_id;
      this.fetchedAt = Date.now();
      this.render();
    } catch (e) {
      if (e.status === 404 && !this.detail) {
        fill(this.root, h('section', { id: 'project-view', class: 'card' },
          h('h1', null, 'No such project'), h('p', null, e.message), h('a', { href: '#/' }, '← Projects')));
        this.destroy();
      } else if (e.status !== 401) {
        this.actionError.textContent = e.message;
        this.actionError.hidden = false;
      }
    } finally {
      this.loading = false;
      if (this.again) {
        this.again = false;
        this.refresh();
      }
    }
  }

  /** Re-renders what changed since the last render. */
  render() {
    const d = this.detail;
    const p = d.project;
    this.renderHead(p, d);
    const graphSig = JSON.stringify([d.tasks.map((t) => [t.id, t.state, t.attempt, t.depends_on, t.worker, t.duration_ms, t.last_error]), this.selected]);
    if (graphSig !== this.sigs.graph) {
      this.sigs.graph = graphSig;
      fill(this.graphBox, renderGraph(d.tasks, this.selected, this.fetchedAt, (id) => this.select(id)));
      this.fitGraph();
    }
    this.renderTask();
    const verifySig = JSON.stringify(d.verify);
    if (verifySig !== this.sigs.verify) {
      this.sigs.verify = verifySig;
      this.renderVerify(d.verify);
    }
    const usageSig = JSON.stringify([d.usage, d.totals]);
    if (usageSig !== this.sigs.usage) {
      this.sigs.usage = usageSig;
      this.renderUsage(d.usage, d.totals);
    }
  }

  renderHead(p, d) {
    document.title = `${p.name || p.id} · ${p.state} · AgentSwarm`;
    this.goal.textContent = p.goal;
    this.stateBadge.textContent = p.state.replace(/_/g, ' ');
    this.stateBadge.dataset.state = p.state;
    this.counts.textContent = `${p.tasks_done} / ${p.tasks_total} tasks done`;
    const meta = [];
    if (p.name) meta.push(h('span', null, p.name));
    meta.push(h('code', null, p.id));
    meta.push(h('span', { title: fmtTime(p.created_ms) }, `created ${fmtAgo(p.created_ms)}`));
    if (d.fix_round) meta.push(h('span', null, `fix round ${d.fix_round}`));
    if (d.final_commit) meta.push(h('span', null, 'main ', h('code', null, shortSha(d.final_commit))));
    if (d.options?.max_cost_usd) meta.push(h('span', null, `budget ${fmtCost(d.options.max_cost_usd)}`));
    if (d.totals) meta.push(h('span', null, `cost ${fmtCost(d.totals.cost_usd)}`));
    if (d.options?.review && d.options.review !== 'off') meta.push(h('span', { id: 'project-review' }, `review: ${d.options.review}`));
    if (d.source) {
      const s = d.source;
      const branch = s.held
        ? `branch agentswarm/${p.id} waits for review (agentswarm review ${p.id})`
        : s.branch ? `branch ${s.branch}` : `branch agentswarm/${p.id} when delivered`;
      meta.push(h('span', { id: 'project-source' }, 'repository ', h('code', null, s.repo),
        ` at ${s.base || 'HEAD'}`, s.base_commit ? h('code', null, ` ${shortSha(s.base_commit)}`) : null, ` · ${branch}`));
    }
    fill(this.meta, ...meta);
    this.errorBox.textContent = p.error || '';
    this.errorBox.hidden = !p.error;
    // The engine's text may already say "waiting: …".
    this.waitingBox.textContent = p.waiting ? `Waiting: ${p.waiting.replace(/^waiting:\s*/i, '')}` : '';
    this.live.hidden = TERMINAL.has(p.state);
    this.waitingBox.hidden = !p.waiting;
    this.cancelBtn.hidden = TERMINAL.has(p.state);
    this.resumeForm.hidden = !RESUMABLE.has(p.state);
    this.renderDeliveryReview(p, d);
    this.downloadBtn.hidden = !p.delivery_url;
    // A project that did not finish ships what it merged: say it is partial.
    this.downloadBtn.textContent = p.state === 'done'
      ? 'Download delivery'
      : `Download partial delivery (${p.tasks_done} of ${p.tasks_total} tasks)`;
  }

  select(id) {
    const base = `#/projects/${encodeURIComponent(this.id)}`;
    location.hash = id && id !== this.selected ? `${base}/tasks/${encodeURIComponent(id)}` : base;
  }

  /** The route changed to another task of this project. */
  setTask(task) {
    if (task === this.selected) return;
    this.selected = task;
    this.viewer = null;
    clear(this.viewerBox);
    this.sigs.taskId = null;
    if (!this.detail) return;
    this.render();
    // On a narrow screen the panel is below the graph: bring it up.
    if (task && !this.taskPanel.hidden && this.taskPanel.getBoundingClientRect().top > window.innerHeight * 0.8) {
      this.taskPanel.scrollIntoView({ block: 'start', behavior: 'smooth' });
    }
  }

  renderTask() {
    const t = this.detail.tasks.find((x) => x.id === this.selected);
    this.taskPanel.hidden = !t;
    this.taskHint.hidden = Boolean(t);
    if (!t) {
      this.sigs.task = null;
      return;
    }
    const sig = JSON.stringify([t, this.viewer && [this.viewer.kind, this.viewer.attempt]]);
    if (sig === this.sigs.task) return;
    const sameTask = this.sigs.taskId === t.id;
    this.sigs.task = sig;
    this.sigs.taskId = t.id;
    this.taskPanel.dataset.task = t.id;
    this.taskPanel.dataset.state = t.state;

    const rows = [];
    const dl = (k, v) => (v === null || v === undefined || v === '' ? null : [h('dt', null, k), h('dd', null, v)]);
    const deps = (t.depends_on || []).length
      ? t.depends_on.map((dep) => h('button', { type: 'button', class: 'link dep', onclick: () => this.select(dep) }, dep))
      : null;
    rows.push(
      dl('kind', t.kind),
      dl('depends on', deps),
      dl('attempt', t.attempt ? `${t.attempt}${t.attempts_counted ? ` (${t.attempts_counted} counted toward max_attempts)` : ''}` : null),
      dl('fix round', t.fix_round || null),
      dl('started', t.started_ms ? fmtTime(t.started_ms) : null),
      dl('finished', t.finished_ms ? fmtTime(t.finished_ms) : null),
      dl('duration', t.duration_ms !== null ? fmtDuration(t.duration_ms) : null),
      dl('commit', t.commit ? h('code', null, shortSha(t.commit)) : null),
      dl('merged as', t.merge_commit ? h('code', null, shortSha(t.merge_commit)) : null),
    );
    if (t.worker) {
      const w = t.worker;
      rows.push(dl('worker', `attempt ${w.attempt}${w.pid ? ` · pid ${w.pid}` : ''} · ${w.turns} turns${w.last_tool ? ` · last tool ${w.last_tool}` : ''} · for ${fmtDuration(this.fetchedAt - w.started_ms)}`));
    }

    const attempts = (t.attempts || []).slice().sort((a, b) => a.attempt - b.attempt);
    const attemptRows = attempts.map((a) => {
      const active = (kind) => this.viewer && this.viewer.attempt === a.attempt && this.viewer.kind === kind;
      const dur = a.ended_ms ? fmtDuration(a.ended_ms - a.started_ms) : fmtDuration(this.fetchedAt - a.started_ms);
      return h('tr', { class: 'attempt', dataset: { attempt: a.attempt, outcome: a.outcome } },
        h('td', { class: 'attempt-no' }, String(a.attempt)),
        h('td', null, h('span', { class: 'badge', dataset: { state: a.outcome } }, a.outcome.replace(/_/g, ' '))),
        h('td', { class: a.reason ? 'reason' : 'reason empty' }, a.reason || ''),
        h('td', { class: 'num', dataset: { label: a.turns === 1 ? 'turn' : 'turns' } }, String(a.turns)),
        h('td', { class: 'num' }, dur),
        h('td', { class: 'attempt-actions' },
          a.transcript_url
            ? h('button', { type: 'button', class: active('transcript') ? 'small on transcript-btn' : 'small transcript-btn', 'aria-pressed': String(active('transcript')), onclick: () => this.openViewer('transcript', a) }, 'Transcript')
            : null,
          a.output_url
            ? h('button', { type: 'button', class: active('output') ? 'small on output-btn' : 'small output-btn', 'aria-pressed': String(active('output')), onclick: () => this.openViewer('output', a) }, 'Command output')
            : null));
    });

    const head = h('div', { class: 'card-head' },
      h('h2', null, h('code', null, t.id), ' ', t.title),
      h('span', { class: 'head-right' }, stateBadge(t.state, { id: 'task-state' }),
        h('button', { type: 'button', class: 'close', 'aria-label': 'Close task', onclick: () => this.select(null) }, '×')));

    fill(this.taskInfo,
      head,
      t.description ? h('p', { class: 'description' }, t.description) : null,
      t.last_error ? h('p', { class: 'alert', id: 'task-error' }, t.last_error) : null,
      t.summary ? h('div', { class: 'summary' }, h('h3', null, 'Summary'), h('p', null, t.summary)) : null,
      h('dl', { class: 'facts' }, rows.flat().filter(Boolean)),
      t.changed_files && t.changed_files.length
        ? h('div', { class: 'changed' }, h('h3', null, `Changed files (${t.changed_files.length})`),
          h('ul', { class: 'files' }, t.changed_files.map((f) => h('li', null, h('code', null, f)))))
        : null,
      t.archive_url
        ? h('p', null, h('button', { type: 'button', id: 'task-archive-btn', class: 'small', onclick: (ev) => download(t.archive_url, `${this.id}-${t.id}.tar.gz`, ev.currentTarget) }, 'Download task archive'))
        : null,
      h('h3', null, 'Attempts'),
      attempts.length
        ? h('div', { class: 'table-wrap' }, h('table', { class: 'attempts' },
          h('thead', null, h('tr', null, [['#', ''], ['outcome', ''], ['reason', ''], ['turns', 'num'], ['duration', 'num'], ['', '']].map(([c, cls]) => h('th', { class: cls || null }, c)))),
          h('tbody', null, attemptRows)))
        : h('p', { class: 'muted' }, 'Not started yet.'),
    );
    if (!sameTask) clear(this.viewerBox);
    this.renderReview(t);
    // A viewer of a running attempt follows it.
    if (this.viewer && this.viewer.live) this.loadViewer();
  }

  /** A delivery held for review (review = "delivery"): the whole change and the decision. */
  async renderDeliveryReview(p, d) {
    const key = d.source?.held && (p.state === 'done' || p.state === 'failed') ? `${p.id}/${d.final_commit}` : null;
    if (key === this.deliveryKey) return;
    this.deliveryKey = key;
    this.deliveryReview.hidden = !key;
    if (!key) {
      clear(this.deliveryReview);
      return;
    }
    const base = `${API}/projects/${encodeURIComponent(this.id)}/delivery`;
    const comment = h('textarea', { id: 'delivery-comment', placeholder: 'What to change: the goal of a follow-up round', 'aria-label': 'Review comment' });
    const approve = h('button', { id: 'delivery-approve-btn', type: 'button', class: 'primary' }, 'Approve: write the branch');
    const reject = h('button', { id: 'delivery-reject-btn', type: 'button', class: 'danger' }, 'Reject: plan a follow-up round');
    approve.onclick = () => this.action(approve, `${base}/approve`, {});
    reject.onclick = () => {
      if (!comment.value.trim()) {
        this.actionError.textContent = 'Say what to change: it becomes the goal of the follow-up round.';
        this.actionError.hidden = false;
        return;
      }
      this.action(reject, `${base}/reject`, { comment: comment.value });
    };
    const files = h('div', { class: 'review-files' }, h('p', { class: 'muted' }, 'Loading the change…'));
    fill(this.deliveryReview,
      h('h3', null, `The delivery waits for review: branch agentswarm/${p.id}`),
      h('p', { class: 'muted small-print' }, `Or: agentswarm review ${p.id} [--approve | --reject "…"]`),
      h('div', { class: 'review-actions' }, approve, comment, reject),
      files);
    let diff;
    try {
      diff = await getJson(`${base}/review`);
    } catch (e) {
      if (this.deliveryKey === key) fill(files, h('p', { class: 'form-error' }, e.message));
      return;
    }
    if (this.deliveryKey !== key) return;
    fill(files,
      h('p', { class: 'muted' }, `${diff.files.length} file(s); main `, h('code', null, shortSha(diff.commit)), ' against the base ', h('code', null, shortSha(diff.base))),
      ...diff.files.map((f) => h('details', { class: 'file-diff', dataset: { path: f.path } },
        h('summary', null, f.path, h('span', { class: 'counts' }, f.added === null ? 'binary' : `+${f.added} −${f.removed}`)),
        renderDiff(f.diff))));
  }

  /** A task waiting in review: its diff, file by file, and the decision. */
  async renderReview(t) {
    const key = t.state === 'review' ? `${t.id}/${t.attempt}` : null;
    if (key === this.reviewKey) return;
    this.reviewKey = key;
    if (!key) {
      clear(this.reviewBox);
      return;
    }
    const base = `${API}/projects/${encodeURIComponent(this.id)}/tasks/${encodeURIComponent(t.id)}`;
    const box = h('section', { id: 'review', class: 'review', dataset: { task: t.id, attempt: t.attempt } });
    const comment = h('textarea', { id: 'review-comment', placeholder: 'What to change (for a rejection)', 'aria-label': 'Review comment' });
    const approve = h('button', { id: 'approve-btn', type: 'button', class: 'primary' }, 'Approve and merge');
    const reject = h('button', { id: 'reject-btn', type: 'button', class: 'danger' }, 'Reject with comment');
    approve.onclick = () => this.action(approve, `${base}/approve`, {});
    reject.onclick = () => {
      if (!comment.value.trim()) {
        this.actionError.textContent = 'Say what to change: the next attempt gets the comment.';
        this.actionError.hidden = false;
        return;
      }
      this.action(reject, `${base}/reject`, { comment: comment.value });
    };
    const files = h('div', { class: 'review-files' }, h('p', { class: 'muted' }, 'Loading the diff…'));
    append(box, [
      h('h3', null, `Waits for review — attempt ${t.attempt}`),
      h('p', { class: 'muted small-print' }, `Or: agentswarm review ${this.id} ${t.id} [--approve | --reject "…"]`),
      h('div', { class: 'review-actions' }, approve, comment, reject),
      files,
    ]);
    fill(this.reviewBox, box);
    let diff;
    try {
      diff = await getJson(`${base}/review`);
    } catch (e) {
      if (this.reviewKey === key) fill(files, h('p', { class: 'form-error' }, e.message));
      return;
    }
    if (this.reviewKey !== key) return;
    fill(files,
      h('p', { class: 'muted' }, `${diff.files.length} file(s); commit `, h('code', null, shortSha(diff.commit)), ' against ', h('code', null, shortSha(diff.base))),
      ...diff.files.map((f) => h('details', { class: 'file-diff', open: true, dataset: { path: f.path } },
        h('summary', null, f.path, h('span', { class: 'counts' }, f.added === null ? 'binary' : `+${f.added} −${f.removed}`)),
        renderDiff(f.diff))));
  }

  openViewer(kind, attempt) {
    if (this.viewer && this.viewer.kind === kind && this.viewer.attempt === attempt.attempt) {
      this.viewer = null;
      clear(this.viewerBox);
    } else {
      this.viewer = {
        kind,
        attempt: attempt.attempt,
        url: kind === 'transcript' ? attempt.transcript_url : attempt.output_url,
        live: attempt.ended_ms === null || attempt.ended_ms === undefined,
      };
      this.loadViewer();
    }
    this.sigs.task = null;
    this.renderTask();
  }

  async loadViewer() {
    const v = this.viewer;
    if (!v) return;
    const id = v.kind === 'transcript' ? 'transcript' : 'command-output';
    const title = v.kind === 'transcript' ? 'Transcript' : 'Command output';
    const box = h('section', { id, class: 'viewer-body', dataset: { attempt: v.attempt, task: this.selected } });
    const heading = h('h3', null, `${title} — attempt ${v.attempt}`);
    let doc = this.cache.get(v.url);
    if (!doc) {
      if (!this.viewerBox.firstChild || this.viewerBox.firstChild.id !== id) {
        fill(this.viewerBox, h('section', { id: `${id}-loading`, class: 'viewer-body' }, heading, h('p', { class: 'muted' }, 'Loading…')));
      }
      try {
        doc = await getJson(v.url);
      } catch (e) {
        if (this.viewer !== v) return;
        fill(this.viewerBox, h('section', { id, class: 'viewer-body', dataset: { error: e.status } }, heading, h('p', { class: 'form-error' }, e.message)));
        return;
      }
      if (!v.live) this.cache.set(v.url, doc);
    }
    if (this.viewer !== v) return;
    if (v.kind === 'transcript') {
      append(box, [heading, doc.outcome ? h('p', { class: 'muted outcome' }, outcomeText(doc.outcome)) : null, renderTranscript(doc)]);
    } else {
      append(box, [heading, renderCommands(doc)]);
    }
    fill(this.viewerBox, box);
  }

  renderVerify(v) {
    const box = clear(this.verify);
    box.append(h('h2', null, 'Verify'));
    if (!v) {
      box.dataset.passed = '';
      box.append(h('p', { class: 'muted' }, 'Not run yet.'));
      return;
    }
    box.dataset.passed = String(v.passed);
    box.append(h('p', { class: 'verify-summary' },
      h('span', { class: 'badge', dataset: { state: v.passed ? 'done' : 'failed' } }, v.passed ? 'passed' : 'failed'),
      ` task ${v.task}, attempt ${v.attempt}`));
    for (const r of v.results || []) {
      box.append(h('div', { class: 'verify-cmd', dataset: { passed: r.passed } },
        h('div', { class: 'command-head' },
          h('span', { class: 'badge', dataset: { state: r.passed ? 'done' : 'failed' } }, r.passed ? 'passed' : r.timed_out ? 'timed out' : 'failed'),
          h('code', { class: 'command-line' }, r.command)),
        h('div', { class: 'muted small-print' }, `${r.exit} · ${fmtDuration(r.duration_ms)}`),
        h('details', { open: !r.passed }, h('summary', null, 'output'), h('pre', { class: 'output' }, r.output || '(no output)'))));
    }
  }

  renderUsage(usage, totals) {
    const box = clear(this.usage);
    box.append(h('h2', null, 'Model usage'));
    if (!usage || usage.length === 0) {
      box.append(h('p', { class: 'muted' }, 'No model calls yet.'));
      return;
    }
    const cols = [['role', ''], ['model', ''], ['calls', 'num'], ['tokens', 'num'], ['cost', 'num']];
    const rows = usage.map((u) => h('tr', { dataset: { role: u.role } },
      h('td', null, u.role),
      h('td', { class: 'model' }, u.model, h('span', { class: 'sub' }, u.provider)),
      h('td', { class: 'num', title: `${u.failed_calls} failed, ${u.retries} retries` },
        fmtInt(u.calls), u.failed_calls || u.retries ? h('span', { class: 'sub' }, `${u.failed_calls} failed · ${u.retries} retries`) : null),
      h('td', { class: 'num' }, `${fmtInt(u.input_tokens)} in`, h('span', { class: 'sub' }, `${fmtInt(u.output_tokens)} out`)),
      h('td', { class: 'num' }, fmtCost(u.cost_usd), u.unpriced_calls ? h('span', { class: 'sub', title: 'calls without a price in [prices]' }, `+${u.unpriced_calls} unpriced`) : null)));
    const foot = totals
      ? h('tfoot', null, h('tr', null,
        h('th', { colspan: 2 }, 'total'),
        h('td', { class: 'num' }, fmtInt(totals.calls)),
        h('td', { class: 'num' }, `${fmtInt(totals.input_tokens)} in`, h('span', { class: 'sub' }, `${fmtInt(totals.output_tokens)} out`)),
        h('td', { class: 'num', id: 'usage-cost' }, fmtCost(totals.cost_usd))))
      : null;
    const wrap = h('div', { class: 'table-wrap' }, h('table', { class: 'usage' },
      h('thead', null, h('tr', null, cols.map(([c, cls]) => h('th', { class: cls || null }, c)))),
      h('tbody', null, rows),
      foot));
    const hint = h('p', { id: 'usage-hint', class: 'scroll-hint', hidden: true }, 'The table is wider than the screen: scroll it sideways for the cost →');
    const show = () => { hint.hidden = !(wrap.scrollWidth - wrap.clientWidth - wrap.scrollLeft > 2); };
    wrap.addEventListener('scroll', show);
    box.append(wrap, hint);
    requestAnimationFrame(show);
  }

  /** A graph a little wider than its box is scaled down to fit; a much wider one scrolls. */
  fitGraph() {
    const el = this.graphBox.querySelector('svg.graph');
    if (!el) return;
    const width = Number(el.dataset.width);
    const height = Number(el.dataset.height);
    const avail = this.graphBox.clientWidth - 2;
    const scale = width > avail && avail / width >= 0.8 ? avail / width : 1;
    el.setAttribute('width', String(Math.floor(width * scale)));
    el.setAttribute('height', String(Math.floor(height * scale)));
    this.showGraphHint();
  }

  /** Says so while part of the graph is cut off at the right edge. */
  showGraphHint() {
    const b = this.graphBox;
    this.graphHint.hidden = !(b.scrollWidth - b.clientWidth - b.scrollLeft > 2);
  }

  /** Running durations tick between refreshes. */
  tick() {
    for (const el of this.graphBox.querySelectorAll('.live-duration')) {
      const base = Number(el.dataset.base);
      const at = Number(el.dataset.at);
      el.textContent = ` · ${fmtDuration(base + Date.now() - at)}`;
    }
  }

  async cancel() {
    if (!window.confirm('Cancel this project for good? Its workers are stopped.')) return;
    await this.action(this.cancelBtn, `${API}/projects/${encodeURIComponent(this.id)}/cancel`, undefined);
  }

  async resume(ev) {
    ev.preventDefault();
    const body = {};
    if (this.resumeBudget.value !== '') {
      const budget = Number(this.resumeBudget.value);
      if (!(budget > 0)) {
        this.actionError.textContent = 'The budget must be a positive number of dollars.';
        this.actionError.hidden = false;
        return;
      }
      body.options = { max_cost_usd: budget };
    }
    await this.action(this.resumeBtn, `${API}/projects/${encodeURIComponent(this.id)}/resume`, body);
    this.resumeBudget.value = '';
  }

  async action(button, path, body) {
    this.actionError.hidden = true;
    button.disabled = true;
    try {
      await api(path, { method: 'POST', body });
      this.refresh();
      gauges.refreshSoon();
    } catch (e) {
      this.actionError.textContent = e.message;
      this.actionError.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  downloadDelivery() {
    const p = this.detail.project;
    download(p.delivery_url, `${p.id}-delivery.tar.gz`, this.downloadBtn);
  }
}

// ---------------------------------------------------------------------- router

let current = null;

function parseRoute() {
  const hash = location.hash.replace(/^#/, '') || '/';
  let parts;
  try {
    parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
  } catch {
    parts = [];
  }
  if (parts[0] === 'projects' && parts[1]) {
    return { page: 'project', id: parts[1], task: parts[2] === 'tasks' && parts[3] ? parts[3] : null };
  }
  return { page: 'list' };
}

function route(force = false) {
  const r = parseRoute();
  if (!force && current instanceof ProjectView && r.page === 'project' && r.id === current.id) {
    current.setTask(r.task);
    return;
  }
  current?.destroy();
  const root = document.getElementById('view');
  current = r.page === 'project' ? new ProjectView(root, r.id, r.task) : new ListView(root);
  window.scrollTo(0, 0);
}

function main() {
  memoryToken = getToken();
  auth.init();
  window.addEventListener('hashchange', () => route());
  gauges.start();
  route();
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main);
else main();
