/**
 * Helpers for the encrypted RAM tests: storage peers and RAM nodes as real
 * processes, their status, and a scanner of a process's memory
 * (/proc/PID/maps + /proc/PID/mem) and of a directory for a byte pattern.
 */
import { closeSync, cpSync, openSync, readFileSync, readSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import * as assert from 'uvu/assert';
import { join } from 'node:path';
import { killTree, type Scope } from '../helpers/env.ts';
import { quicmap, start, tool, type Proc } from '../cli-share-mount/procs.ts';

export interface StoreProc extends Proc {
  ticket: string;
  address: string;
}

export async function startStore(s: Scope, home: string, args: { quota?: string; backend?: string; identity?: string; listen?: string } = {}): Promise<StoreProc> {
  const p = await start(
    s,
    ['store', '--listen', args.listen ?? '127.0.0.1:0', '--quota', args.quota ?? '256MiB', '--transport', 'tcp', '--json', '--identity', args.identity ?? join(home, `store-${Math.random().toString(36).slice(2)}.id`), ...(args.backend ? ['--backend', args.backend] : [])],
    home,
    1,
    60_000,
  );
  const j = JSON.parse(p.first) as { ticket: string; address: string };
  return { ...p, ticket: j.ticket, address: j.address };
}

export interface RamProc extends Proc {
  uri: string;
  control: string;
}

export async function startRam(s: Scope, home: string, tickets: string[], args: string[] = []): Promise<RamProc> {
  const control = join(home, `ram-${Math.random().toString(36).slice(2)}.ctl`);
  const sock = join(home, `ram-${Math.random().toString(36).slice(2)}.sock`);
  // With --mount the mmap-able path is the second line.
  const p = await start(s, ['ram', '--store', tickets.join(','), '--socket', sock, '--control', control, '--identity', join(home, 'ram.id'), ...args], home, args.includes('--mount') ? 2 : 1, 60_000);
  return { ...p, uri: p.first, control };
}

export interface PeerStatus {
  name: string;
  state: string;
  stale: number;
  tampered: number;
  missing: number;
  repaired: number;
  quotaRefusals: number;
  used: number;
  address: string;
}
export interface RamStatus {
  cache: { cachedChunks: number; capacityChunks: number };
  replication: { replicas: number; chunks: number; underReplicated: number; copied: number; lost: number; running: boolean };
  peers: PeerStatus[];
}

export async function ramStatus(home: string, r: RamProc): Promise<RamStatus> {
  const res = await quicmap(['status', '--control', r.control, '--json'], home);
  if (res.code !== 0) throw new Error(`status failed: ${res.stderr}`);
  return (JSON.parse(res.stdout) as { ram: RamStatus }).ram;
}

export async function waitStatus(home: string, r: RamProc, what: string, ok: (st: RamStatus) => boolean, ms = 60_000): Promise<RamStatus> {
  const end = Date.now() + ms;
  let last: RamStatus | undefined;
  for (;;) {
    last = await ramStatus(home, r);
    if (ok(last)) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last status ${JSON.stringify(last)}\nram stderr:\n${r.stderr().slice(-3000)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

/** Copy a file into the export (nbdcopy; it flushes at the end). */
export async function nbdWrite(file: string, uri: string): Promise<void> {
  const r = await tool('nbdcopy', ['--flush', file, uri], 120_000);
  if (r.code !== 0) throw new Error(`nbdcopy ${file} -> ${uri} failed: ${r.stderr}`);
}

export async function nbdRead(uri: string, file: string): Promise<{ code: number | null; stderr: string }> {
  return tool('nbdcopy', [uri, file], 120_000);
}

/** A buffer of `size` bytes: `marker` repeated, with the repeat count between copies so no two chunks are equal. */
export function pattern(size: number, marker: string): Buffer {
  const b = Buffer.alloc(size);
  for (let at = 0, n = 0; at < size; n++) {
    at += b.write(`${marker}:${n.toString(16).padStart(8, '0')};`, at);
  }
  return b;
}

/** Whether `needle` occurs in the readable memory of process `pid` (as root: /proc/PID/mem). */
export function memoryContains(pid: number, needle: Buffer): boolean {
  const maps = readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n');
  const fd = openSync(`/proc/${pid}/mem`, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    for (const line of maps) {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/.exec(line);
      if (!m || !m[3]!.startsWith('r') || line.includes('[vvar') || line.includes('[vsyscall]')) continue;
      const from = Number.parseInt(m[1]!, 16);
      const to = Number.parseInt(m[2]!, 16);
      let tail = Buffer.alloc(0);
      for (let at = from; at < to; at += buf.length) {
        const len = Math.min(buf.length, to - at);
        let n: number;
        try {
          n = readSync(fd, buf, 0, len, at);
        } catch {
          break; // an unreadable region (guard pages): skip it
        }
        const window = Buffer.concat([tail, buf.subarray(0, n)]);
        if (window.includes(needle)) return true;
        tail = Buffer.from(window.subarray(Math.max(0, window.length - needle.length + 1)));
        if (n < len) break;
      }
    }
    return false;
  } finally {
    closeSync(fd);
  }
}

/** Every file under `dir`. */
export function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

export function dirContains(dir: string, needle: Buffer): boolean {
  return filesUnder(dir).some((f) => readFileSync(f).includes(needle));
}

export const MiB = 1024 * 1024;
export const RAM = ['--size', '8MiB', '--cache', '1MiB'];

export function files(home: string, size: number, tag: string) {
  const marker = `QMSECRET-${tag}-${randomBytes(6).toString('hex')}`;
  const data = pattern(size, marker);
  const src = join(home, `${tag}.in`);
  writeFileSync(src, data);
  return { marker: Buffer.from(`${marker}:`), data, src, back: join(home, `${tag}.out`) };
}

export async function readsBack(uri: string, file: string, data: Buffer): Promise<void> {
  const r = await nbdRead(uri, file);
  assert.is(r.code, 0, r.stderr);
  assert.ok(readFileSync(file).equals(data), 'read back differs from what was written');
}

/** Two versions written; the store restarted from a copy taken between them. */
export async function rollback(s: Scope, home: string, k: 1 | 2) {
  const dirA = join(home, 'a');
  const idA = join(home, 'a.id');
  let a = await startStore(s, home, { backend: `dir:${dirA}`, identity: idA });
  const others = k === 2 ? [await startStore(s, home, { backend: `dir:${join(home, 'b')}` })] : [];
  const r = await startRam(s, home, [a.ticket, ...others.map((o) => o.ticket)], [...RAM, '--replicas', String(k)]);
  const v1 = files(home, 8 * MiB, 'v1');
  await nbdWrite(v1.src, r.uri);
  cpSync(dirA, `${dirA}.old`, { recursive: true });
  const v2 = files(home, 8 * MiB, 'v2');
  await nbdWrite(v2.src, r.uri);
  await killTree(a.child);
  rmSync(dirA, { recursive: true, force: true });
  cpSync(`${dirA}.old`, dirA, { recursive: true });
  a = await startStore(s, home, { backend: `dir:${dirA}`, identity: idA, listen: a.address });
  return { r, v2 };
}


/** Run a short nbdsh script against the export (h is the handle). */
export async function nbdsh(uri: string, script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return tool('nbdsh', ['-u', uri, '-c', script], 120_000);
}
