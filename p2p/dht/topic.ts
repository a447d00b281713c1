/**
 * Where a region lives in the DHT. Two 20-byte keys, both derived from the
 * region id and the sharer's key, so nobody can squat another sharer's
 * region and two sharers of the same region id do not collide:
 *
 * - the BEP5 topic (info_hash): sharer and seeders announce their port
 *   under it; `topicFor` is SHA-1 over a domain tag, the sharer key and the
 *   region id.
 * - the BEP44 mutable record: key = the sharer's Ed25519 key, salt = the
 *   region id; its DHT target is SHA-1(key || salt) (BEP44), `recordTarget`.
 */
import { createHash } from 'node:crypto';

const TOPIC_DOMAIN = 'quicmap-topic-v1\0';

export function topicFor(regionId: Uint8Array, sharer: Uint8Array): Buffer {
  return createHash('sha1').update(TOPIC_DOMAIN).update(sharer).update(regionId).digest();
}

export function recordTarget(sharer: Uint8Array, regionId: Uint8Array): Buffer {
  return createHash('sha1').update(sharer).update(regionId).digest();
}
