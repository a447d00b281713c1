/**
 * A relay's address as users copy it: "RELAY_ID@HOST:PORT" — the relay's
 * peer id (base32 Ed25519 key, checked in the handshake) and where it listens.
 */
import { QuicmapError } from '../../base/errors.ts';
import { base32Decode, base32Encode } from '../../crypto/identity.ts';

export interface RelayAddress {
  key: Uint8Array;
  /** "host:port" */
  address: string;
}

export function formatRelayAddress(r: RelayAddress): string {
  return `${base32Encode(r.key)}@${r.address}`;
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
  const address = text.slice(at + 1);
  if (!/^(?:\[[^\]]+\]|[^:@\s]+):\d{1,5}$/.test(address)) throw new QuicmapError('EINVAL', `not a relay address: "${text}" (expected HOST:PORT after @)`);
  return { key, address };
}
