// Scenario 3: two private channels whose authorization goes wrong, then one that works.
// argv: USER_ID. Echo subscribes to private-refused-alerts (the auth endpoint answers 403) and to
// private-forged-alerts (the endpoint answers a signature made with the wrong secret) and reports
// each `.error()` callback. Once both have fired it subscribes to private-security-dashboard on the
// same connection and finishes on the first alert received there.
import { connectEcho, emit, finish } from './lib.mjs';

const [userId] = process.argv.slice(2);
const echo = connectEcho(userId);
const failed = new Set();

function watch(name) {
  echo
    .private(name)
    .subscribed(() => emit('subscribed', { channel: `private-${name}` }))
    .error((error) => {
      emit('subscription_error', { channel: `private-${name}`, error });
      failed.add(name);
      if (failed.size === 2) {
        subscribeDashboard();
      }
    });
}

function subscribeDashboard() {
  echo
    .private('security-dashboard')
    .subscribed(() => emit('subscribed', { channel: 'private-security-dashboard' }))
    .error((error) => emit('subscription_error', { channel: 'private-security-dashboard', error }))
    .listen('.panic-alert.triggered', (alert) => {
      emit('alert', { data: alert, socket_id: echo.socketId() });
      finish(echo.connector.pusher);
    });
}

watch('refused-alerts');
watch('forged-alerts');
