// Subscription count: pusher-js subscribes to a public channel and reports every
// pusher:subscription_count it re-emits, with its own channel.subscriptionCount.
// argv: CHANNEL. Reports `subscribed`, then `count` lines. stdin: {"cmd": "quit"} disconnects.
import { connectPusher, emit, finish, onCommand } from './lib.mjs';

const [channelName] = process.argv.slice(2);
const pusher = connectPusher();
const channel = pusher.subscribe(channelName);
channel.bind('pusher:subscription_succeeded', () => emit('subscribed'));
channel.bind('pusher:subscription_count', (data) =>
  emit('count', { count: data.subscription_count, channel_count: channel.subscriptionCount }),
);

onCommand((command) => {
  if (command.cmd === 'quit') {
    finish(pusher);
  }
});
