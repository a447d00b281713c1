/**
 * DhtClient: the node's one Mainline DHT endpoint (bittorrent-dht), in the
 * shape quicmap needs: BEP5 announce/lookup of a region topic and BEP44
 * put/get of a region record, each under a deadline, with records checked
 * by `validateRecord` before anyone sees them.
 *
 * Bootstrapping: a list of "host:port" (a private swarm: `quicmap dht`
 * nodes), `'none'` (the first node of a private swarm: talks to nobody
 * until others join it) or `'public'` (the public Mainline routers — only
 * when the user asks for it; tests never do).
 */
import DHT, { type DhtPeer, type MutableRecord } from 'bittorrent-dht';
import { QuicmapError } from '../../base/errors.ts';
import type { Identity } from '../../crypto/identity.ts';
import { createHash } from 'node:crypto';
import { recordReady, signRecord, signedForm, encodeRecordValue, validateRecord, verifyEd25519, type RecordExpectation, type RecordVerdict, type RegionRecord } from './record.ts';
import { recordTarget } from './topic.ts';

export type DhtBootstrap = string[] | 'none' | 'public';

export interface DhtClientOptions {
  bootstrap: DhtBootstrap;
  /** Address to bind the DHT's UDP socket (default 127.0.0.1:0; IPv4 only). */
  listen?: string;
  /**
   * The address other nodes know this one by; bittorrent-dht needs it to
   * store the node's own announces. Default: the listen host (unless a wildcard).
   */
  host?: string;
  /** Per-query timeout of the KRPC layer (a dead node costs this). Default 1 000 ms. */
  queryTimeoutMs?: number;
  log?: (message: string) => void;
}

function splitHostPort(text: string): { host: string; port: number } {
  const i = text.lastIndexOf(':');
  const port = Number(text.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new QuicmapError('EINVAL', `expected HOST:PORT, got "${text}"`);
  return { host: text.slice(0, i), port };
}

function withDeadline<T>(ms: number, what: string, work: (done: (err: Error | null, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new QuicmapError('ETIMEDOUT', `${what}: no answer within ${ms} ms`)), ms);
    work((err, value) => {
      clearTimeout(timer);
      if (err) reject(err instanceof QuicmapError ? err : new QuicmapError('EIO', `${what}: ${err.message}`, { cause: err }));
      else resolve(value as T);
    });
  });
}

export class DhtClient {
  readonly dht: DHT;
  /** "host:port" of this node's UDP socket. */
  address = '';
  private readonly log: (m: string) => void;
  /** Highest accepted seq per record target: a replayed older record is refused. */
  private readonly seenSeq = new Map<string, number>();

  private constructor(dht: DHT, log: (m: string) => void) {
    this.dht = dht;
    this.log = log;
  }

  static async open(opts: DhtClientOptions): Promise<DhtClient> {
    await recordReady();
    const { host, port } = splitHostPort(opts.listen ?? '127.0.0.1:0');
    const ownHost = opts.host ?? (host === '0.0.0.0' ? undefined : host);
    const dht = new DHT({
      bootstrap: opts.bootstrap === 'public' ? undefined : opts.bootstrap === 'none' ? false : opts.bootstrap,
      host: ownHost ?? false,
      timeout: opts.queryTimeoutMs ?? 1_000,
      verify: verifyEd25519 as (s: Buffer, m: Buffer, k: Buffer) => boolean,
    } as ConstructorParameters<typeof DHT>[0]);
    const client = new DhtClient(dht, opts.log ?? (() => {}));
    dht.on('warning', (e: Error) => client.log(`dht: ${e.message}`));
    dht.on('error', (e: Error) => client.log(`dht error: ${e.message}`));
    try {
      await withDeadline<void>(5_000, `dht listen on ${host}:${port}`, (done) => {
        dht.once('error', (e: Error) => done(e));
        dht.listen(port, host, () => done(null));
      });
      // 'ready' follows bootstrapping (immediately with bootstrap: false); a
      // bootstrap node that does not answer yet is not fatal: routing fills in later.
      if (!(dht as unknown as { ready: boolean }).ready) {
        await withDeadline<void>((opts.queryTimeoutMs ?? 1_000) * 4, 'dht bootstrap', (done) => dht.once('ready', () => done(null))).catch((e) =>
          client.log(`dht: ${(e as Error).message}; continuing`),
        );
      }
    } catch (e) {
      dht.destroy();
      throw e;
    }
    const a = dht.address();
    client.address = `${a.address}:${a.port}`;
    return client;
  }

  /** DHT nodes this one knows (for status). */
  get nodeCount(): number {
    return this.dht.toJSON().nodes.length;
  }

  /** BEP5: announce that `port` on this host serves `topic`. */
  announce(topic: Buffer, port: number, timeoutMs = 10_000): Promise<void> {
    return withDeadline<void>(timeoutMs, 'dht announce', (done) => this.dht.announce(topic, port, (err) => done(err)));
  }

  /** BEP5: peers that announced `topic` (deduplicated), within `timeoutMs`. */
  async lookup(topic: Buffer, timeoutMs = 5_000): Promise<DhtPeer[]> {
    const found = new Map<string, DhtPeer>();
    const onPeer = (peer: DhtPeer, infoHash: Buffer) => {
      if (infoHash.equals(topic)) found.set(`${peer.host}:${peer.port}`, { host: peer.host, port: peer.port });
    };
    this.dht.on('peer', onPeer);
    let abort: (() => void) | undefined;
    try {
      await withDeadline<void>(timeoutMs, 'dht lookup', (done) => {
        abort = this.dht.lookup(topic, (err) => done(err));
      }).catch((e) => {
        // A lookup cut short by its deadline still returns what it found.
        if (!(e instanceof QuicmapError && e.code === 'ETIMEDOUT')) throw e;
      });
    } finally {
      abort?.();
      this.dht.off('peer', onPeer);
    }
    return [...found.values()];
  }

  /** BEP44: publish `record` signed by `identity`, salted by its region id. Resolves to the number of nodes that stored it. */
  put(identity: Identity, record: RegionRecord, seq: number, timeoutMs = 10_000): Promise<number> {
    const v = encodeRecordValue(record);
    const salt = Buffer.from(record.regionId);
    return withDeadline<number>(timeoutMs, 'dht put', (done) =>
      this.dht.put({ k: Buffer.from(identity.publicKey), v, seq, salt, sign: () => signRecord(identity, seq, v, salt) }, (err, _hash, n) => done(err, n)),
    );
  }

  /**
   * BEP44: the sharer's record for a region, checked by `validateRecord`
   * (signature, key, salt, seq not older than one seen before, manifest
   * matching the grant). Resolves to the verdict, or null when no node has one.
   */
  async get(expect: RecordExpectation, timeoutMs = 5_000): Promise<RecordVerdict | null> {
    const target = recordTarget(expect.sharer, expect.regionId);
    const key = target.toString('hex');
    const raw = await withDeadline<MutableRecord | null>(timeoutMs, 'dht get', (done) =>
      this.dht.get(target, { salt: Buffer.from(expect.regionId), cache: false }, (err, res) => done(err, res)),
    );
    if (!raw) return null;
    const minSeq = Math.max(expect.minSeq ?? 0, this.seenSeq.get(key) ?? 0);
    const verdict = validateRecord({ k: raw.k, v: raw.v, sig: raw.sig, seq: raw.seq, salt: Buffer.from(expect.regionId) }, { ...expect, minSeq });
    if (verdict.ok) this.seenSeq.set(key, verdict.seq);
    else this.log(`dht: ignored a record for region ${Buffer.from(expect.regionId).toString('hex')}: ${verdict.reason}`);
    return verdict;
  }

  /**
   * BEP44: publish any mutable value `v` under (`signer`'s key, `salt`) — the
   * seeder board (seeder-record.ts) uses it with a key derived from the
   * region. Resolves to the number of nodes that stored it.
   */
  putValue(signer: Pick<Identity, 'publicKey' | 'secretKey'>, salt: Uint8Array, v: Uint8Array, seq: number, timeoutMs = 10_000): Promise<number> {
    const value = Buffer.from(v);
    const s = Buffer.from(salt);
    return withDeadline<number>(timeoutMs, 'dht put', (done) =>
      this.dht.put({ k: Buffer.from(signer.publicKey), v: value, seq, salt: s, sign: () => signRecord(signer, seq, value, s) }, (err, _hash, n) => done(err, n)),
    );
  }

  /**
   * BEP44: the mutable value under (`key`, `salt`), its signature checked
   * here (not trusting the DHT library); null when no node has one or the
   * signature or salt is wrong (logged).
   */
  async getValue(key: Uint8Array, salt: Uint8Array, timeoutMs = 5_000): Promise<{ v: Uint8Array; seq: number } | null> {
    const target = createHash('sha1').update(key).update(salt).digest();
    const raw = await withDeadline<MutableRecord | null>(timeoutMs, 'dht get', (done) =>
      this.dht.get(target, { salt: Buffer.from(salt), cache: false }, (err, res) => done(err, res)),
    );
    if (!raw) return null;
    const ok =
      Buffer.from(raw.k).equals(Buffer.from(key)) &&
      Number.isSafeInteger(raw.seq) &&
      raw.seq >= 0 &&
      verifyEd25519(raw.sig, signedForm(raw.seq, raw.v, salt), key);
    if (!ok) {
      this.log(`dht: ignored a value under ${target.toString('hex')}: bad key or signature`);
      return null;
    }
    return { v: Uint8Array.from(raw.v), seq: raw.seq };
  }

  destroy(): Promise<void> {
    return new Promise((resolve) => (this.dht.destroyed ? resolve() : this.dht.destroy(() => resolve())));
  }
}
