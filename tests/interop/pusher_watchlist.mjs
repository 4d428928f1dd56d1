// Watchlist events: pusher-js signs in (the backend puts a watchlist in user_data) and reports
// every event pusher.user.watchlist emits. argv: USER_ID. Reports `signed_in`, then `watchlist`
// lines ({name, user_ids}). stdin: {"cmd": "quit"} disconnects.
import { connectPusher, emit, finish, onCommand } from './lib.mjs';

const [userId] = process.argv.slice(2);
const pusher = connectPusher(userId);
pusher.connection.bind('message', (frame) => {
  if (frame.event === 'pusher:signin_success') {
    emit('signed_in');
  }
});
for (const name of ['online', 'offline']) {
  pusher.user.watchlist.bind(name, (event) =>
    emit('watchlist', { name: event.name, user_ids: event.user_ids }),
  );
}
pusher.signin();

onCommand((command) => {
  if (command.cmd === 'quit') {
    finish(pusher);
  }
});
