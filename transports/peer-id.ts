/**
 * libp2p peer ids for Ed25519 keys, as the QUIC layer reports them
 * ("12D3KooW..."): base58btc of an identity multihash whose digest is the
 * protobuf-encoded public key. We only need to go from id to key and back
 * for Ed25519, so this is written out here rather than pulling in
 * multiformats.
 */
const B58 = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
// multihash identity (0x00), length 36, then protobuf { Type: Ed25519 (1), Data: 32 bytes }
const PREFIX = Uint8Array.from([0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);

function base58Decode(text: string): Uint8Array | undefined {
  let n = 0n;
  for (const ch of text) {
    const v = B58.indexOf(ch);
    if (v < 0) return undefined;
    n = n * 58n + BigInt(v);
  }
  const bytes: number[] = [];
  while (n > 0n) {
    bytes.push(Number(n & 255n));
    n >>= 8n;
  }
  for (const ch of text) {
    if (ch !== '1') break;
    bytes.push(0);
  }
  return Uint8Array.from(bytes.reverse());
}

function base58Encode(bytes: Uint8Array): string {
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  let out = '';
  while (n > 0n) {
    out = B58[Number(n % 58n)] + out;
    n /= 58n;
  }
  for (const b of bytes) {
    if (b !== 0) break;
    out = '1' + out;
  }
  return out;
}

/** The Ed25519 public key inside a peer id, or undefined if it is not one. */
export function ed25519KeyFromPeerId(peerId: string): Uint8Array | undefined {
  const mh = base58Decode(peerId);
  if (!mh || mh.length !== PREFIX.length + 32) return undefined;
  for (let i = 0; i < PREFIX.length; i++) if (mh[i] !== PREFIX[i]) return undefined;
  return mh.slice(PREFIX.length);
}

export function peerIdFromEd25519Key(publicKey: Uint8Array): string {
  const mh = new Uint8Array(PREFIX.length + 32);
  mh.set(PREFIX);
  mh.set(publicKey, PREFIX.length);
  return base58Encode(mh);
}
