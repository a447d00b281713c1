/**
 * A pipelined NBD client that is itself a ReadWriterAt: any NBD server (ours,
 * nbdkit, qemu-nbd) becomes a store that layers can wrap — the `nbd:URI`
 * backend — and the demo can exercise a server with nothing installed.
 *
 * Fixed-newstyle with OPT_GO (falls back to nothing else: every server we
 * target supports GO). Many requests in flight, matched by handle.
 */
import { connect, type Socket } from 'node:net';
import { ClosedError, ProtocolError, QuicmapError } from '../../base/errors.ts';
import type { ReadWriterAt, StoreCaps, WriteOptions, ZeroOptions } from '../rwat.ts';
import { VECTORED, offer, type Capability } from '../capability.ts';
import { splitRange } from '../../base/split-range.ts';
import { codeOfNbdErrno } from './errno.ts';
import { HandshakeReader } from '../../base/handshake-reader.ts';
import { withDeadline } from '../../base/deadline.ts';
import {
  CMD_DISC,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  OPT_GO,
  REP_ACK,
  REP_INFO,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  TFLAG_CAN_MULTI_CONN,
  TFLAG_READ_ONLY,
  TFLAG_SEND_FAST_ZERO,
  TFLAG_SEND_TRIM,
} from './constants.ts';

export interface NbdTarget {
  /** TCP host and port, or a unix socket path. */
  host?: string;
  port?: number;
  path?: string;
  exportName: string;
}

/** Parse nbd://host[:port]/name and nbd+unix:///name?socket=PATH. */
export function parseNbdUri(uri: string): NbdTarget {
  const u = new URL(uri);
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  if (u.protocol === 'nbd:') {
    return { host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1', port: u.port ? Number(u.port) : 10809, exportName };
  }
  if (u.protocol === 'nbd+unix:') {
    const path = u.searchParams.get('socket');
    if (!path) throw new Error(`${uri}: nbd+unix URI needs ?socket=PATH`);
    return { path, exportName };
  }
  throw new Error(`not an NBD URI: ${uri} (nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH)`);
}

interface Pending {
  type: number;
  /** Where READ data goes. */
  into?: Uint8Array;
  resolve: () => void;
  reject: (e: Error) => void;
}

export class NbdClient implements ReadWriterAt {
  readonly caps: StoreCaps;
  readonly exportSize: number;
  readonly flags: number;
  readonly maxBlock: number;
  private readonly pending = new Map<number, Pending>();
  private nextHandle = 1;
  private inFlight = 0;
  private drained: (() => void) | undefined;
  private closed = false;
  private failure: Error | undefined;
  // Reply parsing state.
  private header = Buffer.alloc(16);
  private headerFill = 0;
  private current: Pending | undefined;
  private dataLeft = 0;
  private dataAt = 0;
  private readonly socket: Socket;

  private constructor(socket: Socket, size: number, flags: number, maxBlock: number, preferred: number) {
    this.socket = socket;
    this.exportSize = size;
    this.flags = flags;
    this.maxBlock = maxBlock;
    this.caps = {
      readOnly: (flags & TFLAG_READ_ONLY) !== 0,
      canTrim: (flags & TFLAG_SEND_TRIM) !== 0,
      fastZero: (flags & TFLAG_SEND_FAST_ZERO) !== 0,
      multiConn: (flags & TFLAG_CAN_MULTI_CONN) !== 0,
      preferredBlockSize: preferred,
    };
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.fail(new QuicmapError('EIO', `NBD connection failed: ${e.message}`)));
    socket.on('close', () => this.fail(new ClosedError('NBD connection')));
  }

  static async connect(target: NbdTarget | string, opts: { timeoutMs?: number } = {}): Promise<NbdClient> {
    const t = typeof target === 'string' ? parseNbdUri(target) : target;
    const socket = t.path ? connect(t.path) : connect(t.port ?? 10809, t.host ?? '127.0.0.1');
    socket.setNoDelay(true);
    const reader = new HandshakeReader(socket, 'NBD server');
    const handshake = (async (): Promise<NbdClient> => {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (e) => reject(new QuicmapError('EIO', `cannot reach the NBD server: ${e.message}`, { cause: e })));
      });
      const greet = await reader.read(18);
      if (greet.readBigUInt64BE(0) !== NBDMAGIC || greet.readBigUInt64BE(8) !== IHAVEOPT) throw new ProtocolError('not a fixed-newstyle NBD server');
      const serverFlags = greet.readUInt16BE(16);
      if (!(serverFlags & FLAG_FIXED_NEWSTYLE)) throw new ProtocolError('server lacks fixed newstyle');
      const cflags = Buffer.alloc(4);
      cflags.writeUInt32BE(FLAG_C_FIXED_NEWSTYLE | (serverFlags & FLAG_C_NO_ZEROES), 0);
      const name = Buffer.from(t.exportName);
      const opt = Buffer.alloc(16 + 4 + name.length + 2 + 2);
      opt.writeBigUInt64BE(IHAVEOPT, 0);
      opt.writeUInt32BE(OPT_GO, 8);
      opt.writeUInt32BE(4 + name.length + 4, 12);
      opt.writeUInt32BE(name.length, 16);
      name.copy(opt, 20);
      opt.writeUInt16BE(1, 20 + name.length);
      opt.writeUInt16BE(INFO_BLOCK_SIZE, 22 + name.length);
      socket.write(Buffer.concat([cflags, opt]));
      let size = -1;
      let flags = 0;
      let maxBlock = 32 * 1024 * 1024;
      let preferred = 4096;
      for (;;) {
        const h = await reader.read(20);
        if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new ProtocolError('bad option reply magic');
        const type = h.readUInt32BE(12);
        const len = h.readUInt32BE(16);
        if (len > 64 * 1024) throw new ProtocolError('option reply too long');
        const data = await reader.read(len);
        if (type === REP_ACK) break;
        if (type === REP_INFO && len >= 2) {
          const info = data.readUInt16BE(0);
          if (info === INFO_EXPORT && len >= 12) {
            size = Number(data.readBigUInt64BE(2));
            flags = data.readUInt16BE(10);
          } else if (info === INFO_BLOCK_SIZE && len >= 14) {
            preferred = data.readUInt32BE(6);
            maxBlock = Math.min(data.readUInt32BE(10), 32 * 1024 * 1024);
          }
          continue;
        }
        if (type & 0x80000000) {
          const code = type === 0x80000006 ? 'EINVAL' : 'EIO';
          throw new QuicmapError(code, `server refused export "${t.exportName}": ${data.toString('utf8') || `error 0x${type.toString(16)}`}`);
        }
      }
      if (size < 0) throw new ProtocolError('server sent no export information');
      const rest = reader.detach();
      const client = new NbdClient(socket, size, flags, maxBlock, preferred);
      if (rest.length) client.onData(rest);
      socket.resume();
      return client;
    })();
    const ms = opts.timeoutMs ?? 10_000;
    try {
      return await withDeadline(handshake, ms, 'NBD handshake', {
        onTimeout: (err) => {
          reader.fail(err);
          socket.destroy();
        },
      });
    } catch (e) {
      socket.destroy();
      throw e;
    }
  }

  async size(): Promise<number> {
    return this.exportSize;
  }

  readAt(buf: Uint8Array, offset: number): Promise<void> {
    return this.splitting(buf.length, (o, n) => this.request(CMD_READ, 0, offset + o, n, undefined, buf.subarray(o, o + n)));
  }

  writeAt(data: Uint8Array, offset: number, opts?: WriteOptions): Promise<void> {
    const flags = opts?.fua ? CMD_FLAG_FUA : 0;
    return this.splitting(data.length, (o, n) => this.request(CMD_WRITE, flags, offset + o, n, data.subarray(o, o + n)));
  }

  flush(): Promise<void> {
    return this.request(CMD_FLUSH, 0, 0, 0);
  }

  trim(offset: number, length: number, opts?: WriteOptions): Promise<void> {
    if (!this.caps.canTrim) return Promise.resolve();
    return this.splitting(length, (o, n) => this.request(CMD_TRIM, opts?.fua ? CMD_FLAG_FUA : 0, offset + o, n));
  }

  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    const flags = (opts?.fua ? CMD_FLAG_FUA : 0) | (opts?.noHole ? CMD_FLAG_NO_HOLE : 0);
    return this.splitting(length, (o, n) => this.request(CMD_WRITE_ZEROES, flags, offset + o, n));
  }

  /** VECTORED: scattered pieces go out as one WRITE (header and pieces corked together), no gather copy. */
  capability<T>(key: Capability<T>): T | undefined {
    return offer(key, this, VECTORED);
  }

  writev(parts: readonly Uint8Array[], offset: number, opts?: WriteOptions): Promise<void> {
    let total = 0;
    for (const p of parts) total += p.length;
    // Above the server's maximum block the pieces must be re-cut: split the gathered buffer.
    if (total > this.maxBlock) return this.writeAt(Buffer.concat(parts), offset, opts);
    return this.request(CMD_WRITE, opts?.fua ? CMD_FLAG_FUA : 0, offset, total, parts);
  }

  /** Send DISC after in-flight requests finish, then close. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true; // refuses new requests; in-flight ones still complete
    if (this.inFlight > 0) await new Promise<void>((r) => (this.drained = r));
    if (!this.failure) this.socket.end(this.requestHeader(CMD_DISC, 0, 0, 0, 0));
    this.socket.destroy();
  }

  /** Pieces of at most the server's maximum block, all-settled (base/split-range.ts). */
  private splitting(length: number, one: (at: number, n: number) => Promise<void>): Promise<void> {
    return splitRange(length, this.maxBlock, one);
  }

  private requestHeader(type: number, flags: number, handle: number, offset: number, length: number): Buffer {
    const h = Buffer.allocUnsafe(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(handle, 12);
    h.writeUInt32BE(Math.floor(offset / 0x100000000), 16);
    h.writeUInt32BE(offset >>> 0, 20);
    h.writeUInt32BE(length, 24);
    return h;
  }

  private request(type: number, flags: number, offset: number, length: number, payload?: Uint8Array | readonly Uint8Array[], into?: Uint8Array): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new ClosedError('NBD client'));
    const handle = this.nextHandle;
    this.nextHandle = this.nextHandle === 0xffffffff ? 1 : this.nextHandle + 1;
    this.inFlight++;
    const settled = () => {
      if (--this.inFlight === 0) this.drained?.();
    };
    return new Promise<void>((resolve, reject) => {
      this.pending.set(handle, {
        type,
        into,
        resolve: () => (settled(), resolve()),
        reject: (e) => (settled(), reject(e)),
      });
      const h = this.requestHeader(type, flags, handle, offset, length);
      if (payload) {
        this.socket.cork();
        this.socket.write(h);
        if (payload instanceof Uint8Array) this.socket.write(payload);
        else for (const p of payload) this.socket.write(p);
        this.socket.uncork();
      } else this.socket.write(h);
    });
  }

  private onData(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.current && this.dataLeft > 0) {
        const n = Math.min(this.dataLeft, chunk.length - at);
        this.current.into!.set(chunk.subarray(at, at + n), this.dataAt);
        this.dataAt += n;
        this.dataLeft -= n;
        at += n;
        if (this.dataLeft === 0) {
          const p = this.current;
          this.current = undefined;
          p.resolve();
        }
        continue;
      }
      const n = Math.min(16 - this.headerFill, chunk.length - at);
      chunk.copy(this.header, this.headerFill, at, at + n);
      this.headerFill += n;
      at += n;
      if (this.headerFill < 16) return;
      this.headerFill = 0;
      if (this.header.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
        this.fail(new ProtocolError('bad reply magic from NBD server'));
        this.socket.destroy();
        return;
      }
      const errno = this.header.readUInt32BE(4);
      const handle = this.header.readUInt32BE(12);
      const p = this.pending.get(handle);
      if (!p) {
        this.fail(new ProtocolError(`reply for unknown handle ${handle}`));
        this.socket.destroy();
        return;
      }
      this.pending.delete(handle);
      if (errno !== 0) {
        const code = codeOfNbdErrno(errno);
        p.reject(new QuicmapError(code, `NBD server answered ${code} (errno ${errno})`));
      } else if (p.type === CMD_READ && p.into && p.into.length > 0) {
        this.current = p;
        this.dataLeft = p.into.length;
        this.dataAt = 0;
      } else p.resolve();
    }
  }

  private fail(err: Error): void {
    if (this.failure) return;
    this.failure = err;
    if (this.current) {
      this.current.reject(err);
      this.current = undefined;
    }
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}
