/**
 * The fixed-newstyle handshake as a sans-IO state machine: feed it the bytes
 * the client sent (`push`), take the bytes to send (`takeOutput`), and read
 * the outcome — keep going, enter transmission on an export, or close.
 *
 * Bounded: an option whose declared length is above MAX_OPTION_LENGTH is
 * skipped without being buffered and answered with ERR_TOO_BIG, so a hostile
 * client cannot make the server hold more than a few KiB per connection. The
 * replies are bounded too: once `maxOutput` bytes are queued and not yet
 * taken, `push` stops before the next option (`waitingForOutput` is set) and
 * the caller, once the client has read them, calls `push` again with no new
 * bytes. A client that sends LIST or INFO options without reading the
 * replies therefore fills its own socket buffers, not the server.
 */
import {
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_DESCRIPTION,
  INFO_EXPORT,
  INFO_NAME,
  MAX_STRING,
  NBDMAGIC,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_LIST_META_CONTEXT,
  OPT_SET_META_CONTEXT,
  OPT_STARTTLS,
  OPT_STRUCTURED_REPLY,
  META_BASE_ALLOCATION,
  META_BASE_ALLOCATION_ID,
  REP_ACK,
  REP_META_CONTEXT,
  REP_ERR_INVALID,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_SERVER,
} from './constants.ts';
import type { ExportCatalog, ExportInfo } from './export.ts';

/** Largest option payload we buffer: a GO with a 4096-byte name and a few info requests fits easily. */
export const MAX_OPTION_LENGTH = 16 * 1024;

/** Reply bytes queued before the handshake stops handling options until they are taken. */
export const DEFAULT_MAX_OUTPUT = 64 * 1024;

export type HandshakeOutcome =
  | { kind: 'continue' }
  | {
      kind: 'transmission';
      export: ExportInfo;
      rest: Buffer;
      /** The client negotiated structured replies (OPT_STRUCTURED_REPLY). */
      structured: boolean;
      /** base:allocation was selected for this export: BLOCK_STATUS is allowed. */
      blockStatus: boolean;
    }
  | { kind: 'close'; reason: string };

type State = 'clientFlags' | 'optionHeader' | 'optionData' | 'skipping' | 'done';

const EMPTY = Buffer.alloc(0);

export class NbdHandshake {
  private buf: Buffer = EMPTY;
  private state: State = 'clientFlags';
  private out: Buffer[] = [];
  private outBytes = 0;
  private stoppedForOutput = false;
  private noZeroes = false;
  private option = 0;
  private optionLength = 0;
  private skipRemaining = 0;
  private structured = false;
  /** Export for which base:allocation was selected by SET_META_CONTEXT. */
  private metaExport: string | undefined;

  private readonly catalog: ExportCatalog;
  private readonly maxOutput: number;
  constructor(catalog: ExportCatalog, maxOutput = DEFAULT_MAX_OUTPUT) {
    this.catalog = catalog;
    this.maxOutput = maxOutput;
  }

  /** The server's opening bytes: magic, IHAVEOPT, handshake flags. */
  static greeting(): Buffer {
    const b = Buffer.alloc(18);
    b.writeBigUInt64BE(NBDMAGIC, 0);
    b.writeBigUInt64BE(IHAVEOPT, 8);
    b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    return b;
  }

  /** Bytes to send, in order; empties the queue. */
  takeOutput(): Buffer[] {
    const o = this.out;
    this.out = [];
    this.outBytes = 0;
    return o;
  }

  /** The last push stopped with options left to handle because maxOutput bytes of replies are waiting. */
  get waitingForOutput(): boolean {
    return this.stoppedForOutput;
  }

  /** The option being handled, for logs. */
  get currentOption(): number {
    return this.option;
  }

  push(chunk: Buffer): HandshakeOutcome {
    if (chunk.length) this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    this.stoppedForOutput = false;
    for (;;) {
      switch (this.state) {
        case 'clientFlags': {
          if (this.buf.length < 4) return { kind: 'continue' };
          const flags = this.buf.readUInt32BE(0);
          this.buf = this.buf.subarray(4);
          if (flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) {
            return this.close(`client sent unknown handshake flags 0x${flags.toString(16)}`);
          }
          this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
          this.state = 'optionHeader';
          break;
        }
        case 'optionHeader': {
          if (this.buf.length < OPTION_HEADER_SIZE) return { kind: 'continue' };
          if (this.outBytes >= this.maxOutput) {
            this.stoppedForOutput = true;
            return { kind: 'continue' };
          }
          if (this.buf.readBigUInt64BE(0) !== IHAVEOPT) return this.close('bad option magic (expected IHAVEOPT)');
          this.option = this.buf.readUInt32BE(8);
          this.optionLength = this.buf.readUInt32BE(12);
          this.buf = this.buf.subarray(OPTION_HEADER_SIZE);
          if (this.optionLength > MAX_OPTION_LENGTH) {
            if (this.option === OPT_EXPORT_NAME) return this.close('EXPORT_NAME option too long');
            this.skipRemaining = this.optionLength;
            this.state = 'skipping';
          } else this.state = 'optionData';
          break;
        }
        case 'skipping': {
          const n = Math.min(this.skipRemaining, this.buf.length);
          this.buf = this.buf.subarray(n);
          this.skipRemaining -= n;
          if (this.skipRemaining > 0) return { kind: 'continue' };
          this.reply(this.option, REP_ERR_TOO_BIG, Buffer.from(`option data of ${this.optionLength} bytes is too long`));
          this.state = 'optionHeader';
          break;
        }
        case 'optionData': {
          if (this.buf.length < this.optionLength) return { kind: 'continue' };
          const data = this.buf.subarray(0, this.optionLength);
          this.buf = this.buf.subarray(this.optionLength);
          this.state = 'optionHeader';
          const outcome = this.handleOption(this.option, data);
          if (outcome.kind !== 'continue') return outcome;
          break;
        }
        case 'done':
          return { kind: 'close', reason: 'handshake already finished' };
      }
    }
  }

  private close(reason: string): HandshakeOutcome {
    this.state = 'done';
    return { kind: 'close', reason };
  }

  private reply(option: number, type: number, data: Buffer = EMPTY): void {
    const h = Buffer.allocUnsafe(20);
    h.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(type, 12);
    h.writeUInt32BE(data.length, 16);
    this.out.push(h);
    if (data.length) this.out.push(data);
    this.outBytes += 20 + data.length;
  }

  private error(option: number, type: number, message: string): HandshakeOutcome {
    this.reply(option, type, Buffer.from(message));
    return { kind: 'continue' };
  }

  private resolve(name: string): ExportInfo | undefined {
    return this.catalog.get(name === '' ? (this.catalog.defaultName() ?? '') : name);
  }

  private handleOption(option: number, data: Buffer): HandshakeOutcome {
    switch (option) {
      case OPT_EXPORT_NAME: {
        const exp = this.resolve(data.toString('utf8'));
        // The spec leaves no way to refuse EXPORT_NAME but closing.
        if (!exp) return this.close(`client asked for unknown export "${data.toString('utf8')}"`);
        const b = Buffer.alloc(this.noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(exp.size), 0);
        b.writeUInt16BE(exp.flags, 8);
        this.out.push(b);
        this.outBytes += b.length;
        return this.enter(exp);
      }
      case OPT_ABORT:
        this.reply(option, REP_ACK);
        return this.close('client aborted the handshake');
      case OPT_LIST: {
        if (data.length) return this.error(option, REP_ERR_INVALID, 'LIST takes no data');
        for (const e of this.catalog.list()) {
          const name = Buffer.from(e.name);
          const desc = Buffer.from(e.description);
          const body = Buffer.allocUnsafe(4 + name.length + desc.length);
          body.writeUInt32BE(name.length, 0);
          name.copy(body, 4);
          desc.copy(body, 4 + name.length);
          this.reply(option, REP_SERVER, body);
        }
        this.reply(option, REP_ACK);
        return { kind: 'continue' };
      }
      case OPT_INFO:
      case OPT_GO:
        return this.infoOrGo(option, data);
      case OPT_STRUCTURED_REPLY:
        if (data.length) return this.error(option, REP_ERR_INVALID, 'STRUCTURED_REPLY takes no data');
        this.structured = true;
        this.reply(option, REP_ACK);
        return { kind: 'continue' };
      case OPT_LIST_META_CONTEXT:
      case OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      case OPT_STARTTLS:
        return this.error(option, REP_ERR_UNSUP, 'TLS is not offered; quicmap encrypts between peers, NBD stays local');
      default:
        // EXTENDED_HEADERS and anything unknown.
        return this.error(option, REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private infoOrGo(option: number, data: Buffer): HandshakeOutcome {
    if (data.length < 6) return this.error(option, REP_ERR_INVALID, 'INFO/GO data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > MAX_STRING || 4 + nameLen + 2 > data.length) return this.error(option, REP_ERR_INVALID, 'bad export name length');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const nInfo = data.readUInt16BE(4 + nameLen);
    if (data.length !== 4 + nameLen + 2 + 2 * nInfo) return this.error(option, REP_ERR_INVALID, 'bad information request count');
    const requested = new Set<number>();
    for (let i = 0; i < nInfo; i++) requested.add(data.readUInt16BE(4 + nameLen + 2 + 2 * i));
    const exp = this.resolve(name);
    if (!exp) return this.error(option, REP_ERR_UNKNOWN, `no export named "${name}"`);

    const info = Buffer.allocUnsafe(12);
    info.writeUInt16BE(INFO_EXPORT, 0);
    info.writeBigUInt64BE(BigInt(exp.size), 2);
    info.writeUInt16BE(exp.flags, 10);
    this.reply(option, REP_INFO, info);
    if (requested.has(INFO_NAME)) {
      this.reply(option, REP_INFO, Buffer.concat([u16(INFO_NAME), Buffer.from(exp.name)]));
    }
    if (requested.has(INFO_DESCRIPTION) && exp.description) {
      this.reply(option, REP_INFO, Buffer.concat([u16(INFO_DESCRIPTION), Buffer.from(exp.description)]));
    }
    // Block sizes are sent even unrequested (the spec allows it); we accept
    // any alignment, so a client that ignores them is still served.
    const bs = Buffer.allocUnsafe(14);
    bs.writeUInt16BE(INFO_BLOCK_SIZE, 0);
    bs.writeUInt32BE(exp.minBlock, 2);
    bs.writeUInt32BE(exp.preferredBlock, 6);
    bs.writeUInt32BE(exp.maxBlock, 10);
    this.reply(option, REP_INFO, bs);
    this.reply(option, REP_ACK);
    return option === OPT_GO ? this.enter(exp) : { kind: 'continue' };
  }

  /**
   * LIST/SET_META_CONTEXT: we offer one context, base:allocation. SET needs
   * structured replies first and selects it for the named export (a later GO
   * on another export starts with none).
   */
  private metaContext(option: number, data: Buffer): HandshakeOutcome {
    const set = option === OPT_SET_META_CONTEXT;
    if (set && !this.structured) return this.error(option, REP_ERR_INVALID, 'negotiate STRUCTURED_REPLY before SET_META_CONTEXT');
    if (data.length < 8) return this.error(option, REP_ERR_INVALID, 'meta context data too short');
    const nameLen = data.readUInt32BE(0);
    if (nameLen > MAX_STRING || 4 + nameLen + 4 > data.length) return this.error(option, REP_ERR_INVALID, 'bad export name length');
    const name = data.toString('utf8', 4, 4 + nameLen);
    const count = data.readUInt32BE(4 + nameLen);
    const queries: string[] = [];
    let at = 8 + nameLen;
    for (let i = 0; i < count; i++) {
      if (at + 4 > data.length) return this.error(option, REP_ERR_INVALID, 'truncated meta context query');
      const len = data.readUInt32BE(at);
      if (len > MAX_STRING || at + 4 + len > data.length) return this.error(option, REP_ERR_INVALID, 'bad meta context query length');
      queries.push(data.toString('utf8', at + 4, at + 4 + len));
      at += 4 + len;
    }
    if (at !== data.length) return this.error(option, REP_ERR_INVALID, 'trailing bytes after meta context queries');
    const exp = this.resolve(name);
    if (!exp) return this.error(option, REP_ERR_UNKNOWN, `no export named "${name}"`);
    const matches = set
      ? queries.includes(META_BASE_ALLOCATION)
      : queries.length === 0 || queries.some((q) => q === 'base:' || q === META_BASE_ALLOCATION);
    if (set) this.metaExport = matches ? exp.name : undefined;
    if (matches) {
      const body = Buffer.allocUnsafe(4 + META_BASE_ALLOCATION.length);
      body.writeUInt32BE(set ? META_BASE_ALLOCATION_ID : 0, 0);
      body.write(META_BASE_ALLOCATION, 4);
      this.reply(option, REP_META_CONTEXT, body);
    }
    this.reply(option, REP_ACK);
    return { kind: 'continue' };
  }

  private enter(exp: ExportInfo): HandshakeOutcome {
    this.state = 'done';
    const rest = this.buf;
    this.buf = EMPTY;
    return { kind: 'transmission', export: exp, rest, structured: this.structured, blockStatus: this.structured && this.metaExport === exp.name };
  }
}

function u16(v: number): Buffer {
  const b = Buffer.allocUnsafe(2);
  b.writeUInt16BE(v, 0);
  return b;
}
