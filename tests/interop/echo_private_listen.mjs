// Scenario 2: the dashboard of the panic-alert app, as its Laravel front end writes it.
// argv: USER_ID. On Echo.private('security-dashboard') listens both to '.panic-alert.triggered'
// (an event with broadcastAs) and to 'PanicAlertResolved' (Echo's default App.Events namespace,
// i.e. the event name `App\Events\PanicAlertResolved`). Reports `subscribed`, then each alert as
// `alert` with the name it was listened for, and finishes once both have arrived.
import { connectEcho, emit, finish } from './lib.mjs';

const [userId] = process.argv.slice(2);
const echo = connectEcho(userId);
const names = ['.panic-alert.triggered', 'PanicAlertResolved'];
const seen = new Set();
const channel = echo
  .private('security-dashboard')
  .subscribed(() => emit('subscribed', { channel: 'private-security-dashboard' }))
  .error((error) => emit('subscription_error', { channel: 'private-security-dashboard', error }));

for (const name of names) {
  channel.listen(name, (alert) => {
    emit('alert', { listened: name, data: alert });
    seen.add(name);
    if (seen.size === names.length) {
      finish(echo.connector.pusher);
    }
  });
}
