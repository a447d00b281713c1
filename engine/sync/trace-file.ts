/**
 * A TraceRecorder written to a file as it goes (`--record-trace FILE`):
 * the header at open, new first touches appended every `intervalMs` and at
 * close, so a trace survives a mount that is killed (minus the last
 * interval).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { QuicmapError } from '../../base/errors.ts';
import { TraceRecorder } from './access-trace.ts';

export class TraceFile {
  readonly recorder: TraceRecorder;
  private readonly fh: FileHandle;
  private readonly timer: NodeJS.Timeout;
  private writing: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(fh: FileHandle, recorder: TraceRecorder, intervalMs: number) {
    this.fh = fh;
    this.recorder = recorder;
    this.timer = setInterval(() => void this.sync(), intervalMs);
    this.timer.unref();
  }

  static async create(path: string, chunks: number, chunkSize: number, intervalMs = 500): Promise<TraceFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'w');
    } catch (e) {
      throw new QuicmapError('EINVAL', `cannot write the trace ${path}: ${(e as Error).message}`);
    }
    const r = new TraceRecorder(chunks, chunkSize);
    await fh.write(r.header());
    return new TraceFile(fh, r, intervalMs);
  }

  touch(i: number): void {
    this.recorder.touch(i);
  }

  sync(): Promise<void> {
    this.writing = this.writing.then(async () => {
      const lines = this.recorder.takeNewLines();
      if (lines) await this.fh.write(lines);
    });
    return this.writing;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    await this.sync().catch(() => {});
    await this.fh.close();
  }
}
