// The seed's GlobalSecurityAlertBanner + usePanicAlerts composable, without Vue or a bundler:
// fetch the active alerts once (the polling endpoint, now only a fallback), then keep them current
// from `panic-alert.triggered` / `panic-alert.updated` on private-security-dashboard, show
// "🟢 En vivo" while the socket is connected, and re-fetch after every reconnect to catch up on
// what was broadcast while offline.
'use strict';

const PERMISSION = 'view_panic_alerts';
const ACTIVE = new Set(['triggered', 'acknowledged']);
const STATUS_LABEL = { triggered: 'Activada', acknowledged: 'En atención', resolved: 'Resuelta' };
const USERS = { guard: 'Carlos Rodríguez (vigilante)', resident: 'Juan Pérez (residente)' };

const $ = (id) => document.getElementById(id);
// Wall-clock milliseconds with sub-millisecond precision, comparable with the backend's clock.
const nowMs = () => performance.timeOrigin + performance.now();

// alert_id -> { alert, seq, renderedAt }. `seq` orders socket events against fallback snapshots;
// resolved alerts stay as tombstones so that a stale snapshot cannot bring them back.
const alerts = new Map();
let eventSeq = 0;
let me = null;
let everConnected = false;

function element(tag, props = {}, children = []) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function renderConnection(state) {
  const pill = $('connection');
  const live = state === 'connected';
  everConnected ||= live;
  pill.dataset.state = state;
  pill.dataset.live = String(live);
  pill.dataset.everConnected = String(everConnected);
  if (live) pill.textContent = '🟢 En vivo';
  else if (!everConnected && state === 'connecting') pill.textContent = '⚪ Conectando…';
  else if (state === 'failed') pill.textContent = '🔴 Sin conexión (WebSocket no disponible)';
  else pill.textContent = '🔴 Sin conexión · reconectando…';
}

function renderSubscription(state, text) {
  const line = $('subscription');
  line.dataset.state = state;
  line.textContent = text;
}

async function updateStatus(alertId, status) {
  const res = await fetch(`/api/alerts/${alertId}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ status }),
  });
  if (!res.ok) console.error('status update failed', res.status, await res.text());
  // No local change: the page shows the new status when panic-alert.updated arrives.
}

function alertItem(entry) {
  const a = entry.alert;
  const actions = element('div', { className: 'alert-actions' });
  if (a.status === 'triggered') {
    actions.append(element('button', { type: 'button', className: 'ack', textContent: 'Atender',
      onclick: () => updateStatus(a.alert_id, 'acknowledged') }));
  }
  actions.append(element('button', { type: 'button', className: 'resolve', textContent: 'Resolver',
    onclick: () => updateStatus(a.alert_id, 'resolved') }));
  const when = new Date(a.timestamp).toLocaleTimeString('es-CO');
  const li = element('li', {}, [
    element('div', { className: 'alert-who' }, [
      `🚨 ${a.user.name}`,
      element('span', { className: `badge ${a.status}`, textContent: STATUS_LABEL[a.status] }),
    ]),
    actions,
    element('div', { className: 'alert-where', textContent: `${a.apartment.address} · ${a.location.string}` }),
    element('div', { className: 'alert-when', textContent: `${when} · ${a.time_ago}` }),
  ]);
  li.dataset.alertId = a.alert_id;
  li.dataset.status = a.status;
  if (entry.renderedAt) li.dataset.renderedAt = entry.renderedAt.toFixed(3);
  return li;
}

function renderAlerts() {
  const active = [...alerts.values()]
    .filter((entry) => ACTIVE.has(entry.alert.status))
    .sort((x, y) => y.alert.timestamp.localeCompare(x.alert.timestamp));
  const banner = $('alerts-banner');
  banner.classList.toggle('alarm', active.length > 0);
  banner.classList.toggle('calm', active.length === 0);
  $('alerts-title').textContent = active.length === 0
    ? '✅ Sin alertas de pánico activas'
    : `🚨 ${active.length} ${active.length === 1 ? 'alerta de pánico activa' : 'alertas de pánico activas'}`;
  $('alerts').replaceChildren(...active.map(alertItem));
}

function applyEvent(alert) {
  eventSeq += 1;
  const entry = { alert, seq: eventSeq, renderedAt: null };
  alerts.set(alert.alert_id, entry);
  renderAlerts();
  // Stamped once the DOM holds the new state; the browser test reads it for the latency figure.
  entry.renderedAt = nowMs();
  const li = document.querySelector(`#alerts li[data-alert-id="${alert.alert_id}"]`);
  if (li) li.dataset.renderedAt = entry.renderedAt.toFixed(3);
}

async function refreshActive() {
  const startedSeq = eventSeq;
  const res = await fetch('/api/security/alerts/active', { headers: { Accept: 'application/json' } });
  if (!res.ok) {
    console.error('fallback fetch failed', res.status);
    return;
  }
  const { data } = await res.json();
  const fresh = new Map(data.map((a) => [a.alert_id, a]));
  // Socket events that arrived during the fetch are newer than the snapshot: they win.
  for (const [id, entry] of alerts) {
    if (entry.seq <= startedSeq && !fresh.has(id)) alerts.delete(id);
  }
  for (const a of data) {
    const current = alerts.get(a.alert_id);
    if (!current || current.seq <= startedSeq) {
      alerts.set(a.alert_id, { alert: a, seq: current ? current.seq : 0, renderedAt: current?.renderedAt });
    }
  }
  renderAlerts();
}

function renderSession() {
  const nav = $('session');
  if (!me) {
    nav.replaceChildren('Inicia sesión como:', ...Object.entries(USERS).map(([slug, label]) =>
      element('a', { href: `/login/${slug}`, textContent: label })));
    return;
  }
  nav.replaceChildren(
    `Sesión: ${me.name} (${me.role}) · permisos: ${me.permissions.join(', ') || 'ninguno'} · entrar como:`,
    ...Object.entries(USERS).map(([slug, label]) => element('a', { href: `/login/${slug}`, textContent: label })),
    element('a', { href: '/logout', textContent: 'salir' }),
  );
}

async function raisePanic() {
  const result = $('panic-result');
  const res = await fetch('/api/alerts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
    body: JSON.stringify({ location: 'Calle 123 #45-67' }),
  });
  const body = await res.json();
  result.textContent = res.ok
    ? `Alerta #${body.data.alert_id} enviada${body.broadcast.ok ? '' : ` (sin difundir: ${body.broadcast.error})`}.`
    : `Error ${res.status}: ${body.message}`;
}

async function init() {
  const res = await fetch('/api/me', { headers: { Accept: 'application/json' } });
  me = res.ok ? (await res.json()).data : null;
  renderSession();
  if (!me) {
    renderConnection('disconnected');
    renderSubscription('pending', 'Inicia sesión para suscribirte.');
    return;
  }
  const canView = me.permissions.includes(PERMISSION);
  $('alerts-banner').hidden = !canView;
  $('panic').hidden = false;
  $('panic-button').addEventListener('click', raisePanic);
  if (canView) refreshActive();

  // resources/js/echo.js: broadcaster 'reverb', authEndpoint /broadcasting/auth (session cookie).
  const echo = new Echo.default({ ...window.REVERB_CONFIG });
  const connection = echo.connector.pusher.connection;
  connection.bind('state_change', ({ current }) => {
    const wasConnected = everConnected;
    renderConnection(current);
    if (current !== 'connected') {
      renderSubscription('pending', 'Sin conexión: se volverá a suscribir al reconectar.');
    } else if (wasConnected && canView) {
      refreshActive();
    }
  });
  renderConnection(connection.state);

  echo.private('security-dashboard')
    .subscribed(() => renderSubscription('subscribed',
      '✔ Suscrito: recibiendo panic-alert.triggered y panic-alert.updated.'))
    .error((error) => renderSubscription('refused',
      `✖ Suscripción rechazada (${error.status ?? error.type ?? 'error'}): ` +
      `tu usuario no tiene el permiso ${PERMISSION}.`))
    .listen('.panic-alert.triggered', applyEvent)
    .listen('.panic-alert.updated', applyEvent);
}

init();
