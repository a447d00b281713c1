/**
 * RefPullSource: the managed mount's puller fetching by reference. Before a
 * background run of chunks, it asks the owner where they are held
 * (`ref.locate`, held-chunks.ts); chunks the owner answers with a
 * reference are fetched from their holder directly (`hold.fetch` on a
 * session opened with the owner's delegation), the rest from the owner in
 * one read per adjacent run. Reads a client waits for (urgent) go to the
 * owner at once: a reference costs a round trip more.
 *
 * Trust: a holder's bytes are used only when they match the owner's signed
 * chunk-hash list (`ChunkVerifier`); a chunk that does not, that the holder
 * does not have after all, or that fails to arrive is fetched from the
 * owner instead. A holder whose chunks fail verification `maxStrikes`
 * times is dropped for good and named in `exclude` on later locates.
 *
 * Cache IDs name the holder by their machine part; the answer also names
 * the holder (its grant, inside the delegation). The two must agree, and
 * a machine part that two known holders share (MachineDirectory) names no
 * one: such a reference is refused with `MachineCollisionError` and the
 * chunk comes from the owner — two holders are never confused.
 */
import { QuicmapError } from '../../base/errors.ts';
import { endpointText } from '../../crypto/endpoint.ts';
import { openDelegation } from '../../crypto/delegation.ts';
import { openGrant, type GrantClaims } from '../../crypto/grant.ts';
import { base32Encode, type Identity } from '../../crypto/identity.ts';
import type { ChunkSource } from '../../engine/sync/chunk-source.ts';
import type { ChunkVerifier } from '../../engine/sync/swarm-source.ts';
import type { Transport } from '../../transports/transport.ts';
import { MachineDirectory, MachineCollisionError, machineOf, splitCacheId, type CacheId } from '../protocol/cache-id.ts';
import { PeerDialer } from '../copy/dial.ts';
import { argsOf, hex, idBytes, idOf, list, uint } from '../copy/wire.ts';
import type { RemoteRegion } from '../remote/region.ts';
import { HELD_SLOT, HOLD_FETCH, MAX_LOCATE, REF_LOCATE } from './held-chunks.ts';

export interface RefHolderStatus {
  name: string;
  endpoints: string[];
  chunks: number;
  bytes: number;
  failures: number;
  badChunks: number;
  missing: number;
  banned: boolean;
}

export interface RefPullStats {
  locates: number;
  /** Chunks the owner answered with a reference. */
  referenced: number;
  holderChunks: number;
  holderBytes: number;
  ownerChunks: number;
  ownerBytes: number;
  /** Referenced chunks fetched from the owner after all (bad, missing, failed, collision). */
  fallbacks: number;
  badChunks: number;
  collisions: number;
  /** The owner does not answer ref.locate (an older sharer): everything from it. */
  unsupported: boolean;
}

interface Holder {
  keyHex: string;
  key: Uint8Array;
  name: string;
  delegation: Uint8Array;
  /** The holder's grant inside the delegation: its key, endpoints, seed region. */
  grant: GrantClaims;
  notAfter: number;
  /** When the delegation the open session presents runs out (unix s). */
  sessionNotAfter: number;
  endpoints: string[];
  region?: Promise<RemoteRegion>;
  status: RefHolderStatus;
  strikes: number;
  /** Unreachable or failing: not asked for (and excluded from locates) until then (ms since the epoch). */
  downUntil: number;
  /** Failures in a row (the backoff doubles with each). */
  downs: number;
}

export interface RefPullOptions {
  owner: ChunkSource & { region: RemoteRegion };
  identity: Identity;
  verifier: ChunkVerifier;
  /** Dial holders with this transport (tests: loopback); default: each endpoint's own. */
  transport?: Transport;
  maxStrikes?: number;
  /** A holder fetch slower than this is abandoned for the owner (default 5 s). */
  slowMs?: number;
  /** How a key maps to its machine part (default `machineOf`; tests force collisions). */
  machineOf?: (key: Uint8Array) => number;
  log?: (m: string) => void;
}

export class RefPullSource implements ChunkSource {
  readonly size: number;
  readonly chunkSize: number;
  readonly readOnly: boolean;
  readonly stats: RefPullStats = { locates: 0, referenced: 0, holderChunks: 0, holderBytes: 0, ownerChunks: 0, ownerBytes: 0, fallbacks: 0, badChunks: 0, collisions: 0, unsupported: false };
  private readonly o: RefPullOptions;
  private readonly owner: ChunkSource & { region: RemoteRegion };
  private readonly holders = new Map<string, Holder>();
  private readonly machines: MachineDirectory;
  private readonly dialer: PeerDialer;
  private closed = false;

  constructor(o: RefPullOptions) {
    this.o = o;
    this.owner = o.owner;
    this.size = o.owner.size;
    this.chunkSize = o.owner.chunkSize;
    this.readOnly = o.owner.readOnly;
    this.dialer = new PeerDialer(o.identity, o.transport);
    this.machines = new MachineDirectory(o.machineOf ?? machineOf);
    if (this.chunkSize !== o.owner.region.manifest.chunkSize) {
      // References name the owner's chunks: with another chunk size they would name other bytes.
      this.stats.unsupported = true;
    }
  }

  holderStatus(): RefHolderStatus[] {
    return [...this.holders.values()].map((h) => ({ ...h.status }));
  }

  view(): RefPullStats & { holders: RefHolderStatus[] } {
    return { ...this.stats, holders: this.holderStatus() };
  }

  fetch(index: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    if (urgent) return this.fromOwner(index, 1, buf, true);
    return this.fetchRange(index, 1, buf);
  }

  async fetchRange(first: number, count: number, buf: Uint8Array): Promise<void> {
    const refs = await this.locate(first, count);
    const cs = this.chunkSize;
    const jobs: Array<Promise<void>> = [];
    let run = -1;
    const flushRun = (end: number) => {
      if (run < 0) return;
      const s = run;
      jobs.push(this.fromOwner(first + s, end - s, buf.subarray(s * cs, Math.min(buf.length, end * cs)), false));
      run = -1;
    };
    for (let k = 0; k < count; k++) {
      const ref = refs.get(first + k);
      if (!ref) {
        if (run < 0) run = k;
        continue;
      }
      flushRun(k);
      jobs.push(this.fromHolder(ref.holder, ref.id, first + k, buf.subarray(k * cs, Math.min(buf.length, (k + 1) * cs))));
    }
    flushRun(count);
    const results = await Promise.allSettled(jobs);
    const bad = results.find((r) => r.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
  }

  private async fromOwner(first: number, count: number, buf: Uint8Array, urgent: boolean): Promise<void> {
    if (count === 1) await this.owner.fetch(first, buf, urgent);
    else if (this.owner.fetchRange) await this.owner.fetchRange(first, count, buf);
    else for (let k = 0; k < count; k++) await this.owner.fetch(first + k, buf.subarray(k * this.chunkSize, Math.min(buf.length, (k + 1) * this.chunkSize)), false);
    this.stats.ownerChunks += count;
    this.stats.ownerBytes += buf.length;
  }

  /** Chunk index → (holder, id) for the run, from the owner; empty when it has no holders or cannot say. */
  private async locate(first: number, count: number): Promise<Map<number, { holder: Holder; id: CacheId }>> {
    const out = new Map<number, { holder: Holder; id: CacheId }>();
    if (this.stats.unsupported || this.closed) return out;
    const now = Date.now();
    const exclude = [...this.holders.values()].filter((h) => h.status.banned || h.downUntil > now).map((h) => h.keyHex).slice(0, 64);
    let answer: Record<string, unknown>;
    try {
      answer = argsOf(await this.owner.region.call(REF_LOCATE, { from: first, count: Math.min(count, MAX_LOCATE), exclude }), REF_LOCATE);
    } catch (e) {
      if (e instanceof QuicmapError && (e.code === 'ENOTSUP' || /unknown (call|method)|no such/i.test(e.message))) {
        this.stats.unsupported = true;
        this.o.log?.('the owner does not answer by reference: pulling from it alone');
      }
      return out;
    }
    this.stats.locates++;
    const named: Array<Holder | undefined> = [];
    for (const x of list(answer, 'holders', REF_LOCATE, 16)) named.push(await this.holderOf(argsOf(x, REF_LOCATE).delegation).catch((e) => {
      this.o.log?.(`ref: a holder the owner named is not usable: ${(e as Error).message}`);
      return undefined;
    }));
    for (const x of list(answer, 'refs', REF_LOCATE, MAX_LOCATE)) {
      const r = argsOf(x, REF_LOCATE);
      const index = uint(r, 'index', REF_LOCATE);
      const h = named[uint(r, 'holder', REF_LOCATE, named.length)];
      const id = idOf(r.id, REF_LOCATE);
      if (!h || h.status.banned || h.downUntil > now || index < first || index >= first + count) continue;
      try {
        this.resolve(id, h, index);
      } catch (e) {
        if (e instanceof MachineCollisionError) this.stats.collisions++;
        this.o.log?.(`ref: ${(e as Error).message}; chunk ${index} comes from the owner`);
        continue;
      }
      out.set(index, { holder: h, id });
    }
    this.stats.referenced += out.size;
    return out;
  }

  /** The id must name this holder's copy of chunk `index`, and its machine part nobody else. */
  private resolve(id: CacheId, h: Holder, index: number): void {
    const { slot, line } = splitCacheId(id);
    if (slot !== HELD_SLOT || line !== index) throw new QuicmapError('EPROTO', `reference ${id.toString(16)} does not name chunk ${index} of a held copy`);
    const key = this.machines.resolve(id);
    if (!Buffer.from(key).equals(Buffer.from(h.key))) throw new QuicmapError('EPROTO', `reference ${id.toString(16)} names another machine than holder ${h.name}`);
  }

  private async holderOf(delegation: unknown): Promise<Holder> {
    if (!(delegation instanceof Uint8Array)) throw new QuicmapError('EPROTO', `${REF_LOCATE}: a holder is named by a delegation (bytes)`);
    const d = await openDelegation(delegation);
    if (!Buffer.from(d.delegate).equals(Buffer.from(this.o.identity.publicKey))) throw new QuicmapError('EACCES', 'the delegation is bound to another peer');
    if (!Buffer.from(d.delegator).equals(Buffer.from(this.owner.region.manifest.sharer))) throw new QuicmapError('EACCES', 'the delegation is not signed by the owner');
    const grant = await openGrant(d.grant);
    const keyHex = hex(grant.sharer);
    let h = this.holders.get(keyHex);
    if (!h) {
      this.machines.add(grant.sharer);
      h = {
        keyHex,
        key: grant.sharer,
        name: base32Encode(grant.sharer).slice(0, 12),
        delegation,
        grant,
        notAfter: d.notAfter,
        sessionNotAfter: 0,
        endpoints: grant.endpoints.map(endpointText),
        status: { name: base32Encode(grant.sharer).slice(0, 12), endpoints: grant.endpoints.map(endpointText), chunks: 0, bytes: 0, failures: 0, badChunks: 0, missing: 0, banned: false },
        strikes: 0,
        downUntil: 0,
        downs: 0,
      };
      this.holders.set(keyHex, h);
      this.o.log?.(`ref: pulling from holder ${h.name} at ${h.endpoints.join(', ')} by reference`);
    } else if (d.notAfter > h.notAfter) {
      h.delegation = delegation;
      h.notAfter = d.notAfter;
    }
    // Reopen on the fresh delegation before the session's runs out (a reconnect presents the one it opened with).
    if (h.region && h.sessionNotAfter - Date.now() / 1000 < 120 && h.notAfter > h.sessionNotAfter) this.reopen(h);
    return h;
  }

  /** The delegated session at the holder, opened on first use (again after a failure). */
  private regionOf(h: Holder): Promise<RemoteRegion> {
    if (!h.region) {
      h.sessionNotAfter = h.notAfter;
      const g = h.grant;
      h.region = this.dialer.open({ endpoints: g.endpoints, sharer: g.sharer, regionId: g.regionId, grant: h.delegation, readOnly: true, agent: 'quicmap ref-pull', requestTimeoutMs: 10_000, waitForLinkMs: 2_000 }).then((r) => {
        if (r.manifest.size !== this.size) {
          void r.close();
          throw new QuicmapError('EINVAL', `holder ${h.name} serves ${r.manifest.size} bytes, the region has ${this.size}`);
        }
        return r;
      });
      h.region.catch(() => {});
    }
    return h.region;
  }

  private reopen(h: Holder): void {
    const old = h.region;
    h.region = undefined;
    void old?.then((r) => r.close(), () => {});
  }

  private async fromHolder(h: Holder, id: CacheId, index: number, buf: Uint8Array): Promise<void> {
    let why: string;
    try {
      const region = await this.regionOf(h);
      let timer: NodeJS.Timeout | undefined;
      const slowMs = this.o.slowMs ?? 5_000;
      const answer = argsOf(
        await Promise.race([
          region.call(HOLD_FETCH, { id: idBytes(id) }),
          new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new QuicmapError('ETIMEDOUT', `took over ${slowMs} ms`)), slowMs))),
        ]).finally(() => clearTimeout(timer)),
        HOLD_FETCH,
      );
      const data = answer.data;
      if (answer.held !== true || !(data instanceof Uint8Array)) {
        h.status.missing++;
        why = 'does not hold it';
      } else if (data.length !== buf.length) {
        why = `sent ${data.length} bytes, not ${buf.length}`;
        this.strike(h, index);
      } else {
        const v = this.o.verifier.check(index, data);
        if (v === 'ok') {
          h.downs = 0;
          buf.set(data);
          h.status.chunks++;
          h.status.bytes += data.length;
          this.stats.holderChunks++;
          this.stats.holderBytes += data.length;
          return;
        }
        why = v === 'bad' ? 'sent bytes that do not match the owner\'s signed hash' : 'sent a chunk whose hash is not known for its current version';
        if (v === 'bad') this.strike(h, index);
      }
    } catch (e) {
      h.status.failures++;
      why = (e as Error).message;
      // Unreachable, failing or slow: leave it alone for a while (the owner may still name it: it is excluded), then dial afresh.
      h.downs++;
      h.downUntil = Date.now() + Math.min(30_000, 500 * 2 ** Math.min(6, h.downs - 1));
      this.reopen(h);
    }
    this.o.log?.(`ref: chunk ${index} from holder ${h.name}: ${why}; fetching it from the owner`);
    this.stats.fallbacks++;
    await this.fromOwner(index, 1, buf, false);
  }

  private strike(h: Holder, index: number): void {
    h.status.badChunks++;
    this.stats.badChunks++;
    h.strikes++;
    this.o.log?.(`holder ${h.name} sent chunk ${index} that does not match the owner's signed hash (strike ${h.strikes})`);
    if (h.strikes >= (this.o.maxStrikes ?? 3) && !h.status.banned) {
      h.status.banned = true;
      this.o.log?.(`holder ${h.name} dropped: ${h.strikes} chunks failed verification`);
      this.reopen(h);
    }
  }

  push(index: number, data: Uint8Array): Promise<void> {
    return this.owner.push(index, data);
  }

  zero(index: number): Promise<void> {
    return this.owner.zero ? this.owner.zero(index) : this.owner.push(index, new Uint8Array(Math.min(this.chunkSize, this.size - index * this.chunkSize)));
  }

  flush(): Promise<void> {
    return this.owner.flush();
  }

  watch(onChanged: (chunks: readonly number[] | 'all') => void): () => void {
    return (
      this.owner.watch?.((c) => {
        this.o.verifier.invalidate(c);
        onChanged(c);
      }) ?? (() => {})
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    const open = [...this.holders.values()].map((h) => h.region).filter((r) => r !== undefined);
    for (const h of this.holders.values()) h.region = undefined;
    await Promise.all(open.map((r) => r.then((x) => x.close(), () => {})));
    await this.dialer.close();
  }
}
