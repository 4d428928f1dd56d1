// Scenario 5: client events between browsers (Echo whisper / listenForWhisper).
// argv: USER_ID CHANNEL. Joins Echo.private(CHANNEL), reports `subscribed` and every `typing`
// whisper received. stdin: {"cmd": "whisper", "data": {...}} whispers `typing` with that data;
// {"cmd": "quit"} disconnects and exits.
import { connectEcho, emit, finish, onCommand } from './lib.mjs';

const [userId, channelName] = process.argv.slice(2);
const echo = connectEcho(userId);
const channel = echo
  .private(channelName)
  .subscribed(() => emit('subscribed', { channel: `private-${channelName}` }))
  .error((error) => emit('subscription_error', { error }))
  .listenForWhisper('typing', (data) => emit('whisper', { data }));

onCommand((command) => {
  if (command.cmd === 'whisper') {
    channel.whisper('typing', command.data);
    emit('whispered', { data: command.data });
  } else if (command.cmd === 'quit') {
    finish(echo.connector.pusher);
  }
});
