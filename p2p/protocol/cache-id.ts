/**
 * Cache IDs: 64 bits that name a cached element *and its origin*, so a
 * reference can travel anywhere in a swarm and whoever holds it knows which
 * node to fetch from, with no lookup table at the target (the clustering
 * seed's "16-bit mount + 24-bit machine + 24-bit cache line", reordered so
 * the origin comes first):
 *
 *   63..40  machine  24 bits of SHA-256("quicmap cache machine\0" ‖ node key)
 *   39..24  slot     16 bits: which of the origin's regions / caches
 *   23..0   line     24 bits: the cache line in that slot's table
 *
 * The machine part is derived from the node's Ed25519 key, so nobody
 * assigns it; the peer table (`MachineDirectory`) maps it back to a key and
 * detects the rare collision (2^-24 per pair): a colliding peer's references
 * must then travel with its full key, and `keyOf` refuses to guess.
 *
 * Lines are handed out round-robin, so a line number comes back into use
 * only after 2^24 allocations in that slot; a reference is in any case
 * honoured only while the origin counts it (see cache-refs.ts).
 */
import { createHash } from 'node:crypto';
import { QuicmapError } from '../../base/errors.ts';

export type CacheId = bigint;

export const MACHINE_BITS = 24;
export const SLOT_BITS = 16;
export const LINE_BITS = 24;
export const MAX_SLOT = (1 << SLOT_BITS) - 1;
export const MAX_LINE = (1 << LINE_BITS) - 1;

/** The 24-bit machine part of a node's cache IDs. */
export function machineOf(nodeKey: Uint8Array): number {
  const h = createHash('sha256').update('quicmap cache machine\0').update(nodeKey).digest();
  return (h[0]! << 16) | (h[1]! << 8) | h[2]!;
}

export function makeCacheId(machine: number, slot: number, line: number): CacheId {
  if (!Number.isInteger(machine) || machine < 0 || machine >= 1 << MACHINE_BITS) throw new RangeError(`machine ${machine} out of range`);
  if (!Number.isInteger(slot) || slot < 0 || slot > MAX_SLOT) throw new RangeError(`slot ${slot} out of range`);
  if (!Number.isInteger(line) || line < 0 || line > MAX_LINE) throw new RangeError(`line ${line} out of range`);
  return (BigInt(machine) << 40n) | (BigInt(slot) << 24n) | BigInt(line);
}

export function splitCacheId(id: CacheId): { machine: number; slot: number; line: number } {
  if (typeof id !== 'bigint' || id < 0n || id >= 1n << 64n) throw new QuicmapError('EINVAL', `not a 64-bit cache id: ${String(id)}`);
  return {
    machine: Number(id >> 40n),
    slot: Number((id >> 24n) & 0xffffn),
    line: Number(id & 0xffffffn),
  };
}

export function formatCacheId(id: CacheId): string {
  return id.toString(16).padStart(16, '0');
}

/**
 * Two different node keys this node knows share one machine part: a cache ID
 * with that machine part cannot say which of them issued it. Whoever meets
 * it refuses the reference (and fetches the bytes another way: from the
 * owner, or inline) instead of guessing.
 */
const COLLISION_TEXT = 'cache machine part';

/** A MachineCollisionError, here or as it came back over the wire (a code and a message: the class does not travel). */
export function isMachineCollision(e: unknown): boolean {
  if (e instanceof MachineCollisionError) return true;
  return e instanceof Error && (e as { code?: unknown }).code === 'EINVAL' && new RegExp(`${COLLISION_TEXT} [0-9a-f]{6} is shared by`).test(e.message);
}

export class MachineCollisionError extends QuicmapError {
  readonly machine: number;
  readonly keys: Uint8Array[];
  constructor(machine: number, keys: readonly Uint8Array[]) {
    super(
      'EINVAL',
      `${COLLISION_TEXT} ${machine.toString(16).padStart(6, '0')} is shared by ${keys.length} known nodes (${keys.map((k) => Buffer.from(k).toString('hex').slice(0, 12)).join(', ')}): its references name no single origin`,
    );
    this.machine = machine;
    this.keys = [...keys];
  }
}

/**
 * Machine part → node key, for the peers this node knows. A collision (two
 * known keys with one machine part) is remembered: that machine part no
 * longer names a single node, and `keyOf` answers undefined for it.
 */
export class MachineDirectory {
  private readonly byMachine = new Map<number, Uint8Array>();
  private readonly colliding = new Set<number>();
  /** Every key seen per colliding machine part (for the error). */
  private readonly collided = new Map<number, Uint8Array[]>();
  /** `machineOf` by default; tests force collisions with another. */
  private readonly machineOfKey: (key: Uint8Array) => number;

  constructor(machineOfKey: (key: Uint8Array) => number = machineOf) {
    this.machineOfKey = machineOfKey;
  }

  /** Record a peer; returns its machine part and whether it collides with another known key. */
  add(nodeKey: Uint8Array): { machine: number; collision: boolean } {
    const machine = this.machineOfKey(nodeKey);
    const known = this.byMachine.get(machine);
    if (known && !Buffer.from(known).equals(Buffer.from(nodeKey))) {
      this.colliding.add(machine);
      const seen = this.collided.get(machine) ?? [known];
      if (!seen.some((k) => Buffer.from(k).equals(Buffer.from(nodeKey)))) seen.push(Uint8Array.from(nodeKey));
      this.collided.set(machine, seen);
      return { machine, collision: true };
    }
    if (!this.colliding.has(machine)) this.byMachine.set(machine, Uint8Array.from(nodeKey));
    return { machine, collision: this.colliding.has(machine) };
  }

  /** The node a cache ID names, or undefined when unknown or ambiguous. */
  keyOf(id: CacheId): Uint8Array | undefined {
    const { machine } = splitCacheId(id);
    if (this.colliding.has(machine)) return undefined;
    return this.byMachine.get(machine);
  }

  /** The machine part of `nodeKey` as this directory computes it. */
  machineOf(nodeKey: Uint8Array): number {
    return this.machineOfKey(nodeKey);
  }

  /** The node a cache ID names; throws MachineCollisionError when its machine part is ambiguous, EINVAL when unknown. */
  resolve(id: CacheId): Uint8Array {
    const { machine } = splitCacheId(id);
    if (this.colliding.has(machine)) throw new MachineCollisionError(machine, this.collided.get(machine) ?? []);
    const key = this.byMachine.get(machine);
    if (!key) throw new QuicmapError('EINVAL', `cache id ${formatCacheId(id)} names machine ${machine.toString(16)}, which this node does not know`);
    return key;
  }
}
