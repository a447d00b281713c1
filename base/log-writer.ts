/**
 * A log writer that never blocks the event loop. Node writes to a pipe on
 * stderr synchronously on Linux, so a reader that does not keep up (a full
 * pipe) would stall every socket the process serves. This writer queues
 * lines (bounded by bytes), writes them one at a time with fs.write (a
 * thread-pool write that may block that one thread, never the loop; EAGAIN on
 * a non-blocking fd is retried later), and drops lines beyond the bound,
 * saying how many once it catches up.
 */
import { write, writeSync } from 'node:fs';

export interface LogWriterOptions {
  /** File descriptor to write to. Default 2 (stderr). */
  fd?: number;
  /** Bytes queued before lines are dropped. Default 1 MiB. */
  maxQueuedBytes?: number;
}

export class LogWriter {
  private readonly fd: number;
  private readonly maxQueued: number;
  private queue: string[] = [];
  private queuedBytes = 0;
  private writing = false;
  private dropped = 0;
  private idle: Array<() => void> = [];

  constructor(opts: LogWriterOptions = {}) {
    this.fd = opts.fd ?? 2;
    this.maxQueued = opts.maxQueuedBytes ?? 1024 * 1024;
  }

  get droppedLines(): number {
    return this.dropped;
  }

  /** Queue one line (a newline is added). Never blocks, never throws. */
  line(message: string): void {
    const text = `${message}\n`;
    if (this.queuedBytes + text.length > this.maxQueued) {
      this.dropped++;
      return;
    }
    if (this.dropped > 0) {
      const note = `[${this.dropped} log line${this.dropped === 1 ? '' : 's'} dropped: stderr is not keeping up]\n`;
      this.dropped = 0;
      this.queue.push(note);
      this.queuedBytes += note.length;
    }
    this.queue.push(text);
    this.queuedBytes += text.length;
    this.pump();
  }

  /** Resolves once everything queued is written, or after `timeoutMs`. */
  flush(timeoutMs = 2000): Promise<void> {
    if (!this.writing && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const t = setTimeout(resolve, timeoutMs);
      t.unref();
      this.idle.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  /** Last resort at exit: try to write what is queued synchronously, once. */
  flushSync(): void {
    const text = this.queue.join('');
    this.queue = [];
    this.queuedBytes = 0;
    if (!text) return;
    try {
      writeSync(this.fd, text);
    } catch {}
  }

  private pump(): void {
    if (this.writing) return;
    if (this.queue.length === 0) {
      const w = this.idle.splice(0);
      for (const f of w) f();
      return;
    }
    this.writing = true;
    // Write everything queued in one call; the queue is bounded, so is the call.
    const text = this.queue.join('');
    this.queue = [];
    const buf = Buffer.from(text);
    const done = (written: number): void => {
      this.queuedBytes -= text.length;
      this.writing = false;
      if (written < buf.length) {
        // Short write: put the rest back in front.
        const rest = buf.subarray(written).toString();
        this.queue.unshift(rest);
        this.queuedBytes += rest.length;
      }
      this.pump();
    };
    write(this.fd, buf, 0, buf.length, null, (err, written) => {
      if (err && (err as NodeJS.ErrnoException).code === 'EAGAIN') {
        this.queuedBytes -= text.length;
        this.queue.unshift(text);
        this.queuedBytes += text.length;
        setTimeout(() => {
          this.writing = false;
          this.pump();
        }, 20).unref();
        return;
      }
      // Other errors (EPIPE: nobody reads stderr any more): drop and go on.
      done(err ? buf.length : written);
    });
  }
}
