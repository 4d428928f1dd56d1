// Scenario 7: an end-to-end encrypted channel.
// argv: USER_ID CHANNEL EVENT. pusher-js subscribes to CHANNEL (private-encrypted-...), whose
// authorization carries the per-channel shared_secret; reports `subscribed`, then the first EVENT
// as pusher-js decrypted it, and finishes. (The Node build of pusher-js bundles tweetnacl; the
// `pusher-js/with-encryption` entry point is the same code packaged for browsers only.)
import { connectPusher, emit, finish } from './lib.mjs';

const [userId, channelName, eventName] = process.argv.slice(2);
const pusher = connectPusher(userId);
const channel = pusher.subscribe(channelName);

channel.bind('pusher:subscription_succeeded', () => emit('subscribed', { channel: channelName }));
channel.bind('pusher:subscription_error', (error) => emit('subscription_error', { error }));
channel.bind(eventName, (data) => {
  emit('event', { channel: channelName, event: eventName, data });
  finish(pusher);
});
