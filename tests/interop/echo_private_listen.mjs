// Scenario 2: the dashboard of the panic-alert app, as its Laravel front end writes it.
// argv: USER_ID. Echo.private('security-dashboard').listen('.panic-alert.triggered', ...), reports
// `subscribed`, then the first alert it receives, and finishes.
import { connectEcho, emit, finish } from './lib.mjs';

const [userId] = process.argv.slice(2);
const echo = connectEcho(userId);

echo
  .private('security-dashboard')
  .subscribed(() => emit('subscribed', { channel: 'private-security-dashboard' }))
  .error((error) => emit('subscription_error', { channel: 'private-security-dashboard', error }))
  .listen('.panic-alert.triggered', (alert) => {
    emit('alert', { data: alert });
    finish(echo.connector.pusher);
  });
