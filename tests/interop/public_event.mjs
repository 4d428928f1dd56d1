// Scenario 1: plain pusher-js on a public channel.
// argv: CHANNEL EVENT COUNT. Subscribes, reports `subscribed`, then reports each EVENT received on
// CHANNEL and finishes after COUNT of them.
import { connectPusher, emit, finish } from './lib.mjs';

const [channelName, eventName, count] = process.argv.slice(2);
const pusher = connectPusher();
const channel = pusher.subscribe(channelName);
let received = 0;

channel.bind('pusher:subscription_succeeded', () => emit('subscribed', { channel: channelName }));
channel.bind('pusher:subscription_error', (error) => emit('subscription_error', { error }));
channel.bind(eventName, (data) => {
  emit('event', { channel: channelName, event: eventName, data });
  received += 1;
  if (received === Number(count)) {
    finish(pusher);
  }
});
