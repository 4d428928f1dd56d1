// Scenario 6: user authentication (pusher.signin()) and server-to-user events.
// argv: USER_ID. Signs in through the user-auth endpoint, reports `signed_in` on
// pusher:signin_success, `ready` once the #server-to-user-USER_ID subscription succeeded, and every
// event delivered to the user (pusher.user). stdin: {"cmd": "quit"} disconnects and exits.
import { connectPusher, emit, finish, onCommand } from './lib.mjs';

const [userId] = process.argv.slice(2);
const pusher = connectPusher(userId);

pusher.connection.bind('message', (frame) => {
  if (frame.event === 'pusher:signin_success') {
    emit('signed_in', { user_data: frame.data.user_data });
  } else if (
    frame.event === 'pusher_internal:subscription_succeeded' &&
    frame.channel === `#server-to-user-${userId}`
  ) {
    emit('ready');
  }
});
pusher.user.bind_global((event, data) => emit('user_event', { event, data }));
pusher.signin();

onCommand((command) => {
  if (command.cmd === 'quit') {
    finish(pusher);
  }
});
