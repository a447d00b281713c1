/**
 * The control socket every long-running command opens: a unix socket, mode
 * 0600 (only its owner may ask), one JSON request per connection
 * ({"op":"status"}) answered with one JSON line. Bounded: 8 clients at
 * once, requests up to 4 KiB, 2 s to send one.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { chmodSync, mkdirSync, rmSync, existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { homedir } from 'node:os';
import { QuicmapError } from '../../base/errors.ts';

const MAX_REQUEST = 4096;
const MAX_CLIENTS = 8;

/** Where control sockets live unless --control says otherwise. */
export function controlDir(): string {
  return join(process.env.QUICMAP_HOME ?? join(homedir(), '.config', 'quicmap'), 'run');
}

export function defaultControlPath(command: string): string {
  return join(controlDir(), `${command}-${process.pid}.sock`);
}

/** The control sockets in the default directory (for `quicmap status` without --control). */
export function listControlSockets(): string[] {
  const dir = controlDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir).filter((f) => f.endsWith('.sock')).map((f) => join(dir, f));
}

export class ControlServer {
  readonly path: string;
  private readonly server: Server;
  private clients = 0;

  private constructor(path: string, server: Server) {
    this.path = path;
    this.server = server;
  }

  static async start(path: string, handle: (request: Record<string, unknown>) => Promise<unknown> | unknown): Promise<ControlServer> {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    // A socket left by a process that died: nobody answers on it.
    if (existsSync(path)) {
      const alive = await new Promise<boolean>((resolve) => {
        const s = connect(path);
        s.once('connect', () => (s.destroy(), resolve(true)));
        s.once('error', () => resolve(false));
      });
      if (alive) throw new QuicmapError('EBUSY', `control socket ${path} is in use by another quicmap process`);
      rmSync(path, { force: true });
    }
    const server = createServer();
    const cs = new ControlServer(path, server);
    server.on('connection', (s) => cs.serve(s, handle));
    const oldMask = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', (e) => reject(new QuicmapError('EIO', `cannot open control socket ${path}: ${e.message}`, { cause: e })));
        server.listen(path, () => resolve());
      });
    } finally {
      process.umask(oldMask);
    }
    chmodSync(path, 0o600);
    server.unref();
    return cs;
  }

  private serve(s: Socket, handle: (request: Record<string, unknown>) => Promise<unknown> | unknown): void {
    s.on('error', () => {});
    if (this.clients >= MAX_CLIENTS) {
      s.destroy();
      return;
    }
    this.clients++;
    s.once('close', () => this.clients--);
    const timer = setTimeout(() => s.destroy(), 2_000);
    let buf = '';
    s.setEncoding('utf8');
    s.on('data', async (d: string) => {
      buf += d;
      if (buf.length > MAX_REQUEST) return s.destroy();
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.removeAllListeners('data');
      let reply: unknown;
      try {
        const req = JSON.parse(buf.slice(0, nl)) as unknown;
        if (!req || typeof req !== 'object') throw new QuicmapError('EINVAL', 'request must be a JSON object');
        reply = { ok: true, result: await handle(req as Record<string, unknown>) };
      } catch (e) {
        reply = { ok: false, error: (e as Error).message };
      }
      s.end(`${JSON.stringify(reply)}\n`);
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((r) => this.server.close(() => r()));
    rmSync(this.path, { force: true });
  }
}

/** Ask a control socket; resolves to its `result`, throws its error. */
export function askControl(path: string, request: Record<string, unknown>, timeoutMs = 5_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new QuicmapError('ETIMEDOUT', `control socket ${path}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.setEncoding('utf8');
    s.once('connect', () => s.write(`${JSON.stringify(request)}\n`));
    s.on('data', (d: string) => (buf += d));
    s.once('error', (e) => {
      clearTimeout(timer);
      reject(new QuicmapError('EIO', `cannot reach control socket ${path}: ${e.message}`, { cause: e }));
    });
    s.once('end', () => {
      clearTimeout(timer);
      try {
        const r = JSON.parse(buf) as { ok: boolean; result?: unknown; error?: string };
        if (r.ok) resolve(r.result);
        else reject(new QuicmapError('EIO', `control socket ${path}: ${r.error}`));
      } catch {
        reject(new QuicmapError('EPROTO', `control socket ${path}: answer is not JSON`));
      }
    });
  });
}
