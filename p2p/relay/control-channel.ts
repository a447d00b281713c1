/**
 * Length-prefixed control messages (messages.ts) on one ByteStream, in both
 * directions. Bounded: a message above MAX_CONTROL_MESSAGE kills the stream
 * (EPROTO) before its body is buffered. Writes are serialised.
 */
import { QuicmapError } from '../../base/errors.ts';
import { ByteAccumulator } from '../../transports/byte-accumulator.ts';
import type { ByteStream } from '../../transports/transport.ts';
import { MAX_CONTROL_MESSAGE, encodeControl, type ClientMessage, type RelayMessage } from './messages.ts';

export class ControlChannel {
  private readonly acc = new ByteAccumulator();
  private writing: Promise<void> = Promise.resolve();
  readonly stream: ByteStream;

  constructor(stream: ByteStream) {
    this.stream = stream;
  }

  /** Queue a message; rejects if the stream is gone. */
  send(m: ClientMessage | RelayMessage): Promise<void> {
    const bytes = encodeControl(m);
    const p = this.writing.then(() => this.stream.write(bytes));
    this.writing = p.catch(() => {});
    return p;
  }

  /** The next message body, or null once the peer closed the stream. */
  async next(): Promise<Buffer | null> {
    for (;;) {
      if (this.acc.length >= 4) {
        const n = this.acc.peekU32(0);
        if (n > MAX_CONTROL_MESSAGE) {
          const e = new QuicmapError('EPROTO', `relay: control message of ${n} bytes exceeds ${MAX_CONTROL_MESSAGE}`);
          this.stream.reset(e);
          throw e;
        }
        if (this.acc.length >= 4 + n) {
          this.acc.take(4);
          return Buffer.from(this.acc.take(n));
        }
      }
      const chunk = await this.stream.read();
      if (chunk === null) {
        if (this.acc.length > 0) throw new QuicmapError('EPROTO', 'relay: control stream ended inside a message');
        return null;
      }
      this.acc.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    }
  }

  close(): void {
    this.stream.reset();
  }
}
