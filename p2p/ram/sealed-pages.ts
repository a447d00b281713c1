/**
 * SealedPages: the PageStore (engine/layers/paged.ts) of encrypted remote
 * RAM. Each saved chunk is sealed (seal.ts) with a fresh version and put on
 * K storage peers; a load fetches it from one that holds it and opens it
 * with the version this node expects.
 *
 * Freshness: the version table (one number per chunk) and the placement
 * (which peers were given the current version) never leave this node, and
 * the version is in the nonce and the associated data: a peer that returns
 * an older version (a rollback), another chunk, another region's chunk or
 * altered bytes fails authentication. The node then tries the next replica,
 * repairs the bad one in the background with the good ciphertext (no
 * re-sealing, so no nonce is reused), and counts the fault against the peer
 * (`peers()`, logged). With no good replica left the load fails with a
 * ChunkUnavailableError (EIO) naming what each peer did: never wrong data.
 *
 * Replicas and peer loss: placement is rendezvous hashing of the chunk id
 * over the peers, skipping lost and full ones (a quota refusal moves the
 * chunk to the next peer). A peer that fails `lostAfter` probes in a row is
 * lost: every chunk it held is queued, and a background worker copies the
 * verified ciphertext from a live holder to a new peer until each chunk has
 * K live holders again (`replication()`: progress for status).
 */
import { createHash } from 'node:crypto';
import { QuicmapError, errorCode } from '../../base/errors.ts';
import type { PageStore, PartialChunk } from '../../engine/layers/paged.ts';
import { ChunkSealer, sealedSize, type OpenableChunk, type Problem } from './seal.ts';
import { SealedChunk } from './sealed-chunk.ts';
import type { VaultStats } from './vault.ts';

/** What SealedPages needs of a storage peer (StorePeerClient; tests may pass a fake). */
export interface ChunkPeer {
  put(id: Uint8Array, blob: Uint8Array): Promise<VaultStats>;
  /** A buffer the caller owns from now on (a chunk is opened in place in it). */
  get(id: Uint8Array): Promise<Uint8Array | null>;
  del(id: Uint8Array): Promise<void>;
  /** Delete many at once (StorePeerClient batches them); without it, del one by one. */
  delMany?(ids: Uint8Array[]): Promise<void>;
  sync(): Promise<void>;
  /** `boot` changes when the peer restarts: its chunks are audited then. */
  info(): Promise<VaultStats & { boot?: string }>;
}

/** Every replica of a chunk was stale, altered, missing or unreachable. */
export class ChunkUnavailableError extends QuicmapError {
  readonly index: number;
  constructor(index: number, chunkSize: number, why: string[]) {
    super('EIO', `chunk ${index} (offset ${index * chunkSize}): no storage peer returned its current version: ${why.join('; ') || 'no peer holds it'}`);
    this.name = 'ChunkUnavailableError';
    this.index = index;
  }
}

export interface PeerReport {
  name: string;
  state: 'up' | 'lost';
  full: boolean;
  stale: number;
  tampered: number;
  missing: number;
  unreachable: number;
  repaired: number;
  quotaRefusals: number;
  used: number;
  quota: number;
}

export interface ReplicationReport {
  replicas: number;
  chunks: number;
  /** Chunks with fewer than K live holders, queued or waiting for a peer. */
  underReplicated: number;
  /** Chunks copied to a new peer since start. */
  copied: number;
  /** Chunks for which no holder was left (their reads fail). */
  lost: number;
  running: boolean;
}

interface PeerState extends PeerReport {
  peer: ChunkPeer;
  fails: number;
  boot: string | undefined;
}

export interface SealedPagesOptions {
  /** The node's secret (its identity seed): the region's keys are derived from it. */
  secret: Uint8Array;
  regionId: Uint8Array;
  chunkSize: number;
  chunks: number;
  peers: Array<{ name: string; peer: ChunkPeer }>;
  replicas: number;
  /** Failed probes in a row before a peer is lost (default 3). */
  lostAfter?: number;
  log?: (message: string) => void;
}

export class SealedPages implements PageStore {
  readonly sealer: ChunkSealer;
  readonly replicas: number;
  private readonly chunkSize: number;
  private readonly peers: PeerState[];
  /** Expected version per chunk; 0: never saved or discarded (zeros). */
  private readonly versions: Float64Array;
  private readonly turns: Uint8Array;
  /** Chunk ids (an HMAC each), computed once: 16 bytes per chunk, `idKnown` says which. */
  private readonly ids: Uint8Array;
  private readonly idKnown: Uint8Array;
  /** Peers given the current version of each saved chunk. */
  private readonly holders = new Map<number, number[]>();
  private counter = 0;
  private readonly locks = new Map<number, Promise<void>>();
  private readonly queue = new Set<number>();
  private readonly lostChunks = new Set<number>();
  private copied = 0;
  private worker: Promise<void> | undefined;
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly lostAfter: number;
  private readonly log: (m: string) => void;
  private readonly logged = new Map<string, number>();
  private closed = false;

  constructor(opts: SealedPagesOptions) {
    if (opts.peers.length === 0) throw new QuicmapError('EINVAL', 'encrypted RAM needs at least one storage peer');
    if (!Number.isSafeInteger(opts.replicas) || opts.replicas < 1 || opts.replicas > opts.peers.length) {
      throw new QuicmapError('EINVAL', `replicas must be between 1 and the number of storage peers (${opts.peers.length}), not ${opts.replicas}`);
    }
    this.sealer = new ChunkSealer(opts.secret, opts.regionId);
    this.replicas = opts.replicas;
    this.chunkSize = opts.chunkSize;
    this.versions = new Float64Array(opts.chunks);
    this.turns = new Uint8Array(opts.chunks);
    this.ids = new Uint8Array(opts.chunks * 16);
    this.idKnown = new Uint8Array(opts.chunks);
    this.lostAfter = opts.lostAfter ?? 3;
    this.log = opts.log ?? (() => {});
    this.peers = opts.peers.map((p) => ({
      name: p.name,
      peer: p.peer,
      state: 'up',
      full: false,
      stale: 0,
      tampered: 0,
      missing: 0,
      unreachable: 0,
      repaired: 0,
      quotaRefusals: 0,
      used: 0,
      quota: 0,
      fails: 0,
      boot: undefined,
    }));
  }

  peerReports(): PeerReport[] {
    return this.peers.map(({ peer: _p, fails: _f, boot: _b, ...r }) => ({ ...r }));
  }

  replication(): ReplicationReport {
    let under = 0;
    for (const [, h] of this.holders) if (this.live(h).length < this.replicas) under++;
    return { replicas: this.replicas, chunks: this.holders.size, underReplicated: under, copied: this.copied, lost: this.lostChunks.size, running: this.worker !== undefined };
  }

  // --- PageStore ---

  /** The peers to read chunk `index` from, in order. */
  private readOrder(index: number): number[] {
    const held = this.holders.get(index) ?? [];
    // Live holders first, then the lost ones (they may be back).
    // Loads of a chunk take its live holders in turn (spreading reads, and over two loads every replica is read and checked).
    const live = this.live(held);
    const turn = live.length > 1 ? this.turns[index]!++ % live.length : 0;
    return [...live.slice(turn), ...live.slice(0, turn), ...held.filter((p) => this.peers[p]!.state === 'lost')];
  }

  /**
   * The chunk from its first holder whose blob has the right size and
   * states the current version, not opened yet: segments open as they are
   * read (SealedChunk), and a segment that fails its tag sends the read to
   * the next replica (recover). What a cold 4 KiB read pays for is then one
   * 4 KiB segment's AES-GCM instead of the whole chunk's.
   */
  async loadPartial(index: number): Promise<PartialChunk | null> {
    const version = this.versions[index]!;
    if (version === 0) return null;
    const order = this.readOrder(index);
    const why: string[] = [];
    const bad: number[] = [];
    const first = await this.fetchCandidate(index, version, order, why, bad);
    if (!first) throw this.unavailable(index, why);
    let source = first.p;
    const recover = async (chunk: OpenableChunk, at: number, len: number, problem: Problem): Promise<void> => {
      this.blame(source, index, version, problem, chunk.claimed, why, bad);
      for (;;) {
        const next = await this.fetchCandidate(index, version, order, why, bad);
        if (!next) throw this.unavailable(index, why);
        // `next.chunk` is never opened itself: its blob stays the ciphertext that repairs the bad peers.
        chunk.adopt(next.chunk);
        const again = chunk.open(at, len);
        if (again === undefined) {
          source = next.p;
          this.background(this.repair(index, version, next.blob, [...bad]));
          return;
        }
        this.blame(next.p, index, version, again, next.chunk.claimed, why, bad);
        source = next.p;
      }
    };
    if (bad.length > 0) {
      // Holders before this one gave nothing usable: repair them once this copy proved good in full.
      const repairBad = [...bad];
      const verify = Uint8Array.prototype.slice.call(first.blob); // a copy: the chunk opens in place in first.blob
      this.background(
        Promise.resolve().then(() => {
          if (this.sealer.open(index, version, verify).ok) return this.repair(index, version, verify, repairBad);
        }),
      );
    }
    return new SealedChunk(first.chunk, recover);
  }

  /** The next holder in `order` whose blob passes the checks that need no key (size, stated version); the others are blamed. */
  private async fetchCandidate(index: number, version: number, order: number[], why: string[], bad: number[]): Promise<{ p: number; blob: Uint8Array; chunk: OpenableChunk } | undefined> {
    const id = this.chunkId(index);
    for (let p = order.shift(); p !== undefined; p = order.shift()) {
      const peer = this.peers[p]!;
      let blob: Uint8Array | null;
      try {
        blob = await peer.peer.get(id);
        this.alive(peer);
      } catch (e) {
        this.failed(peer, e);
        why.push(`${peer.name}: unreachable (${(e as Error).message})`);
        continue;
      }
      if (blob === null) {
        this.blame(p, index, version, 'missing', -1, why, bad);
        continue;
      }
      const c = blob.length === sealedSize(this.chunkSize) ? this.sealer.chunk(index, version, blob) : undefined;
      if (!c?.ok) {
        this.blame(p, index, version, 'malformed', -1, why, bad, blob.length);
        continue;
      }
      // The stated version is unauthenticated, but a blob stating another one is not the current blob as this node sealed it.
      if (c.chunk.claimed !== version) {
        this.blame(p, index, version, c.chunk.claimed < version ? 'stale' : 'tampered', c.chunk.claimed, why, bad);
        continue;
      }
      return { p, blob, chunk: c.chunk };
    }
    return undefined;
  }

  /** Count a bad replica against its peer, with a line for the error and the log. */
  private blame(p: number, index: number, version: number, problem: Problem | 'missing', claimed: number, why: string[], bad: number[], size = 0): void {
    const peer = this.peers[p]!;
    const what = this.fault(peer, problem, claimed, version, size);
    why.push(`${peer.name}: ${problem === 'missing' ? 'does not have it' : what}`);
    this.report(peer, `chunk ${index} came back ${what}`);
    if (!bad.includes(p)) bad.push(p);
  }

  private unavailable(index: number, why: string[]): ChunkUnavailableError {
    const err = new ChunkUnavailableError(index, this.chunkSize, why);
    this.log(err.message);
    return err;
  }

  /** The whole chunk, every segment checked (loadPartial, opened in full). */
  async load(index: number): Promise<Uint8Array | null> {
    const chunk = await this.loadPartial(index);
    if (!chunk) return null;
    const r = chunk.reveal(0, this.chunkSize);
    if (r !== true) await r;
    return chunk.data;
  }

  /** Sealed at once (so `data` is free again when this returns: copiesOnSave), then placed under the chunk's lock. */
  readonly copiesOnSave = true;

  save(index: number, data: Uint8Array): Promise<void> {
    // The version is taken here, in call order, which is also the lock's order: a later save of the chunk has a higher version.
    const version = ++this.counter;
    let blob: Uint8Array;
    try {
      blob = this.sealer.seal(index, version, data);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.locked(index, async () => {
      const got = await this.place(index, this.chunkId(index), blob, [], this.replicas);
      if (got.length === 0) throw new QuicmapError('EIO', `chunk ${index}: no storage peer took it (every one is lost or full)`);
      const old = this.holders.get(index) ?? [];
      this.versions[index] = version;
      this.holders.set(index, got);
      this.lostChunks.delete(index);
      if (got.length < this.replicas) {
        this.note('under', `chunk ${index} is on ${got.length} of ${this.replicas} peers (the others are lost or full); it will be copied when a peer can take it`);
        this.enqueue(index);
      }
      // Peers that held the old version and were not given the new one: free their space.
      // (Under the chunk's lock, queued behind this save: a later save placing the chunk there again is not undone.)
      const stale = old.filter((p) => !got.includes(p));
      if (stale.length) this.background(this.locked(index, () => this.forget(index, stale)));
    });
  }

  discard(index: number): Promise<void> {
    return this.locked(index, async () => {
      const held = this.holders.get(index) ?? [];
      this.versions[index] = 0;
      this.holders.delete(index);
      this.lostChunks.delete(index);
      if (held.length) this.background(this.locked(index, () => this.forget(index, held)));
    });
  }

  /** Delete the chunk from peers that hold an outdated copy, unless they hold the current one by now. */
  private async forget(index: number, peers: number[]): Promise<void> {
    const current = this.holders.get(index) ?? [];
    const id = this.chunkId(index);
    await Promise.all(peers.filter((p) => !current.includes(p)).map((p) => this.peers[p]!.peer.del(id).catch(() => {})));
  }

  /** Every chunk saved so far survives a crash of the peers holding it (a dir: store fsyncs). */
  async flush(): Promise<void> {
    const results = await Promise.allSettled(this.peers.map((p) => (p.state === 'up' ? p.peer.sync() : Promise.resolve())));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${this.peers[i]!.name}: ${(r.reason as Error).message}`] : []));
    if (failed.length === 0) return;
    for (const [i, r] of results.entries()) if (r.status === 'rejected') this.failed(this.peers[i]!, r.reason);
    // Durable enough if every saved chunk has a holder that synced (a peer that cannot is counted as a fault).
    const synced = new Set(results.flatMap((r, i) => (r.status === 'fulfilled' && this.peers[i]!.state === 'up' ? [i] : [])));
    for (const [index, h] of this.holders) {
      if (!h.some((p) => synced.has(p))) throw new QuicmapError('EIO', `flush: chunk ${index} is on no storage peer that could make it durable: ${failed.join('; ')}`);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.worker;
    await Promise.allSettled([...this.inFlight]);
  }

  /**
   * The region ends (encrypted RAM's contents end with the process: the
   * keys come from a per-run region id). No re-replication starts from now
   * on; the chunks are deleted from the live peers that hold them, to free
   * their quota: best effort (a peer that does not answer keeps them until
   * it restarts; they are ciphertext no one can open). Resolves with the
   * number of chunk copies deleted (`onDeleted` hears each peer's count as
   * it answers); the caller bounds the wait.
   */
  async release(onDeleted?: (n: number) => void): Promise<number> {
    this.closed = true;
    const per = new Map<number, Uint8Array[]>();
    for (const [index, held] of this.holders) {
      for (const p of this.live(held)) {
        let ids = per.get(p);
        if (!ids) per.set(p, (ids = []));
        ids.push(this.chunkId(index));
      }
    }
    this.holders.clear();
    this.versions.fill(0);
    let n = 0;
    await Promise.allSettled(
      [...per].map(async ([p, ids]) => {
        const peer = this.peers[p]!.peer;
        if (peer.delMany) await peer.delMany(ids);
        else for (const id of ids) await peer.del(id);
        n += ids.length;
        onDeleted?.(ids.length);
      }),
    );
    return n;
  }

  // --- health and re-replication ---

  /** Ask each peer how it is (used, quota); a peer failing lostAfter times in a row is lost. Call it periodically. */
  async probe(): Promise<void> {
    await Promise.all(
      this.peers.map(async (peer) => {
        try {
          const s = await peer.peer.info();
          peer.used = s.used;
          peer.quota = s.quota;
          peer.full = s.quota - s.used < sealedSize(this.chunkSize);
          this.alive(peer);
          if (s.boot !== undefined && peer.boot !== undefined && s.boot !== peer.boot) {
            this.log(`storage peer ${peer.name} restarted; checking the chunks it holds`);
            this.background(this.audit(this.peers.indexOf(peer)));
          }
          if (s.boot !== undefined) peer.boot = s.boot;
        } catch (e) {
          this.failed(peer, e);
        }
      }),
    );
  }

  /**
   * Read back every chunk peer `p` should hold and check it (a restarted
   * peer may have come back from an old copy, or with chunks altered or
   * missing); bad ones are repaired from a good replica. Resolves with the
   * number of bad chunks found.
   */
  async audit(p: number): Promise<number> {
    const peer = this.peers[p]!;
    let bad = 0;
    for (const index of [...this.holders.keys()]) {
      let unreachable = false;
      // Under the chunk's lock: a save in between would make the fetched copy look wrong.
      await this.locked(index, async () => {
        const held = this.holders.get(index);
        if (!held?.includes(p)) return;
        const version = this.versions[index]!;
        const id = this.chunkId(index);
        let blob: Uint8Array | null;
        try {
          blob = await peer.peer.get(id);
        } catch (e) {
          this.failed(peer, e);
          unreachable = true;
          return;
        }
        const { what } = this.check(peer, index, version, blob);
        if (what === undefined) return;
        bad++;
        this.report(peer, `chunk ${index} is ${what}`);
        // A good copy from another holder repairs it.
        for (const q of this.live(held)) {
          if (q === p) continue;
          const good = await this.peers[q]!.peer.get(id).catch(() => null);
          if (good && this.sealer.open(index, version, good).ok) {
            await this.repairNow(index, version, good, [p]);
            break;
          }
        }
      });
      if (unreachable) break;
    }
    return bad;
  }

  /** The plaintext if the blob is the chunk's current version, else what is wrong with it (counted against the peer). */
  private check(peer: PeerState, index: number, version: number, blob: Uint8Array | null): { data: Uint8Array; what?: undefined } | { what: string } {
    if (blob === null) return { what: this.fault(peer, 'missing', -1, version, 0) };
    const opened = blob.length === sealedSize(this.chunkSize) ? this.sealer.open(index, version, blob) : ({ ok: false, problem: 'malformed', claimed: -1 } as const);
    if (opened.ok) return { data: opened.data };
    return { what: this.fault(peer, opened.problem, opened.claimed, version, blob.length) };
  }

  /** Count a bad replica against its peer; what is wrong with it, in words. */
  private fault(peer: PeerState, problem: Problem | 'missing', claimed: number, version: number, size: number): string {
    if (problem === 'missing') peer.missing++;
    else if (problem === 'stale') peer.stale++;
    else peer.tampered++;
    if (problem === 'missing') return 'missing';
    if (problem === 'stale') return `stale (version ${claimed}, expected ${version})`;
    return problem === 'malformed' ? `malformed (${size} bytes)` : 'altered (authentication failed)';
  }

  /** Resolves when the background copying has nothing left it can do now. */
  async idle(): Promise<void> {
    while (this.worker) await this.worker;
  }

  /** The chunk's opaque id on the peers (sealer.chunkId, kept). */
  private chunkId(index: number): Uint8Array {
    const id = this.ids.subarray(index * 16, index * 16 + 16);
    if (this.idKnown[index] === 0) {
      id.set(this.sealer.chunkId(index));
      this.idKnown[index] = 1;
    }
    return id;
  }

  private live(held: number[]): number[] {
    return held.filter((p) => this.peers[p]!.state === 'up');
  }

  private alive(peer: PeerState): void {
    peer.fails = 0;
    if (peer.state === 'lost') {
      peer.state = 'up';
      this.log(`storage peer ${peer.name} is back`);
      // Chunks waiting for a target may go there now.
      for (const [i, h] of this.holders) if (this.live(h).length < this.replicas) this.enqueue(i);
    }
  }

  private failed(peer: PeerState, e: unknown): void {
    if (errorCode(e) === 'ENOSPC') return;
    peer.unreachable++;
    if (++peer.fails >= this.lostAfter && peer.state === 'up') {
      peer.state = 'lost';
      this.log(`storage peer ${peer.name} is lost (${(e as Error).message}); copying its chunks to the others`);
      const p = this.peers.indexOf(peer);
      for (const [i, h] of this.holders) if (h.includes(p)) this.enqueue(i);
    }
  }

  private enqueue(index: number): void {
    this.queue.add(index);
    if (!this.worker && !this.closed) {
      this.worker = this.drain().finally(() => (this.worker = undefined));
    }
  }

  private async drain(): Promise<void> {
    const waiting = new Set<number>();
    while (this.queue.size > 0 && !this.closed) {
      const batch = [...this.queue].slice(0, 8);
      for (const i of batch) this.queue.delete(i);
      await Promise.all(batch.map((i) => this.rereplicate(i).then((done) => void (done || waiting.add(i)), () => void waiting.add(i))));
    }
    // What could not be placed now waits for a peer to come back (alive() queues it again).
    void waiting;
  }

  /** Bring chunk `index` back to K live holders. False when no target could take it now. */
  private rereplicate(index: number): Promise<boolean> {
    return this.locked(index, async () => {
      const version = this.versions[index]!;
      const held = this.holders.get(index);
      if (version === 0 || !held) return true;
      const live = this.live(held);
      if (live.length >= this.replicas) return true;
      const id = this.chunkId(index);
      let good: Uint8Array | undefined;
      for (const p of live) {
        const blob = await this.peers[p]!.peer.get(id).catch(() => null);
        if (blob && this.sealer.open(index, version, blob).ok) {
          good = blob;
          break;
        }
      }
      if (!good) {
        if (live.length === 0) {
          this.lostChunks.add(index);
          this.note('lost', `chunk ${index}: no live peer holds a good copy; its reads fail until one comes back`);
        }
        return live.length === 0;
      }
      const added = await this.place(index, id, good, held, this.replicas - live.length);
      this.holders.set(index, [...held, ...added]);
      this.copied += added.length > 0 ? 1 : 0;
      return this.live([...held, ...added]).length >= this.replicas;
    });
  }

  /** Put the blob on `want` peers not in `exclude`, in placement order; returns those that took it. */
  private async place(index: number, id: Uint8Array, blob: Uint8Array, exclude: number[], want: number): Promise<number[]> {
    const order = this.placement(id).filter((p) => !exclude.includes(p));
    const got: number[] = [];
    let next = 0;
    const tryOne = async (): Promise<void> => {
      while (got.length < want && next < order.length) {
        const p = order[next++]!;
        const peer = this.peers[p]!;
        if (peer.state === 'lost' || peer.full) continue;
        try {
          const s = await peer.peer.put(id, blob);
          peer.used = s.used;
          peer.quota = s.quota;
          this.alive(peer);
          got.push(p);
          return;
        } catch (e) {
          if (errorCode(e) === 'ENOSPC') {
            peer.quotaRefusals++;
            peer.full = true;
            this.report(peer, `refused chunk ${index}: ${(e as Error).message}; placing it on another peer`);
          } else {
            this.failed(peer, e);
            this.report(peer, `put of chunk ${index} failed: ${(e as Error).message}`);
          }
        }
      }
    };
    await Promise.all(Array.from({ length: want }, tryOne));
    return got;
  }

  /** Peers in rendezvous-hash order for this chunk id. */
  private placement(id: Uint8Array): number[] {
    const scored = this.peers.map((p, i) => ({ i, s: createHash('sha256').update(id).update(p.name).digest().readUInt32BE(0) }));
    return scored.sort((a, b) => b.s - a.s).map((x) => x.i);
  }

  private repair(index: number, version: number, blob: Uint8Array, bad: number[]): Promise<void> {
    return this.locked(index, () => this.repairNow(index, version, blob, bad));
  }

  /** Put the good copy on the bad peers (the caller holds the chunk's lock). */
  private async repairNow(index: number, version: number, blob: Uint8Array, bad: number[]): Promise<void> {
    {
      if (this.versions[index] !== version) return; // written again meanwhile: the new save placed it
      const id = this.chunkId(index);
      const held = this.holders.get(index) ?? [];
      for (const p of bad) {
        const peer = this.peers[p]!;
        if (peer.state === 'lost') continue;
        try {
          await peer.peer.put(id, blob);
          peer.repaired++;
          if (!held.includes(p)) held.push(p);
          this.note(`repair ${peer.name}`, `chunk ${index} repaired on storage peer ${peer.name}`);
        } catch (e) {
          this.report(peer, `repair of chunk ${index} failed: ${(e as Error).message}`);
        }
      }
      this.holders.set(index, held);
    }
  }

  private locked<T>(index: number, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(index) ?? Promise.resolve();
    const run = prev.then(fn, fn);
    const tail = run.then(
      () => {},
      () => {},
    );
    this.locks.set(index, tail);
    void tail.then(() => {
      if (this.locks.get(index) === tail) this.locks.delete(index);
    });
    return run;
  }

  private background(p: Promise<unknown>): void {
    this.inFlight.add(p);
    void p.catch(() => {}).finally(() => this.inFlight.delete(p));
  }

  private report(peer: PeerState, what: string): void {
    this.note(peer.name, `storage peer ${peer.name}: ${what}`);
  }

  /** Log, at most a few lines per subject per 10 s. */
  private note(subject: string, message: string): void {
    const now = Date.now();
    const key = `${subject}@${Math.floor(now / 10_000)}`;
    const n = this.logged.get(key) ?? 0;
    if (n < 5) this.log(message);
    else if (n === 5) this.log(`(${subject}: more of these in the next seconds are not logged)`);
    this.logged.set(key, n + 1);
    if (this.logged.size > 256) this.logged.clear();
  }
}
