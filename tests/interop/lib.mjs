// Shared plumbing for the interop client scripts.
//
// Every script talks to pytest the same way: configuration comes from the environment, results go
// to stdout as one JSON object per line ({"type": ..., ...}), commands come from stdin as JSON
// lines, and the process always exits by itself: on `finish()`, when stdin closes (pytest went
// away), or when the hard timeout fires (exit code 3), so a wedged server can never hang the suite.
import { createInterface } from 'node:readline';
import Echo from 'laravel-echo';
import Pusher from 'pusher-js';

function required(name) {
  const value = process.env[name];
  if (!value) {
    process.stderr.write(`missing environment variable ${name}\n`);
    process.exit(2);
  }
  return value;
}

const config = {
  host: required('INTEROP_HOST'),
  port: Number(required('INTEROP_PORT')),
  key: required('INTEROP_KEY'),
  authUrl: required('INTEROP_AUTH_URL'),
  timeoutMs: Number(process.env.INTEROP_TIMEOUT_MS || 15000),
};

/** Prints one result line for pytest. */
export function emit(type, fields = {}) {
  process.stdout.write(`${JSON.stringify({ type, ...fields })}\n`);
}

const hardTimeout = setTimeout(() => {
  emit('timeout', { after_ms: config.timeoutMs });
  process.exit(3);
}, config.timeoutMs);

/** Disconnects cleanly (a WebSocket close, as a closing browser tab sends) and exits 0. */
export function finish(pusher) {
  clearTimeout(hardTimeout);
  emit('finished');
  if (pusher) {
    pusher.disconnect();
  }
  // Give the close frame a moment to leave the socket before the process goes away.
  setTimeout(() => process.exit(0), 100);
}

/** Runs `handler(command)` for each JSON line on stdin; stdin closing ends the script. */
export function onCommand(handler) {
  const lines = createInterface({ input: process.stdin });
  lines.on('line', (line) => {
    if (line.trim()) {
      handler(JSON.parse(line));
    }
  });
  lines.on('close', () => process.exit(0));
}

/**
 * Reports every protocol frame and connection state the client sees, so that a failing test can
 * show exactly what went over the wire.
 */
function trace(pusher) {
  pusher.connection.bind('state_change', ({ previous, current }) =>
    emit('state', { previous, current, socket_id: pusher.connection.socket_id ?? null }),
  );
  pusher.connection.bind('message', (frame) => emit('frame', { frame }));
  pusher.connection.bind('error', (error) =>
    emit('connection_error', { error: JSON.parse(JSON.stringify(error ?? null)) }),
  );
}

/** Options a pusher-js app passes for a self-hosted server (no cluster, plain ws://). */
function clientOptions(bearerToken) {
  const headers = bearerToken ? { Authorization: `Bearer ${bearerToken}` } : {};
  return {
    cluster: '',
    wsHost: config.host,
    wsPort: config.port,
    wssPort: config.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: `${config.authUrl}/broadcasting/auth`, headers },
    userAuthentication: { endpoint: `${config.authUrl}/broadcasting/user-auth`, headers },
  };
}

/** A pusher-js client, already traced. */
export function connectPusher(bearerToken) {
  const pusher = new Pusher(config.key, clientOptions(bearerToken));
  trace(pusher);
  return pusher;
}

/**
 * A Laravel Echo instance configured the way Laravel's `install:broadcasting` scaffolding does for
 * Reverb, with a Sanctum-style bearer token telling the auth endpoint who this user is.
 */
export function connectEcho(bearerToken) {
  const echo = new Echo({
    broadcaster: 'reverb',
    key: config.key,
    wsHost: config.host,
    wsPort: config.port,
    wssPort: config.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    Pusher,
    authEndpoint: `${config.authUrl}/broadcasting/auth`,
    // Echo's default `auth` object is shared between instances; give each its own.
    auth: { headers: {} },
    userAuthentication: { endpoint: `${config.authUrl}/broadcasting/user-auth`, headers: {} },
    bearerToken,
  });
  trace(echo.connector.pusher);
  return echo;
}
