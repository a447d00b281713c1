/**
 * The seeder board of a region (sans-IO): how a mount that holds chunks
 * tells other mounts how to reach it through the DHT.
 *
 * BEP5 under the region's topic (`topicFor`) says only "host:port", and
 * every quicmap dial names the key it expects, so a seeder also leaves a
 * BEP44 mutable item per address it listens on:
 *
 *   key  = the board key: an Ed25519 key pair derived from the region
 *          (SHA-256 of a domain tag, the sharer's key and the region id), so
 *          anyone who holds a ticket of the region can find and write the
 *          board, and nobody else (DHT nodes see neither the region id nor
 *          the sharer's key: the target is SHA-1(boardKey ‖ salt))
 *   salt = "seed " + host:port (the address the BEP5 announce names)
 *   v    = 24-byte nonce ‖ secretbox(msgpack [1, seedTicket]) under a box
 *          key derived the same way: the seeder's own read-only ticket for
 *          its copy, readable only by holders of a region ticket (a DHT
 *          node storing the item learns nothing it could mount)
 *
 * Trust: none is needed. The ticket only says where to dial; every chunk a
 * seeder sends is checked against the owner's signed chunk-hash list, and a
 * forged board item at worst points at a liar, which gets banned.
 */
import { createHash } from 'node:crypto';
import sodium from 'libsodium-wrappers';
import { Packr } from 'msgpackr';
import { QuicmapError } from '../../base/errors.ts';
import { MAX_RECORD_VALUE } from './record.ts';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false });
const BOARD_DOMAIN = 'quicmap-seed-board-v1\0';
const BOX_DOMAIN = 'quicmap-seed-box-v1\0';
export const SEED_VALUE_VERSION = 1;

export interface SeedBoard {
  publicKey: Uint8Array;
  secretKey: Uint8Array;
  /** secretbox key for the item values. */
  boxKey: Uint8Array;
}

function derive(domain: string, sharer: Uint8Array, regionId: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(domain).update(sharer).update(regionId).digest());
}

/** The board of one region (call `recordReady` from record.ts once first: libsodium). */
export function seedBoard(sharer: Uint8Array, regionId: Uint8Array): SeedBoard {
  const kp = sodium.crypto_sign_seed_keypair(derive(BOARD_DOMAIN, sharer, regionId));
  return { publicKey: kp.publicKey, secretKey: kp.privateKey, boxKey: derive(BOX_DOMAIN, sharer, regionId) };
}

/** The BEP44 salt of a seeder's item: the address its BEP5 announce names (≤ 64 bytes). */
export function seedSalt(hostPort: string): Uint8Array {
  const salt = Buffer.from(`seed ${hostPort}`);
  if (salt.length > 64) throw new QuicmapError('EINVAL', `seeder address "${hostPort}" is too long for a BEP44 salt`);
  return salt;
}

export function sealSeedValue(board: SeedBoard, ticket: string): Uint8Array {
  const nonce = sodium.randombytes_buf(sodium.crypto_secretbox_NONCEBYTES);
  const box = sodium.crypto_secretbox_easy(packr.pack([SEED_VALUE_VERSION, ticket]), nonce, board.boxKey);
  const v = Buffer.concat([nonce, box]);
  if (v.length > MAX_RECORD_VALUE) throw new QuicmapError('EOVERFLOW', `seeder item of ${v.length} bytes exceeds BEP44's ${MAX_RECORD_VALUE} (a ticket with too many endpoints)`);
  return v;
}

/** The seed ticket in an item; EPROTO when it was not sealed with this board's key or is malformed. */
export function openSeedValue(board: SeedBoard, v: Uint8Array): string {
  const n = sodium.crypto_secretbox_NONCEBYTES;
  if (v.length <= n + sodium.crypto_secretbox_MACBYTES) throw new QuicmapError('EPROTO', 'seeder item too short');
  let plain: Uint8Array;
  try {
    plain = sodium.crypto_secretbox_open_easy(v.subarray(n), v.subarray(0, n), board.boxKey);
  } catch {
    throw new QuicmapError('EPROTO', 'seeder item not sealed for this region');
  }
  let a: unknown;
  try {
    a = packr.unpack(plain);
  } catch {
    throw new QuicmapError('EPROTO', 'seeder item is not msgpack');
  }
  if (!Array.isArray(a) || a[0] !== SEED_VALUE_VERSION || typeof a[1] !== 'string' || a[1].length > 2000) throw new QuicmapError('EPROTO', 'seeder item has an unknown layout');
  return a[1];
}
