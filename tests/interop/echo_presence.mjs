// Scenario 4: one member of the presence channel `presence-room` (Echo.join('room')).
// argv: USER_ID. Reports `here` (the roster), each `joining` and `leaving`, and each `.barrier`
// event (which pytest triggers to know that everything sent before it has arrived).
// stdin: {"cmd": "quit"} leaves by disconnecting, as a closed browser tab does.
import { connectEcho, emit, finish, onCommand } from './lib.mjs';

const [userId] = process.argv.slice(2);
const echo = connectEcho(userId);

echo
  .join('room')
  .here((members) => emit('here', { members }))
  .joining((member) => emit('joining', { member }))
  .leaving((member) => emit('leaving', { member }))
  .error((error) => emit('subscription_error', { error }))
  .listen('.barrier', (data) => emit('barrier', { data }));

onCommand((command) => {
  if (command.cmd === 'quit') {
    finish(echo.connector.pusher);
  }
});
