/**
 * A relay's address as users copy it: "RELAY_ID@HOST:PORT" — the relay's
 * peer id (base32 Ed25519 key, checked in the handshake) and where it
 * listens. Inside quicmap an optional "/TAG" (hex, ≤ 32 bytes) names one
 * service of the reserved peer (a region id), see messages.ts.
 */
import { QuicmapError } from '../../base/errors.ts';
import { base32Decode, base32Encode } from '../../crypto/identity.ts';

export interface RelayAddress {
  key: Uint8Array;
  /** "host:port" */
  address: string;
  /** Service tag (empty: none). */
  tag?: Uint8Array;
}

export function formatRelayAddress(r: RelayAddress): string {
  const tag = r.tag && r.tag.length > 0 ? `/${Buffer.from(r.tag).toString('hex')}` : '';
  return `${base32Encode(r.key)}@${r.address}${tag}`;
}

export function parseRelayAddress(text: string): RelayAddress {
  const at = text.indexOf('@');
  if (at <= 0) throw new QuicmapError('EINVAL', `not a relay address: "${text}" (expected RELAY_ID@HOST:PORT, the first line \`quicmap relay\` prints)`);
  let key: Uint8Array;
  try {
    key = base32Decode(text.slice(0, at));
  } catch {
    key = new Uint8Array(0);
  }
  if (key.length !== 32) throw new QuicmapError('EINVAL', `not a relay address: "${text}" (the part before @ must be the relay's 52-character id)`);
  let address = text.slice(at + 1);
  let tag: Uint8Array | undefined;
  const slash = address.indexOf('/');
  if (slash >= 0) {
    const hex = address.slice(slash + 1);
    if (!/^(?:[0-9a-f]{2}){1,32}$/i.test(hex)) throw new QuicmapError('EINVAL', `not a relay address: "${text}" (bad service tag after /)`);
    tag = Uint8Array.from(Buffer.from(hex, 'hex'));
    address = address.slice(0, slash);
  }
  if (!/^(?:\[[^\]]+\]|[^:@\s/]+):\d{1,5}$/.test(address)) throw new QuicmapError('EINVAL', `not a relay address: "${text}" (expected HOST:PORT after @)`);
  return tag ? { key, address, tag } : { key, address };
}
