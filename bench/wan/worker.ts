/**
 * The processes the lab runs inside its namespaces (`ip netns exec`):
 *   worker.ts server HOST [S,…]  starts each subject's server on HOST (every
 *                           subject, or those named), prints
 *                           one JSON line {subject: ServerInfo}, serves
 *                           until stdin closes
 *   worker.ts client        reads one JSON request per line on stdin
 *                           ({id, op, subject, info, ...}), runs the
 *                           workload, answers {id, result} or {id, error};
 *                           op 'nbdread' reads a range of an NBD export
 *                           in the client namespace (a mount's working set)
 */
import { createInterface } from 'node:readline';
import { generateIdentity } from '../../crypto/identity.ts';
import { createHash } from 'node:crypto';
import { NbdClient } from '../../engine/nbd/client.ts';
import { ALL_SUBJECTS, subjectUnavailable, startServer, type RunningServer, type ServerInfo, type SubjectName } from './subjects.ts';
import { bulk, hol, rr, setup } from './workloads.ts';

export interface WorkRequest {
  id: number;
  op: 'setup' | 'rr' | 'bulk' | 'hol' | 'nbdread';
  subject: SubjectName;
  info: ServerInfo;
  /** nbdread: the export, the range, and how it is read. */
  uri?: string;
  offset?: number;
  length?: number;
  requestBytes?: number;
  inFlight?: number;
  n?: number;
  durationMs?: number;
  maxSamples?: number;
}

async function server(host: string, subjects: SubjectName[]): Promise<void> {
  const identity = await generateIdentity();
  const running: RunningServer[] = [];
  const infos: Record<string, ServerInfo> = {};
  for (const s of subjects) {
    if (subjectUnavailable(s)) continue; // the orchestrator reports why
    const r = await startServer(s, host, identity);
    running.push(r);
    infos[s] = r.info;
  }
  process.stdout.write(`${JSON.stringify(infos)}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => {
    void Promise.allSettled(running.map((r) => r.stop())).finally(() => process.exit(0));
  });
}

async function client(): Promise<void> {
  const identity = await generateIdentity();
  const rl = createInterface({ input: process.stdin });
  // One request at a time: workloads must not overlap.
  for await (const line of rl) {
    if (!line.trim()) continue;
    const q = JSON.parse(line) as WorkRequest;
    try {
      let result: unknown;
      switch (q.op) {
        case 'setup':
          result = await setup(q.subject, q.info, identity, q.n ?? 5);
          break;
        case 'rr':
          result = await rr(q.subject, q.info, identity, q.durationMs ?? 2000, q.maxSamples ?? 200);
          break;
        case 'bulk':
          result = await bulk(q.subject, q.info, identity, q.durationMs ?? 3000);
          break;
        case 'hol':
          result = await hol(q.subject, q.info, identity, q.durationMs ?? 3000);
          break;
        case 'nbdread':
          result = await nbdRead(q.uri!, q.offset ?? 0, q.length ?? 0, q.requestBytes ?? 256 * 1024, q.inFlight ?? 8);
          break;
      }
      process.stdout.write(`${JSON.stringify({ id: q.id, result })}\n`);
    } catch (e) {
      process.stdout.write(`${JSON.stringify({ id: q.id, error: (e as Error).message ?? String(e) })}\n`);
    }
  }
  process.exit(0);
}

/** Read [offset, offset+length) of an NBD export, `inFlight` requests at a time; the data's SHA-256 and the time taken. */
async function nbdRead(uri: string, offset: number, length: number, requestBytes: number, inFlight: number): Promise<{ ms: number; sha256: string }> {
  const t0 = process.hrtime.bigint();
  const c = await NbdClient.connect(uri, { timeoutMs: 30_000 });
  try {
    const parts: Buffer[] = [];
    let next = offset;
    const end = offset + length;
    await Promise.all(
      Array.from({ length: inFlight }, async () => {
        while (next < end) {
          const at = next;
          const n = Math.min(requestBytes, end - at);
          next += n;
          const b = Buffer.alloc(n);
          await c.readAt(b, at);
          parts[(at - offset) / requestBytes] = b;
        }
      }),
    );
    const h = createHash('sha256');
    for (const p of parts) h.update(p);
    return { ms: Number(process.hrtime.bigint() - t0) / 1e6, sha256: h.digest('hex') };
  } finally {
    await c.close();
  }
}

const [mode, host, only] = process.argv.slice(2);
if (mode === 'server') await server(host ?? '0.0.0.0', only ? (only.split(',') as SubjectName[]) : ALL_SUBJECTS);
else if (mode === 'client') await client();
else {
  process.stderr.write('usage: worker.ts server HOST [SUBJECT,…] | worker.ts client\n');
  process.exit(2);
}
