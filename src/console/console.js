// refund-worker operations console: a thin client of the admin API (/v1/...) and /metrics.
//
// Rules: the token lives in sessionStorage only and goes out as a bearer header; every
// value from the API is rendered through textContent (el() below), never as HTML; nothing
// is fetched from another origin.

const TOKEN_KEY = 'refund-worker-admin-token';
const PROVIDERS = ['va_services', 'bpn', 'binance_pay', 'bvnk'];
const STATUSES = ['PENDING', 'COMPLETED', 'REFUND_FAIL'];
const DLQS = ['refund.commands.dlq', 'provider.webhooks.dlq'];
const INBOX_STATES = ['parked', 'unmatched', 'contradiction'];

let refreshTimer = null;
// The refunds list's filter and page, kept while the operator moves between views.
const refundsState = { filter: {}, cursors: [] };

// ---- DOM helpers ----------------------------------------------------------------------

// el('tag.class#id', {attr: value, onClick: fn}, child, ...): children are nodes or text
// (strings and numbers become text nodes, null/undefined/false are skipped).
function el(spec, attrs, ...children) {
  const m = /^([a-z0-9]+)((?:[.#][\w-]+)*)$/i.exec(spec);
  const node = document.createElement(m ? m[1] : 'div');
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g)) {
      if (part[0] === '.') node.classList.add(part.slice(1));
      else node.id = part.slice(1);
    }
  }
  if (attrs !== null && attrs !== undefined &&
    (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      node.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k === 'dataset') {
      Object.assign(node.dataset, v);
    } else if (k === 'value') {
      node.value = v;
    } else {
      node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

const $ = (id) => document.getElementById(id);

function table(headers, rows, empty) {
  if (!rows.length) return el('p.empty', empty || 'Nothing here.');
  return el('table',
    el('thead', el('tr', headers.map((h) => el('th', h)))),
    el('tbody', rows));
}

function kv(pairs) {
  return el('dl.kv', pairs.filter(([, v]) => v !== null && v !== undefined && v !== '')
    .map(([k, v]) => [el('dt', k), el('dd', v instanceof Node ? v : String(v))]));
}

function fmtTime(t) {
  if (!t) return '';
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || isNaN(seconds)) return '-';
  let s = Math.max(0, Math.round(seconds));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function since(t) {
  return t ? fmtDuration((Date.now() - new Date(t).getTime()) / 1000) : '-';
}

function badge(text, kind) {
  return el('span', { class: `badge ${kind || String(text).toLowerCase()}` }, text);
}

function notice(kind, ...children) {
  return el(`div.notice.${kind}`, { role: kind === 'error' ? 'alert' : 'status' }, ...children);
}

function errorText(e) {
  if (e instanceof ApiError) return `${e.status} ${e.code || ''}: ${e.message}`;
  return String(e && e.message ? e.message : e);
}

// ---- API ----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}
class Unauthorized extends Error {}

const token = () => sessionStorage.getItem(TOKEN_KEY);

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token() || ''}`, Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('The token was refused (401): enter it again.');
    throw new Unauthorized('unauthorized');
  }
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const err = data && data.error ? data.error : {};
    throw new ApiError(r.status, err.code, err.message || text);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

// ---- metrics ------------------------------------------------------------------------

// Parses Prometheus text into [{name, labels, value}] (comments and histograms' buckets kept
// as plain samples; the overview reads only gauges).
function parseMetrics(text) {
  const out = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /(\w+)="((?:[^"\\]|\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3]))) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

async function fetchMetrics() {
  const r = await fetch('/metrics', { cache: 'no-store', credentials: 'omit' });
  if (!r.ok) throw new ApiError(r.status, 'metrics', `GET /metrics answered ${r.status}`);
  return parseMetrics(await r.text());
}

// ---- login --------------------------------------------------------------------------

function showLogin(message) {
  stopRefresh();
  $('view').hidden = true;
  $('nav').hidden = true;
  $('login').hidden = false;
  const err = $('login-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('token').value = '';
  $('token').focus();
}

async function login(event) {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  sessionStorage.setItem(TOKEN_KEY, value);
  try {
    // Any admin call checks the token.
    await api('GET', '/v1/refunds?limit=1');
  } catch (e) {
    if (!(e instanceof Unauthorized)) showLogin(`The admin API did not answer: ${errorText(e)}`);
    return;
  }
  $('login').hidden = true;
  route();
}

// ---- routing ------------------------------------------------------------------------

const VIEWS = {
  overview: viewOverview,
  refunds: viewRefunds,
  refund: viewRefund,
  review: viewReview,
  dlq: viewDlq,
  webhooks: viewWebhooks,
  'provider-webhooks': viewProviderWebhooks,
};

function stopRefresh() {
  if (refreshTimer) clearInterval(refreshTimer);
  refreshTimer = null;
}

async function route() {
  stopRefresh();
  if (!token()) {
    showLogin();
    return;
  }
  const hash = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = hash.split('/');
  const view = VIEWS[name] ? name : 'overview';
  const arg = rest.length ? decodeURIComponent(rest.join('/')) : null;
  for (const a of document.querySelectorAll('#nav a')) {
    a.classList.toggle('active', a.dataset.view === (view === 'refund' ? 'refunds' : view));
  }
  $('nav').hidden = false;
  $('login').hidden = true;
  const root = clear($('view'));
  root.hidden = false;
  root.dataset.view = view;
  try {
    await VIEWS[view](root, arg);
  } catch (e) {
    if (e instanceof Unauthorized) return;
    root.append(notice('error', errorText(e)));
  }
}

// ---- overview -----------------------------------------------------------------------

async function viewOverview(root) {
  root.append(el('h2', 'Overview'), el('p.muted', 'Figures from /metrics, refreshed every 5 s.'));
  const body = el('div#overview');
  const stamp = el('p.muted#overview-updated');
  root.append(body, stamp);
  const draw = async () => {
    let samples;
    try {
      samples = await fetchMetrics();
    } catch (e) {
      clear(body).append(notice('error', errorText(e)));
      return;
    }
    const one = (name, labels = {}) => {
      const s = samples.find((x) => x.name === name &&
        Object.entries(labels).every(([k, v]) => x.labels[k] === v));
      return s ? s.value : null;
    };
    const all = (name) => samples.filter((x) => x.name === name);
    const num = (v) => (v === null ? '-' : String(Math.round(v * 100) / 100));
    const card = (title, value, hint, id) =>
      el('div.card', { 'data-metric': id }, el('div.card-value', value), el('div.card-title', title),
        hint ? el('div.card-hint', hint) : null);
    const cards = el('div.cards',
      card('refunds in review', num(one('refund_worker_refunds_in_review')), null, 'in-review'),
      card('commands in flight', num(one('refund_worker_commands_in_flight')), null, 'in-flight'),
      card('oldest PENDING', fmtDuration(one('refund_worker_refunds_oldest_pending_seconds')), null, 'oldest-pending'),
      card('outbox pending', num(one('refund_worker_outbox_pending')),
        `lag ${fmtDuration(one('refund_worker_outbox_lag_seconds'))}`, 'outbox'),
      card('failed merchant webhooks', num(one('refund_worker_webhook_deliveries', { state: 'failed' })),
        `queued ${num(one('refund_worker_webhook_deliveries', { state: 'queued' }))}`, 'webhooks-failed'));
    const pending = all('refund_worker_refunds').filter((s) => s.labels.status === 'PENDING')
      .sort((a, b) => a.labels.provider.localeCompare(b.labels.provider));
    const queues = all('refund_worker_queue_depth')
      .sort((a, b) => a.labels.queue.localeCompare(b.labels.queue));
    clear(body).append(cards,
      el('div.columns',
        el('div', el('h3', 'PENDING by provider'),
          table(['provider', 'PENDING'], pending.map((s) => el('tr', el('td', s.labels.provider), el('td.num', num(s.value)))),
            'No PENDING refunds sampled yet.')),
        el('div', el('h3', 'Queue depths'),
          table(['queue', 'messages'], queues.map((s) => el('tr', { class: /dlq$/.test(s.labels.queue) && s.value > 0 ? 'warn' : null },
            el('td', s.labels.queue), el('td.num', num(s.value)))), 'No queue depths sampled yet.'))));
    stamp.textContent = `updated ${fmtTime(new Date().toISOString())}`;
  };
  await draw();
  refreshTimer = setInterval(draw, 5000);
}

// ---- refunds ------------------------------------------------------------------------

function select(id, options, value, anyLabel) {
  return el(`select#${id}`, { name: id },
    el('option', { value: '' }, anyLabel || 'any'),
    options.map(([v, label]) => el('option', { value: v, selected: v === value }, label)));
}

function toIso(local) {
  if (!local) return '';
  const d = new Date(local);
  return isNaN(d) ? '' : d.toISOString();
}

function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d)) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function refundLink(reference) {
  return el('a.ref', { href: `#/refund/${encodeURIComponent(reference)}` }, reference);
}

function amount(r) {
  return r.amount ? `${r.amount} ${r.currency || ''}`.trim() : '-';
}

async function viewRefunds(root) {
  const f = refundsState.filter;
  const form = el('form.filters#refund-filters', { autocomplete: 'off' },
    el('label', 'status ', select('f-status', STATUSES.map((s) => [s, s]), f.status)),
    el('label', 'provider ', select('f-provider', PROVIDERS.map((p) => [p, p]), f.provider)),
    el('label', 'review ', select('f-review', [['true', 'in review'], ['false', 'not in review']], f.review)),
    el('label', 'reference starts with ', el('input#f-prefix', { type: 'search', value: f.referencePrefix || '' })),
    el('label', 'since ', el('input#f-since', { type: 'datetime-local', value: toLocalInput(f.since) })),
    el('label', 'until ', el('input#f-until', { type: 'datetime-local', value: toLocalInput(f.until) })),
    el('button#f-apply', { type: 'submit' }, 'Apply'),
    el('button.secondary#f-reset', { type: 'button', onClick: () => { refundsState.filter = {}; refundsState.cursors = []; route(); } }, 'Reset'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    refundsState.filter = {
      status: $('f-status').value,
      provider: $('f-provider').value,
      review: $('f-review').value,
      referencePrefix: $('f-prefix').value.trim(),
      since: toIso($('f-since').value),
      until: toIso($('f-until').value),
    };
    refundsState.cursors = [];
    route();
  });
  const list = el('div#refund-list');
  root.append(el('h2', 'Refunds'), form, list);
  const cursor = refundsState.cursors[refundsState.cursors.length - 1];
  const page = await api('GET', `/v1/refunds${query({ ...f, limit: 50, cursor })}`);
  const rows = page.items.map((r) => el('tr', { dataset: { ref: r.refundReference } },
    el('td', refundLink(r.refundReference)),
    el('td', r.provider || '-'),
    el('td.num', amount(r)),
    el('td', badge(r.status)),
    el('td', r.phase),
    el('td', r.reviewSince ? badge('review', 'review') : ''),
    el('td', fmtTime(r.createdAt))));
  const pager = el('div.pager',
    el('button.secondary#page-first', { type: 'button', disabled: !refundsState.cursors.length,
      onClick: () => { refundsState.cursors = []; route(); } }, 'First page'),
    el('button.secondary#page-prev', { type: 'button', disabled: !refundsState.cursors.length,
      onClick: () => { refundsState.cursors.pop(); route(); } }, 'Previous'),
    el('span.muted', `page ${refundsState.cursors.length + 1}, ${page.items.length} refund(s)`),
    el('button.secondary#page-next', { type: 'button', disabled: !page.nextCursor,
      onClick: () => { refundsState.cursors.push(page.nextCursor); route(); } }, 'Next page'));
  append(list, [
    table(['refundReference', 'provider', 'amount', 'status', 'phase', 'review', 'created'], rows, 'No refund matches.'),
    pager,
  ]);
}

async function viewRefund(root, reference) {
  root.append(el('p', el('a', { href: '#/refunds' }, '← Refunds')));
  const data = await api('GET', `/v1/refunds/${encodeURIComponent(reference)}`);
  renderRefund(root, data);
}

function renderRefund(root, data) {
  const r = data.refund;
  const section = el('div#refund');
  section.append(el('h2', 'Refund ', el('span.ref#refund-reference', r.refundReference), ' ', badge(r.status)));
  if (r.reviewSince) {
    section.append(notice('warn', el('strong', 'In operator review'), ` since ${fmtTime(r.reviewSince)} (${since(r.reviewSince)}): `,
      el('span#review-reason', r.reviewReason || '')));
  }
  section.append(el('div.columns',
    kv([
      ['status', r.status], ['phase', r.phase], ['provider', r.provider],
      ['amount', amount(r)], ['guard source', r.guardSource || 'not recorded'],
      ['transaction reference', r.transactionReference], ['provider reference', r.providerReference],
      ['provider status', r.providerStatus],
      ['provider fee', r.providerFee ? `${r.providerFee} ${r.providerFeeCurrency || ''}` : null],
    ]),
    kv([
      ['failure', r.failureCode ? `${r.failureCode}: ${r.failureMessage || ''}` : null],
      ['submits / failures / polls', `${r.attempts} / ${r.failures} / ${r.polls}`],
      ['next look', fmtTime(r.nextAttemptAt)], ['created', fmtTime(r.createdAt)],
      ['updated', fmtTime(r.updatedAt)], ['finished', fmtTime(r.finishedAt)],
      ['review', r.reviewSince ? `since ${fmtTime(r.reviewSince)}: ${r.reviewReason || ''}` : 'no'],
    ])));
  if (r.reviewSince) section.append(reviewActions(r));

  // One timeline: status transitions, provider calls and merchant webhook deliveries.
  const items = [];
  for (const t of data.transitions || []) {
    items.push({ at: t.occurredAt, kind: 'transition', what: `${t.fromStatus || '∅'} → ${t.toStatus}`,
      cause: t.cause, detail: t.detail || '' });
  }
  for (const a of data.attempts || []) {
    items.push({ at: a.startedAt, kind: 'provider call', what: `${a.call}: ${a.outcome}`,
      cause: `${a.latencyMs} ms`, detail: a.detail || '' });
  }
  for (const d of data.deliveries || []) {
    const last = d.lastStatusCode ? `HTTP ${d.lastStatusCode}` : '';
    items.push({ at: d.createdAt, kind: 'merchant webhook', what: `${d.eventStatus}: ${d.state}`,
      cause: `${d.attempts} attempt(s) ${last}`.trim(),
      detail: [d.url, d.lastError, d.deliveredAt ? `delivered ${fmtTime(d.deliveredAt)}` : ''].filter(Boolean).join(' · ') });
  }
  items.sort((a, b) => new Date(a.at) - new Date(b.at));
  section.append(el('h3', 'Timeline'),
    table(['when', 'kind', 'what', 'cause / outcome', 'detail'],
      items.map((i) => el('tr', { class: `kind-${i.kind.replace(/ /g, '-')}` },
        el('td.nowrap', fmtTime(i.at)), el('td', i.kind), el('td', i.what), el('td', i.cause), el('td.detail', i.detail))),
      'No history recorded.'));
  root.append(section);
}

function reviewActions(r) {
  const out = el('div#review-actions.panel');
  const result = el('div#action-result');
  const recheck = el('button#recheck', { type: 'button' }, 'Recheck now');
  recheck.addEventListener('click', async () => {
    recheck.disabled = true;
    clear(result).append(notice('info', 'Rechecking…'));
    try {
      const view = await api('POST', `/v1/refunds/${encodeURIComponent(r.refundReference)}/recheck`, { reason: 'recheck from the operations console' });
      const text = `Rechecked: status ${view.refund ? view.refund.status : '?'}, phase ${view.refund ? view.refund.phase : '?'}.`;
      // Show the refund as it is now, with the answer on top.
      await route();
      ($('action-result') || $('view')).append(notice('ok', el('span#recheck-result', text)));
    } catch (e) {
      if (!(e instanceof Unauthorized)) clear(result).append(notice('error', `Recheck refused: ${errorText(e)}`));
    } finally {
      recheck.disabled = false;
    }
  });
  const status = el('select#resolve-status', { name: 'status' },
    el('option', { value: '' }, 'choose…'), el('option', { value: 'COMPLETED' }, 'COMPLETED'),
    el('option', { value: 'REFUND_FAIL' }, 'REFUND_FAIL'));
  const reason = el('textarea#resolve-reason', { name: 'reason', rows: 2, placeholder: 'why (kept with the refund and in its event)' });
  const providerRef = el('input#resolve-provider-reference', { type: 'text', placeholder: 'provider reference (optional)' });
  const confirmBox = el('div#resolve-confirm', { hidden: true });
  const form = el('form#resolve-form', { autocomplete: 'off' },
    el('label', 'final status ', status), el('label', 'reason ', reason), el('label', providerRef),
    el('button#resolve', { type: 'submit' }, 'Resolve…'));
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!status.value || !reason.value.trim()) {
      clear(result).append(notice('error', 'Choose a final status and give a reason.'));
      return;
    }
    clear(result);
    const body = { status: status.value, reason: reason.value.trim() };
    if (providerRef.value.trim()) body.providerReference = providerRef.value.trim();
    const yes = el('button#resolve-confirm-yes.danger', { type: 'button' }, `Confirm: resolve as ${body.status}`);
    const no = el('button#resolve-confirm-no.secondary', { type: 'button' }, 'Cancel');
    clear(confirmBox).append(notice('warn',
      `Resolve ${r.refundReference} as ${body.status} with the reason “${body.reason}”? This publishes a final status event and cannot be undone.`),
    yes, ' ', no);
    confirmBox.hidden = false;
    no.addEventListener('click', () => { confirmBox.hidden = true; });
    yes.addEventListener('click', async () => {
      yes.disabled = true;
      try {
        const answer = await api('POST', `/v1/refunds/${encodeURIComponent(r.refundReference)}/resolve`, body);
        confirmBox.hidden = true;
        const what = answer.event ? `final event ${answer.event.status} (${answer.event.eventId})` : 'acknowledged';
        await route();
        const top = $('refund') || $('view');
        top.insertBefore(notice('ok', el('span#resolve-result', `Resolved: ${what}.`)), top.children[1] || null);
      } catch (err) {
        if (!(err instanceof Unauthorized)) clear(result).append(notice('error', `Resolve refused: ${errorText(err)}`));
        yes.disabled = false;
      }
    });
  });
  out.append(el('h3', 'Review actions'),
    el('p.muted', 'Recheck runs the refund\'s next provider step now. Resolve settles it by hand with a final status.'),
    recheck, form, confirmBox, result);
  return out;
}

// ---- review queue -------------------------------------------------------------------

async function viewReview(root) {
  root.append(el('h2', 'Review queue'), el('p.muted', 'Refunds flagged for an operator, oldest first.'));
  const items = [];
  let cursor;
  for (let i = 0; i < 10; i += 1) {
    const page = await api('GET', `/v1/refunds${query({ review: 'true', limit: 500, cursor })}`);
    items.push(...page.items);
    if (!page.nextCursor) break;
    cursor = page.nextCursor;
  }
  items.sort((a, b) => new Date(a.reviewSince) - new Date(b.reviewSince));
  root.append(el('p', `${items.length} refund(s) in review.`),
    table(['refundReference', 'provider', 'amount', 'status', 'reason', 'in review since', 'waited'],
      items.map((r) => el('tr', { dataset: { ref: r.refundReference } },
        el('td', refundLink(r.refundReference)), el('td', r.provider || '-'), el('td.num', amount(r)),
        el('td', badge(r.status)), el('td', r.reviewReason || ''), el('td.nowrap', fmtTime(r.reviewSince)),
        el('td.nowrap', since(r.reviewSince)))),
      'No refund is waiting for review.'));
}

// ---- dead letters -------------------------------------------------------------------

// The queues' names may carry AMQP_NAME_PREFIX: take them from /metrics' queue depths when
// the worker reports exactly one of each, else the unprefixed names; the field is editable,
// with every name /metrics knows as a suggestion (a 404 also names the worker's queues).
async function dlqNames() {
  let queues = [];
  try {
    queues = (await fetchMetrics()).filter((s) => s.name === 'refund_worker_queue_depth')
      .map((s) => s.labels.queue);
  } catch {
    queues = [];
  }
  return DLQS.map((base) => {
    const found = queues.filter((q) => q === base || q.endsWith(`.${base}`)).sort();
    return { name: found.length === 1 ? found[0] : base, candidates: found };
  });
}

async function viewDlq(root) {
  root.append(el('h2', 'Dead letters'),
    el('p.muted', 'Messages the worker could not process. Replay sends them back where they came from; a dry run shows what would be replayed first.'));
  const names = await dlqNames();
  for (const [i, { name, candidates }] of names.entries()) {
    const box = el(`section.dlq#dlq-${i}`);
    root.append(box);
    await renderDlq(box, i, name, candidates);
  }
}

async function renderDlq(box, i, name, candidates = []) {
  clear(box);
  const nameInput = el(`input#dlq-name-${i}.queue-name`, { type: 'text', value: name, size: 40, list: `dlq-names-${i}` });
  const suggestions = el(`datalist#dlq-names-${i}`, candidates.map((q) => el('option', { value: q })));
  const load = el(`form#dlq-load-${i}.inline`, el('label', 'queue ', nameInput), suggestions,
    el('button.secondary', { type: 'submit' }, 'Load'));
  load.addEventListener('submit', (e) => { e.preventDefault(); renderDlq(box, i, nameInput.value.trim(), candidates); });
  box.append(el('h3', DLQS[i]), load);
  const list = el('div.dlq-list');
  const result = el(`div#dlq-result-${i}.result`);
  box.append(list);
  let data;
  try {
    data = await api('GET', `/v1/dlq/${encodeURIComponent(name)}?limit=100`);
  } catch (e) {
    if (e instanceof Unauthorized) return;
    list.append(notice('error', errorText(e)));
    return;
  }
  const replay = async (filter, label) => {
    clear(result).append(notice('info', `Dry run: ${label}…`));
    try {
      const dry = await api('POST', `/v1/dlq/${encodeURIComponent(name)}/replay`, { ...filter, dryRun: true });
      const go = el(`button#dlq-replay-confirm-${i}.danger`, { type: 'button', disabled: !dry.matched }, `Replay ${dry.matched} message(s)`);
      const cancel = el('button.secondary', { type: 'button' }, 'Cancel');
      clear(result).append(notice('warn', el('span.dry-run', `Dry run: ${dry.examined} examined, ${dry.matched} would be replayed.`)),
        dry.messages.length ? table(['#', 'reason'], dry.messages.map((m) => el('tr', el('td', m.position), el('td', m.reason || '')))) : null,
        go, ' ', cancel);
      cancel.addEventListener('click', () => clear(result));
      go.addEventListener('click', async () => {
        go.disabled = true;
        try {
          const done = await api('POST', `/v1/dlq/${encodeURIComponent(name)}/replay`, { ...filter, dryRun: false });
          await renderDlq(box, i, name, candidates);
          box.append(notice(done.failed ? 'error' : 'ok', el(`span#dlq-replayed-${i}`,
            `Replayed ${done.replayed} of ${done.matched} matched (${done.failed} failed).`)));
        } catch (err) {
          if (!(err instanceof Unauthorized)) clear(result).append(notice('error', `Replay failed: ${errorText(err)}`));
        }
      });
    } catch (e) {
      if (!(e instanceof Unauthorized)) clear(result).append(notice('error', `Dry run failed: ${errorText(e)}`));
    }
  };
  const reasonInput = el(`input#dlq-reason-${i}`, { type: 'search', placeholder: 'reason contains…' });
  const bulk = el(`form#dlq-bulk-${i}.inline`,
    el('label', 'replay messages whose reason contains ', reasonInput),
    el('button', { type: 'submit' }, 'Dry run'),
    el(`button#dlq-replay-all-${i}.secondary`, { type: 'button', disabled: !data.items.length,
      onClick: () => replay({ all: true }, 'every message') }, 'Dry run: all'));
  bulk.addEventListener('submit', (e) => {
    e.preventDefault();
    const text = reasonInput.value.trim();
    if (text) replay({ reasonContains: text }, `reason contains “${text}”`);
  });
  list.append(el('p', `${data.depth} message(s) in ${data.queue}${data.items.length < data.depth ? `, first ${data.items.length} shown` : ''}.`),
    table(['#', 'reason', 'id', 'replayed', 'body', ''],
      data.items.map((m) => el('tr', { dataset: { position: m.position } },
        el('td', m.position), el('td', m.reason || ''), el('td.mono', m.id || m.messageId || ''), el('td.num', m.replayed),
        el('td', el('pre.body', m.body)),
        el('td', el('button.secondary.replay-one', { type: 'button',
          // By its stable id (positions shift as messages are replayed).
          onClick: () => replay(m.id ? { messageId: m.id } : { position: m.position }, `message ${m.id || m.position}`) }, 'Replay…')))),
      'The queue is empty.'),
    bulk, result);
}

// ---- merchant webhooks --------------------------------------------------------------

async function viewWebhooks(root) {
  root.append(el('h2', 'Merchant webhooks'), el('p.muted', 'Deliveries that used up their retries. Resending queues them again for a new round.'));
  const result = el('div#webhook-result.result');
  const resend = async (body, label) => {
    clear(result).append(notice('info', `Resending ${label}…`));
    try {
      const r = await api('POST', '/v1/webhooks/resend', body);
      clear(result).append(notice('ok', el('span#webhook-resent', `Queued ${r.queued} delivery(ies) again.`)));
      await drawList();
    } catch (e) {
      if (!(e instanceof Unauthorized)) clear(result).append(notice('error', `Resend refused: ${errorText(e)}`));
    }
  };
  const sinceInput = el('input#w-since', { type: 'datetime-local' });
  const untilInput = el('input#w-until', { type: 'datetime-local' });
  const windowForm = el('form#webhook-window.inline', { autocomplete: 'off' },
    el('label', 'resend every failed delivery queued since ', sinceInput), el('label', ' until ', untilInput),
    el('button', { type: 'submit' }, 'Resend window'));
  windowForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const body = {};
    if (sinceInput.value) body.since = toIso(sinceInput.value);
    if (untilInput.value) body.until = toIso(untilInput.value);
    if (!body.since && !body.until) {
      clear(result).append(notice('error', 'Give a start or an end of the window.'));
      return;
    }
    resend(body, 'the window');
  });
  const list = el('div#webhook-list');
  root.append(windowForm, result, list);
  const drawList = async () => {
    const data = await api('GET', '/v1/webhooks/failed?limit=500');
    clear(list).append(el('p', `${data.items.length}${data.truncated ? ' (more not shown)' : ''} failed delivery(ies).`),
      table(['queued', 'refund', 'event', 'status', 'url', 'attempts', 'last answer', ''],
        data.items.map((d) => el('tr', { dataset: { event: d.eventId } },
          el('td.nowrap', fmtTime(d.createdAt)), el('td', refundLink(d.refundReference)), el('td.mono', d.eventId),
          el('td', d.eventStatus), el('td.detail', d.url), el('td.num', d.attempts),
          el('td.detail', [d.lastStatusCode ? `HTTP ${d.lastStatusCode}` : '', d.lastError || ''].filter(Boolean).join(' · ')),
          el('td', el('button.secondary.resend-one', { type: 'button', onClick: () => resend({ eventIds: [d.eventId] }, `event ${d.eventId}`) }, 'Resend')))),
        'No failed delivery.'));
  };
  await drawList();
}

// ---- provider webhooks --------------------------------------------------------------

async function viewProviderWebhooks(root) {
  root.append(el('h2', 'Provider webhooks'),
    el('p.muted', 'Notifications from providers an operator must look at: parked (refund not known yet), unmatched, contradicting a final status.'));
  for (const state of INBOX_STATES) {
    const data = await api('GET', `/v1/provider-webhooks${query({ state, limit: 500 })}`);
    root.append(el(`section#inbox-${state}`, el('h3', `${state} (${data.items.length})`),
      table(['received', 'provider', 'key', 'refund', 'detail', 'tries', 'body'],
        data.items.map((w) => el('tr',
          el('td.nowrap', fmtTime(w.receivedAt)), el('td', w.provider), el('td.mono', `${w.eventKey}#${w.part}`),
          el('td', w.refundReference ? refundLink(w.refundReference) : '-'), el('td', w.detail || ''),
          el('td.num', w.parkAttempts), el('td', el('details', el('summary', 'body'), el('pre.body', w.body))))),
        `No ${state} provider webhook.`)));
  }
}

// ---- start --------------------------------------------------------------------------

function start() {
  $('login-form').addEventListener('submit', login);
  $('logout').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin('Token forgotten.');
  });
  window.addEventListener('hashchange', route);
  route();
}

start();
