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
 * Machine part → node key, for the peers this node knows. A collision (two
 * known keys with one machine part) is remembered: that machine part no
 * longer names a single node, and `keyOf` answers undefined for it.
 */
export class MachineDirectory {
  private readonly byMachine = new Map<number, Uint8Array>();
  private readonly colliding = new Set<number>();

  /** Record a peer; returns its machine part and whether it collides with another known key. */
  add(nodeKey: Uint8Array): { machine: number; collision: boolean } {
    const machine = machineOf(nodeKey);
    const known = this.byMachine.get(machine);
    if (known && !Buffer.from(known).equals(Buffer.from(nodeKey))) {
      this.colliding.add(machine);
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
}
