/**
 * A tiny raw NBD client over node:net, for what real clients refuse to send:
 * out-of-range and oversized requests, bad magic, garbage, deep pipelining.
 * Fixed-newstyle handshake with GO, simple replies only. Every wait has a
 * time limit so a misbehaving server fails the test instead of hanging it.
 */
import { connect, type Socket } from 'node:net';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 } as const;
export const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006, ERR_TOO_BIG: 0x80000009 } as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const ERRNO = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

export type Target = { host: string; port: number } | { path: string };

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface GoResult {
  size: number;
  flags: number;
  blockSizes?: { min: number; preferred: number; max: number };
  infos: OptionReply[];
}

export interface Reply {
  error: number;
  handle: bigint;
  data: Buffer;
}

export interface RequestSpec {
  type: number;
  flags?: number;
  handle?: bigint;
  offset: number | bigint;
  length: number;
  payload?: Uint8Array;
}

export class RawNbd {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;
  private nextHandle = 1n;

  readonly socket: Socket;
  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.wake();
    });
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  static connect(target: Target, timeoutMs = 5000): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = 'path' in target ? connect(target.path) : connect(target.port, target.host);
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error('raw nbd: connect timed out'));
      }, timeoutMs);
      s.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      s.once('connect', () => {
        clearTimeout(timer);
        s.setNoDelay(true);
        resolve(new RawNbd(s));
      });
    });
  }

  /** Connect, handshake with GO on `name`, return the client in transmission. */
  static async open(target: Target, name: string): Promise<{ c: RawNbd; go: GoResult }> {
    const c = await RawNbd.connect(target);
    try {
      await c.greeting();
      c.clientFlags(3);
      const go = await c.go(name, [3]);
      return { c, go };
    } catch (e) {
      c.destroy();
      throw e;
    }
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  /** Bytes received and not yet read. */
  get pending(): number {
    return this.have;
  }

  /** Read exactly n bytes; rejects if the server closes first or on timeout. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.have < n) {
      if (this.ended) throw new Error(`raw nbd: connection closed with ${this.have}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`raw nbd: timed out waiting for ${n} bytes (have ${this.have})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    return out;
  }

  /** Resolves true if the server closes the connection within ms (data still unread is discarded). */
  async closesWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      this.closed.then(() => true),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
    ]);
    clearTimeout(timer);
    return r;
  }

  write(b: Uint8Array): boolean {
    return this.socket.write(b);
  }

  destroy(): void {
    this.socket.destroy();
  }

  // --- handshake -------------------------------------------------------

  async greeting(): Promise<{ flags: number }> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('raw nbd: bad greeting');
    return { flags: g.readUInt16BE(16) };
  }

  clientFlags(flags: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags >>> 0, 0);
    this.write(b);
  }

  sendOption(option: number, data: Uint8Array = Buffer.alloc(0), declaredLength = data.length): void {
    this.write(optionHeader(option, declaredLength));
    if (data.length) this.write(data);
  }

  async readOptionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error('raw nbd: bad option reply magic');
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? Buffer.from(await this.read(len)) : Buffer.alloc(0) };
  }

  /** Replies up to and including the final one (ACK or an error). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
  }

  async go(name: string, infos: number[] = []): Promise<GoResult> {
    this.sendOption(OPT.GO, goData(name, infos));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== REP.ACK) throw new Error(`raw nbd: GO refused with 0x${last.type.toString(16)}: ${last.data.toString()}`);
    let size = -1;
    let flags = 0;
    let blockSizes: GoResult['blockSizes'];
    for (const r of replies) {
      if (r.type !== REP.INFO) continue;
      const t = r.data.readUInt16BE(0);
      if (t === 0) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      } else if (t === 3) {
        blockSizes = { min: r.data.readUInt32BE(2), preferred: r.data.readUInt32BE(6), max: r.data.readUInt32BE(10) };
      }
    }
    if (size < 0) throw new Error('raw nbd: GO without INFO_EXPORT');
    return { size, flags, blockSizes, infos: replies };
  }

  // --- transmission ----------------------------------------------------

  handle(): bigint {
    return this.nextHandle++;
  }

  /** Send one request (and its payload, if given); returns its handle. */
  send(req: RequestSpec): bigint {
    const handle = req.handle ?? this.handle();
    this.write(requestHeader(req.type, req.flags ?? 0, handle, BigInt(req.offset), req.length));
    if (req.payload && req.payload.length) this.write(req.payload);
    return handle;
  }

  /**
   * Read one simple reply. `readLengths` says, per handle, how many data bytes
   * follow a successful reply (READs); other replies have none.
   */
  async reply(readLengths: Map<bigint, number> = new Map(), timeoutMs = 5000): Promise<Reply> {
    const h = await this.read(16, timeoutMs);
    const magic = h.readUInt32BE(0);
    if (magic !== SIMPLE_REPLY_MAGIC) throw new Error(`raw nbd: bad reply magic 0x${magic.toString(16)}`);
    const error = h.readUInt32BE(4);
    const handle = h.readBigUInt64BE(8);
    const n = error === 0 ? (readLengths.get(handle) ?? 0) : 0;
    readLengths.delete(handle);
    return { error, handle, data: n ? Buffer.from(await this.read(n, timeoutMs)) : Buffer.alloc(0) };
  }

  /** Send a request and wait for its reply (nothing else may be in flight). */
  async request(req: RequestSpec, timeoutMs = 5000): Promise<Reply> {
    const handle = this.send(req);
    const lengths = new Map<bigint, number>();
    if (req.type === CMD.READ) lengths.set(handle, req.length);
    const r = await this.reply(lengths, timeoutMs);
    if (r.handle !== handle) throw new Error(`raw nbd: reply for handle ${r.handle}, expected ${handle}`);
    return r;
  }

  pread(offset: number, length: number): Promise<Reply> {
    return this.request({ type: CMD.READ, offset, length });
  }

  pwrite(data: Uint8Array, offset: number, flags = 0): Promise<Reply> {
    return this.request({ type: CMD.WRITE, flags, offset, length: data.length, payload: data });
  }

  /** Soft disconnect: NBD_CMD_DISC, then wait for the server to close. */
  async disconnect(timeoutMs = 5000): Promise<void> {
    this.send({ type: CMD.DISC, offset: 0, length: 0 });
    this.socket.end();
    if (!(await this.closesWithin(timeoutMs))) {
      this.destroy();
      throw new Error('raw nbd: server did not close after DISC');
    }
  }
}

export function optionHeader(option: number, length: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(length >>> 0, 12);
  return b;
}

export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 4 + n.length + 2 + 2 * i));
  return b;
}

export function requestHeader(type: number, flags: number, handle: bigint, offset: bigint, length: number, magic = REQUEST_MAGIC): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(magic >>> 0, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(offset, 16);
  b.writeUInt32BE(length >>> 0, 24);
  return b;
}
