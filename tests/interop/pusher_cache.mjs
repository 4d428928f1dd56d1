// Scenario 8: a cache channel (cache-*), whose last event is replayed to new subscribers.
// argv: CHANNEL EVENT. pusher-js subscribes, reports `subscribed`, `cache_miss` if the server had
// nothing cached, and finishes on the first EVENT received.
import { connectPusher, emit, finish } from './lib.mjs';

const [channelName, eventName] = process.argv.slice(2);
const pusher = connectPusher();
const channel = pusher.subscribe(channelName);

channel.bind('pusher:subscription_succeeded', () => emit('subscribed', { channel: channelName }));
channel.bind('pusher:subscription_error', (error) => emit('subscription_error', { error }));
channel.bind('pusher:cache_miss', () => emit('cache_miss', { channel: channelName }));
channel.bind(eventName, (data) => {
  emit('event', { channel: channelName, event: eventName, data });
  finish(pusher);
});
